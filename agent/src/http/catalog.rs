//! `/v1/catalog/...`: Consul's catalog endpoints, and the internal sync endpoint of
//! anti-entropy.
//!
//! Reads (`datacenters`, `nodes`, `services`, `service/<name>`, `node/<node>`) answer
//! Consul's JSON shapes, honour `?consistent`/`?stale` and blocking queries
//! (`?index=&wait=`) on exactly the scope they read, and carry `X-Consul-Index`. Writes
//! are `PUT /v1/catalog/register` and `PUT /v1/catalog/deregister` with Consul's bodies,
//! answering `true`.
//!
//! # Anti-entropy: `PUT /v1/internal/catalog/sync`
//! Every agent pushes the whole local state of its node here (through forwarding, so a
//! client agent reaches the leader), as JSON ([`NodeSyncJson`]):
//!
//! ```json
//! {"Node": "web-1", "ID": "<uuid or empty>", "Address": "10.0.0.5", "Meta": {},
//!  "Services": [{"ID": "web", "Service": "web", "Tags": ["v1"], "Address": "",
//!                "Port": 8080, "Meta": {}}],
//!  "Checks": [{"CheckID": "web-ttl", "Name": "web ttl", "Status": "passing",
//!              "Notes": "", "Output": "", "ServiceID": "web", "Type": "ttl"}]}
//! ```
//!
//! The servers replace that node's services and checks with exactly these (keeping the
//! `serfHealth` check, which only they set, and which a sync may not name). Entries that
//! did not change keep their ModifyIndex, so syncing unchanged state periodically wakes
//! no blocking query. The answer is `true`; invalid input is a 400 with the reason.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use consensus::{
    CatalogNode, CatalogReader, CatalogRegistration, CatalogScope, CatalogService, CheckEntry,
    CheckStatus, NodeRegistration, ReadError, Request, Response as RaftResponse, ServiceEntry,
};
use serde::{Deserialize, Deserializer, Serialize};

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json, prepare_read, read_body, read_headers};

/// Largest body of a register or deregister.
const MAX_REGISTER_BODY: usize = 1024 * 1024;
/// Largest body of a node sync.
pub const MAX_SYNC_BODY: usize = 4 * 1024 * 1024;

/// Reads JSON `null` as the type's default (Go clients send `null` for empty slices and
/// maps).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A node as Consul's JSON shows it.
#[derive(Debug, Serialize)]
pub(super) struct NodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Node")]
    node: &'a str,
    #[serde(rename = "Address")]
    address: &'a str,
    #[serde(rename = "Datacenter")]
    datacenter: &'a str,
    #[serde(rename = "TaggedAddresses")]
    tagged_addresses: TaggedAddresses<'a>,
    #[serde(rename = "Meta")]
    meta: &'a BTreeMap<String, String>,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

#[derive(Debug, Serialize)]
struct TaggedAddresses<'a> {
    lan: &'a str,
    wan: &'a str,
}

impl<'a> NodeJson<'a> {
    pub(super) fn new(node: &'a CatalogNode, dc: &'a str) -> Self {
        NodeJson {
            id: &node.id,
            node: &node.node,
            address: &node.address,
            datacenter: dc,
            tagged_addresses: TaggedAddresses {
                lan: &node.address,
                wan: &node.address,
            },
            meta: &node.meta,
            create_index: node.create_index,
            modify_index: node.modify_index,
        }
    }
}

