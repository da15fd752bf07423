//! `/v1/kv/<key>`: Consul's key/value endpoint.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use consensus::{KvEntry, MAX_KEY_LEN, MAX_VALUE_LEN, Request, WatchScope};
use serde::Serialize;

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json, read_headers};

/// An entry as Consul's JSON shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KvJson<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    /// Standard padded base64; `null` when the value is empty.
    pub(super) value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a KvEntry> for KvJson<'a> {
    fn from(entry: &'a KvEntry) -> Self {
        KvJson {
            lock_index: entry.lock_index,
            key: &entry.key,
            flags: entry.flags,
            value: (!entry.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&entry.value)),
            session: entry.session.as_deref().filter(|s| !s.is_empty()),
            create_index: entry.create_index,
            modify_index: entry.modify_index,
        }
    }
}

/// `GET /v1/kv/<key>` with `recurse`, `keys`, `separator`, `raw`.
pub async fn get(
    State(state): State<ApiState>,
    key: Option<Path<String>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = key.map(|Path(k)| k).unwrap_or_default();
    let params = Params::parse(query.as_deref());
    let raft = state.raft()?;
    check_key_len(&key)?;
    let consistency = params.consistency()?;
    let kv = raft.kv();

    // A blocking query waits until the data it reads changes past `index`; only a
    // change under this key (or prefix) wakes it.
    if let Some(index) = params.u64("index")?.filter(|i| *i > 0) {
        let wait = super::blocking_wait(&params)?;
        let scope = if params.flag("recurse") || params.flag("keys") {
            WatchScope::Prefix(key.clone())
        } else {
            WatchScope::Key(key.clone())
        };
        kv.wait(scope, index, wait).await.map_err(storage_error)?;
    }
    super::prepare_read(raft, consistency).await?;

    if params.flag("keys") {
        let separator = params.get("separator").filter(|s| !s.is_empty());
        let (keys, index) = kv.keys_with_index(&key, separator).map_err(storage_error)?;
        let headers = read_headers(raft, index);
        if keys.is_empty() {
            return Ok((StatusCode::NOT_FOUND, headers).into_response());
        }
        return Ok((headers, json(&keys)).into_response());
    }

    if params.flag("recurse") {
        let (entries, index) = kv.list_with_index(&key).map_err(storage_error)?;
        let headers = read_headers(raft, index);
        if entries.is_empty() {
            return Ok((StatusCode::NOT_FOUND, headers).into_response());
        }
        let body: Vec<KvJson> = entries.iter().map(KvJson::from).collect();
        return Ok((headers, json(&body)).into_response());
    }

    let (entry, index) = kv.get_with_index(&key).map_err(storage_error)?;
    let mut headers = read_headers(raft, index);
    let Some(entry) = entry else {
        return Ok((StatusCode::NOT_FOUND, headers).into_response());
    };
    if params.flag("raw") {
        let content_type = if std::str::from_utf8(&entry.value).is_ok() {
            "text/plain; charset=utf-8"
        } else {
            "application/octet-stream"
        };
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        return Ok((headers, Body::from(entry.value)).into_response());
    }
    Ok((headers, json(&[KvJson::from(&entry)])).into_response())
}

/// `PUT /v1/kv/<key>` with `cas`, `flags`; the body is the value. Answers `true` or
/// `false` (a failed check-and-set).
pub async fn put(
    State(state): State<ApiState>,
    key: Option<Path<String>>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key.map(|Path(k)| k).unwrap_or_default();
    let params = Params::parse(query.as_deref());
    let raft = state.raft()?;
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    check_key_len(&key)?;
    if params.flag("acquire") || params.flag("release") {
        // Sessions do not exist yet, so any session named here is unknown; Consul
        // answers an unknown session with 500.
        let session = params
            .get("acquire")
            .or(params.get("release"))
            .unwrap_or("");
        return Err(ApiError::internal(format!("invalid session {session:?}")));
    }
    let flags = params.u64("flags")?.unwrap_or(0);
    let cas = params.u64("cas")?;
    let value = read_value(body).await?;
    let request = match cas {
        Some(index) => Request::KvCas {
            key,
            value,
            flags,
            index,
        },
        None => Request::KvSet { key, value, flags },
    };
    let applied = super::write_bool(raft, request).await?;
    Ok(json(&applied).into_response())
}

/// `DELETE /v1/kv/<key>` with `recurse` and `cas`.
pub async fn delete(
    State(state): State<ApiState>,
    key: Option<Path<String>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = key.map(|Path(k)| k).unwrap_or_default();
    let params = Params::parse(query.as_deref());
    let raft = state.raft()?;
    check_key_len(&key)?;
    let request = if params.flag("recurse") {
        Request::KvDeleteTree { prefix: key }
    } else if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    } else if let Some(index) = params.u64("cas")? {
        Request::KvDeleteCas { key, index }
    } else {
        Request::KvDelete { key }
    };
    let applied = super::write_bool(raft, request).await?;
    Ok(json(&applied).into_response())
}

fn check_key_len(key: &str) -> Result<(), ApiError> {
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "Key too long: {} bytes, the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

/// Reads a value body, refusing anything over the limit with 413 as soon as the limit
/// is crossed, before the rest is buffered.
async fn read_value(body: Body) -> Result<Vec<u8>, ApiError> {
    super::read_body(body, MAX_VALUE_LEN, |limit| {
        format!("Value exceeds {limit} byte limit")
    })
    .await
}

fn storage_error(error: consensus::ReadError) -> ApiError {
    ApiError::internal(format!("storage error: {error}"))
}
