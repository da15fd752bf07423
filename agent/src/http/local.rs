//! `/v1/agent/service*` and `/v1/agent/check*`: the services and checks of this agent,
//! always answered by the agent itself (never forwarded), as Consul's agent does.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use events::HealthStatus;
use serde::Serialize;

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json, read_body};
use crate::local::{
    CheckDefinition, LocalCheck, LocalError, ServiceDefinition, ServiceRegistration,
};

/// Largest body of a registration or an update.
pub const MAX_BODY: usize = 256 * 1024;

impl From<LocalError> for ApiError {
    fn from(error: LocalError) -> ApiError {
        let status = if error.is_not_found() {
            StatusCode::NOT_FOUND
        } else if error.is_bad_request() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, error.to_string())
    }
}

/// A service as `/v1/agent/services` shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    meta: &'a BTreeMap<String, String>,
    port: u16,
    address: &'a str,
    weights: Weights,
    enable_tag_override: bool,
    datacenter: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
    warning: u32,
}

fn service_json<'a>(service: &'a ServiceDefinition, dc: &'a str) -> ServiceJson<'a> {
    ServiceJson {
        id: &service.id,
        service: &service.service,
        tags: &service.tags,
        meta: &service.meta,
        port: service.port,
        address: &service.address,
        weights: Weights {
            passing: 1,
            warning: 1,
        },
        enable_tag_override: false,
        datacenter: dc,
    }
}

/// A check as `/v1/agent/checks` shows it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: HealthStatus,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    kind: &'a str,
}

fn check_json<'a>(check: &'a LocalCheck, node: &'a str) -> CheckJson<'a> {
    CheckJson {
        node,
        check_id: &check.check_id,
        name: &check.name,
        status: check.status,
        notes: &check.notes,
        output: &check.output,
        service_id: &check.service_id,
        service_name: &check.service_name,
        service_tags: &check.service_tags,
        kind: check.kind,
    }
}

/// `GET /v1/agent/services`: the services of this agent by id.
pub async fn services(State(state): State<ApiState>) -> Response {
    let snapshot = state.inner.local.snapshot();
    let dc = state.info().dc.as_str();
    let body: BTreeMap<&str, ServiceJson> = snapshot
        .services
        .iter()
        .map(|s| (s.id.as_str(), service_json(s, dc)))
        .collect();
    json(&body)
}

/// `GET /v1/agent/service/<id>`.
pub async fn service(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = state.inner.local.snapshot();
    let service = snapshot
        .services
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")))?;
    Ok(json(&service_json(service, &state.info().dc)))
}

/// `GET /v1/agent/checks`: the checks of this agent by id.
pub async fn checks(State(state): State<ApiState>) -> Response {
    let snapshot = state.inner.local.snapshot();
    let body: BTreeMap<&str, CheckJson> = snapshot
        .checks
        .iter()
        .map(|c| (c.check_id.as_str(), check_json(c, &snapshot.node)))
        .collect();
    json(&body)
}

async fn body_bytes(body: Body) -> Result<Vec<u8>, ApiError> {
    read_body(body, MAX_BODY, |limit| {
        format!("Request body too large: at most {limit} bytes")
    })
    .await
}

/// `PUT /v1/agent/service/register` (`?replace-existing-checks`).
pub async fn register_service(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let registration =
        ServiceRegistration::from_json(&body_bytes(body).await?).map_err(ApiError::bad_request)?;
    state
        .inner
        .local
        .register_service(registration, params.flag("replace-existing-checks"))
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/service/deregister/<id>`.
pub async fn deregister_service(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.inner.local.deregister_service(&id).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/register`.
pub async fn register_check(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Response, ApiError> {
    let check =
        CheckDefinition::from_json(&body_bytes(body).await?).map_err(ApiError::bad_request)?;
    state.inner.local.register_check(check).await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/deregister/<id>`.
pub async fn deregister_check(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.inner.local.deregister_check(&id).await?;
    Ok(StatusCode::OK.into_response())
}

fn set_ttl(
    state: &ApiState,
    id: &str,
    status: HealthStatus,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let note = params.get("note").unwrap_or("").to_string();
    state.inner.local.update_ttl(id, status, note)?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/pass/<id>` (`?note=` sets the output).
pub async fn pass(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    set_ttl(&state, &id, HealthStatus::Passing, query)
}

/// `PUT /v1/agent/check/warn/<id>` (`?note=` sets the output).
pub async fn warn(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    set_ttl(&state, &id, HealthStatus::Warning, query)
}

/// `PUT /v1/agent/check/fail/<id>` (`?note=` sets the output).
pub async fn fail(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    set_ttl(&state, &id, HealthStatus::Critical, query)
}

/// `PUT /v1/agent/check/update/<id>` with `{"Status": "passing", "Output": "..."}`.
pub async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body).await?;
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let field = |name: &str| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    };
    let text = |name: &str| -> Result<String, ApiError> {
        match field(name) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(ApiError::bad_request(format!(
                "Request decode failed: {name} must be a string"
            ))),
        }
    };
    let status_text = text("Status")?;
    let status = HealthStatus::parse(&status_text)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid check status: '{status_text}'")))?;
    state.inner.local.update_ttl(&id, status, text("Output")?)?;
    Ok(StatusCode::OK.into_response())
}