/// A service instance as `/v1/catalog/node` and `/v1/health/service` show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    port: u16,
    meta: &'a BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> From<&'a CatalogService> for ServiceJson<'a> {
    fn from(s: &'a CatalogService) -> Self {
        ServiceJson {
            id: &s.id,
            service: &s.service,
            tags: &s.tags,
            address: &s.address,
            port: s.port,
            meta: &s.meta,
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

/// An instance with its node, as `/v1/catalog/service/<name>` shows it.
#[derive(Debug, Serialize)]
struct ServiceNodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    #[serde(rename = "Node")]
    node: &'a str,
    #[serde(rename = "Address")]
    address: &'a str,
    #[serde(rename = "Datacenter")]
    datacenter: &'a str,
    #[serde(rename = "TaggedAddresses")]
    tagged_addresses: TaggedAddresses<'a>,
    #[serde(rename = "NodeMeta")]
    node_meta: &'a BTreeMap<String, String>,
    #[serde(rename = "ServiceKind")]
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    #[serde(rename = "ServiceName")]
    service_name: &'a str,
    #[serde(rename = "ServiceTags")]
    service_tags: &'a [String],
    #[serde(rename = "ServiceAddress")]
    service_address: &'a str,
    #[serde(rename = "ServicePort")]
    service_port: u16,
    #[serde(rename = "ServiceMeta")]
    service_meta: &'a BTreeMap<String, String>,
    #[serde(rename = "ServiceEnableTagOverride")]
    service_enable_tag_override: bool,
    #[serde(rename = "CreateIndex")]
    create_index: u64,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

/// The service part of a node sync or register body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServiceBody {
    /// Instance id; empty means the service name.
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    pub id: String,
    /// Service name.
    #[serde(rename = "Service", default, deserialize_with = "null_default")]
    pub service: String,
    /// Tags.
    #[serde(rename = "Tags", default, deserialize_with = "null_default")]
    pub tags: Vec<String>,
    /// Address; empty means the node's.
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// Port.
    #[serde(rename = "Port", default, deserialize_with = "null_default")]
    pub port: u16,
    /// Metadata.
    #[serde(rename = "Meta", default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
}

impl From<ServiceBody> for ServiceEntry {
    fn from(s: ServiceBody) -> Self {
        ServiceEntry {
            id: s.id,
            service: s.service,
            tags: s.tags,
            address: s.address,
            port: s.port,
            meta: s.meta,
        }
    }
}

/// The check part of a node sync or register body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CheckBody {
    /// Check id; empty means the name.
    #[serde(rename = "CheckID", default, deserialize_with = "null_default")]
    pub check_id: String,
    /// Check name.
    #[serde(rename = "Name", default, deserialize_with = "null_default")]
    pub name: String,
    /// `passing`, `warning` or `critical`; empty means `critical`, as in Consul.
    #[serde(rename = "Status", default, deserialize_with = "null_default")]
    pub status: String,
    /// Notes.
    #[serde(rename = "Notes", default, deserialize_with = "null_default")]
    pub notes: String,
    /// Output of the last run.
    #[serde(rename = "Output", default, deserialize_with = "null_default")]
    pub output: String,
    /// The instance checked, or empty for a node check.
    #[serde(rename = "ServiceID", default, deserialize_with = "null_default")]
    pub service_id: String,
    /// `ttl`, `http`, `tcp`, `script` or empty.
    #[serde(rename = "Type", default, deserialize_with = "null_default")]
    pub kind: String,
}

impl CheckBody {
    fn into_entry(self) -> Result<CheckEntry, ApiError> {
        let status = if self.status.is_empty() {
            CheckStatus::Critical
        } else {
            CheckStatus::parse(&self.status).ok_or_else(|| {
                ApiError::bad_request(format!("Invalid check status: {:?}", self.status))
            })?
        };
        let mut entry = CheckEntry {
            check_id: self.check_id,
            name: self.name,
            status,
            notes: self.notes,
            output: self.output,
            service_id: self.service_id,
            kind: self.kind,
        };
        entry.truncate_text();
        Ok(entry)
    }
}

/// The body of `PUT /v1/internal/catalog/sync`: a node's whole local state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NodeSyncJson {
    /// Node name.
    #[serde(rename = "Node", default, deserialize_with = "null_default")]
    pub node: String,
    /// Node id or empty.
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    pub id: String,
    /// Address (required).
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    pub address: String,
    /// Node metadata.
    #[serde(rename = "Meta", default, deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    /// Every service of the node.
    #[serde(rename = "Services", default, deserialize_with = "null_default")]
    pub services: Vec<ServiceBody>,
    /// Every check of the node except `serfHealth`.
    #[serde(rename = "Checks", default, deserialize_with = "null_default")]
    pub checks: Vec<CheckBody>,
}

