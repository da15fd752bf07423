//! `/v1/health/...`: Consul's health endpoints, read from the catalog.
//!
//! - `service/<name>` (`?passing`, `?tag=`): instances with their node and checks (the
//!   node's checks and the instance's own), sorted by node then instance id; `?passing`
//!   leaves out an instance with any check not passing.
//! - `node/<node>`, `checks/<service>`, `state/<any|passing|warning|critical>`: checks.
//!
//! All are blocking queries on the scope they read and carry `X-Consul-Index`.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use consensus::{CatalogScope, CheckState, HealthCheck};
use serde::Serialize;

use super::catalog::{NodeJson, ServiceJson, catalog_read, tags};
use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json};

/// A check as Consul's JSON shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'static str,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    #[serde(rename = "Type")]
    kind: &'a str,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a HealthCheck> for CheckJson<'a> {
    fn from(c: &'a HealthCheck) -> Self {
        CheckJson {
            node: &c.node,
            check_id: &c.check_id,
            name: &c.name,
            status: c.status.as_str(),
            notes: &c.notes,
            output: &c.output,
            service_id: &c.service_id,
            service_name: &c.service_name,
            service_tags: &c.service_tags,
            kind: &c.kind,
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}

fn checks_json(checks: &[HealthCheck]) -> Vec<CheckJson<'_>> {
    checks.iter().map(CheckJson::from).collect()
}

/// `GET /v1/health/service/<name>` with `?passing` and `?tag=`.
pub async fn service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let passing = Params::parse(query.as_deref()).bool("passing")?;
    let tags = tags(query.as_deref());
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let (instances, headers) = catalog_read(
        &state,
        query.as_deref(),
        CatalogScope::Service(name.clone()),
        |c| c.service_health(&name, &tag_refs, passing),
    )
    .await?;
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct ServiceHealthJson<'a> {
        node: NodeJson<'a>,
        service: ServiceJson<'a>,
        checks: Vec<CheckJson<'a>>,
    }
    let dc = &state.info().dc;
    let body: Vec<ServiceHealthJson> = instances
        .iter()
        .map(|h| ServiceHealthJson {
            node: NodeJson::new(&h.node, dc),
            service: ServiceJson::from(&h.service),
            checks: checks_json(&h.checks),
        })
        .collect();
    Ok((headers, json(&body)).into_response())
}

/// `GET /v1/health/node/<node>`: the node's checks.
pub async fn node(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (checks, headers) = catalog_read(
        &state,
        query.as_deref(),
        CatalogScope::Node(node.clone()),
        |c| c.node_checks(&node),
    )
    .await?;
    Ok((headers, json(&checks_json(&checks))).into_response())
}

/// `GET /v1/health/checks/<service>`: the checks of a service's instances.
pub async fn checks(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (checks, headers) = catalog_read(
        &state,
        query.as_deref(),
        CatalogScope::Service(name.clone()),
        |c| c.service_checks(&name),
    )
    .await?;
    Ok((headers, json(&checks_json(&checks))).into_response())
}

/// `GET /v1/health/state/<state>`: checks in a state (`any` for all).
pub async fn state(
    State(api): State<ApiState>,
    Path(state): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Some(wanted) = CheckState::parse(&state) else {
        return Err(ApiError::bad_request(format!(
            "Invalid check state {state:?}: use any, passing, warning or critical"
        )));
    };
    let (checks, headers) = catalog_read(&api, query.as_deref(), CatalogScope::Checks, |c| {
        c.checks_in_state(wanted)
    })
    .await?;
    Ok((headers, json(&checks_json(&checks))).into_response())
}