impl NodeSyncJson {
    /// The replicated form.
    pub fn into_registration(self) -> Result<NodeRegistration, ApiError> {
        Ok(NodeRegistration {
            node: self.node,
            id: self.id,
            address: self.address,
            meta: self.meta,
            services: self.services.into_iter().map(ServiceEntry::from).collect(),
            checks: self
                .checks
                .into_iter()
                .map(CheckBody::into_entry)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The body of `PUT /v1/catalog/register`.
#[derive(Debug, Default, Deserialize)]
struct RegisterJson {
    #[serde(rename = "Node", default, deserialize_with = "null_default")]
    node: String,
    #[serde(rename = "ID", default, deserialize_with = "null_default")]
    id: String,
    #[serde(rename = "Address", default, deserialize_with = "null_default")]
    address: String,
    #[serde(rename = "NodeMeta", default, deserialize_with = "null_default")]
    node_meta: BTreeMap<String, String>,
    #[serde(rename = "Service", default)]
    service: Option<ServiceBody>,
    #[serde(rename = "Check", default)]
    check: Option<CheckBody>,
    #[serde(rename = "Checks", default, deserialize_with = "null_default")]
    checks: Vec<CheckBody>,
}

/// The body of `PUT /v1/catalog/deregister`.
#[derive(Debug, Default, Deserialize)]
struct DeregisterJson {
    #[serde(rename = "Node", default, deserialize_with = "null_default")]
    node: String,
    #[serde(rename = "ServiceID", default, deserialize_with = "null_default")]
    service_id: String,
    #[serde(rename = "CheckID", default, deserialize_with = "null_default")]
    check_id: String,
}

/// Runs a catalog read as a (possibly blocking) Consul read: waits on `scope` past
/// `?index` first, makes sure this server may answer in the requested consistency, then
/// reads; returns the data and the read headers.
pub(super) async fn catalog_read<T>(
    state: &ApiState,
    query: Option<&str>,
    scope: CatalogScope,
    read: impl FnOnce(&CatalogReader) -> Result<(T, u64), ReadError>,
) -> Result<(T, HeaderMap), ApiError> {
    let params = Params::parse(query);
    let raft = state.raft()?;
    let consistency = params.consistency()?;
    let catalog = raft.catalog();
    if let Some(index) = params.u64("index")?.filter(|i| *i > 0) {
        let wait = super::blocking_wait(&params)?;
        catalog
            .wait(scope, index, wait)
            .await
            .map_err(storage_error)?;
    }
    prepare_read(raft, consistency).await?;
    let (data, index) = read(&catalog).map_err(storage_error)?;
    Ok((data, read_headers(raft, index)))
}

pub(super) fn storage_error(error: ReadError) -> ApiError {
    ApiError::internal(format!("storage error: {error}"))
}

/// `?tag=` values (repeatable: an instance must carry all).
pub(super) fn tags(query: Option<&str>) -> Vec<String> {
    Params::parse(query)
        .get_all("tag")
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// `GET /v1/catalog/datacenters`: the datacenters with a server in the WAN pool,
/// nearest first (see [`super::Wan::datacenters`]). Answered by a server.
pub async fn datacenters(State(state): State<ApiState>) -> Response {
    let local = &state.info().dc;
    match state.wan() {
        Some(wan) => json(&wan.datacenters(local)),
        None => json(&[local]),
    }
}

/// `GET /v1/catalog/nodes`: every node, sorted by name.
pub async fn nodes(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (nodes, headers) =
        catalog_read(&state, query.as_deref(), CatalogScope::Nodes, |c| c.nodes()).await?;
    let dc = &state.info().dc;
    let body: Vec<NodeJson> = nodes.iter().map(|n| NodeJson::new(n, dc)).collect();
    Ok((headers, json(&body)).into_response())
}

/// `GET /v1/catalog/services`: service name → tags of its instances.
pub async fn services(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (services, headers) = catalog_read(
        &state,
        query.as_deref(),
        CatalogScope::Services,
        CatalogReader::services,
    )
    .await?;
    Ok((headers, json(&services)).into_response())
}

/// `GET /v1/catalog/service/<name>` (`?tag=`): the instances of a service with their
/// nodes.
pub async fn service(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let tags = tags(query.as_deref());
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let (instances, headers) = catalog_read(
        &state,
        query.as_deref(),
        CatalogScope::Service(name.clone()),
        |c| c.service_nodes(&name, &tag_refs),
    )
    .await?;
    let dc = &state.info().dc;
    let body: Vec<ServiceNodeJson> = instances
        .iter()
        .map(|i| ServiceNodeJson {
            id: &i.node.id,
            node: &i.node.node,
            address: &i.node.address,
            datacenter: dc,
            tagged_addresses: TaggedAddresses {
                lan: &i.node.address,
                wan: &i.node.address,
            },
            node_meta: &i.node.meta,
            service_kind: "",
            service_id: &i.service.id,
            service_name: &i.service.service,
            service_tags: &i.service.tags,
            service_address: &i.service.address,
            service_port: i.service.port,
            service_meta: &i.service.meta,
            service_enable_tag_override: false,
            create_index: i.service.create_index,
            modify_index: i.service.modify_index,
        })
        .collect();
    Ok((headers, json(&body)).into_response())
}

/// `GET /v1/catalog/node/<node>`: the node and its services, or `null` if unknown (as
/// Consul answers).
pub async fn node(
    State(state): State<ApiState>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (found, headers) = catalog_read(
        &state,
        query.as_deref(),
        CatalogScope::Node(node.clone()),
        |c| c.node_services(&node),
    )
    .await?;
    #[derive(Serialize)]
    struct NodeServicesJson<'a> {
        #[serde(rename = "Node")]
        node: NodeJson<'a>,
        #[serde(rename = "Services")]
        services: BTreeMap<&'a str, ServiceJson<'a>>,
    }
    let dc = &state.info().dc;
    let body = found.as_ref().map(|found| NodeServicesJson {
        node: NodeJson::new(&found.node, dc),
        services: found
            .services
            .iter()
            .map(|s| (s.id.as_str(), ServiceJson::from(s)))
            .collect(),
    });
    Ok((headers, json(&body)).into_response())
}

/// Parses a JSON body of at most `limit` bytes; malformed JSON is a 400.
async fn read_json<T: for<'de> Deserialize<'de>>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = read_body(body, limit, |limit| {
        format!("Request body exceeds {limit} byte limit")
    })
    .await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))
}

/// Proposes a catalog command; `true` once applied, 400 if the state machine refused it.
async fn write_catalog(state: &ApiState, request: Request) -> Result<Response, ApiError> {
    let raft = state.raft()?;
    let outcome = super::propose(raft, request).await?;
    match outcome.response {
        RaftResponse::Catalog(_) => Ok(json(&true)),
        RaftResponse::Rejected(reason) => Err(ApiError::bad_request(reason)),
        other => Err(ApiError::internal(format!(
            "unexpected answer from the state machine: {other:?}"
        ))),
    }
}

/// `PUT /v1/catalog/register`: adds or updates a node, a service and checks.
pub async fn register(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let body: RegisterJson = read_json(body, MAX_REGISTER_BODY).await?;
    let mut checks = Vec::new();
    for check in body.check.into_iter().chain(body.checks) {
        checks.push(check.into_entry()?);
    }
    let request = Request::CatalogRegister(CatalogRegistration {
        node: body.node,
        id: body.id,
        address: body.address,
        meta: body.node_meta,
        service: body.service.map(ServiceEntry::from),
        checks,
    });
    write_catalog(&state, request).await
}

/// `PUT /v1/catalog/deregister`: removes a service, a check, or the whole node.
pub async fn deregister(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let body: DeregisterJson = read_json(body, MAX_REGISTER_BODY).await?;
    let request = Request::CatalogDeregister {
        node: body.node,
        service_id: Some(body.service_id).filter(|s| !s.is_empty()),
        check_id: Some(body.check_id).filter(|s| !s.is_empty()),
    };
    write_catalog(&state, request).await
}

/// `PUT /v1/internal/catalog/sync`: a node's whole local state (see the module docs).
pub async fn sync(State(state): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let body: NodeSyncJson = read_json(body, MAX_SYNC_BODY).await?;
    let request = Request::CatalogSync(body.into_registration()?);
    write_catalog(&state, request).await
}
