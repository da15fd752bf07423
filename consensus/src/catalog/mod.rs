//! Consul's service catalog in the replicated state machine: nodes, the service instances
//! each node runs, and health checks.
//!
//! - This module: the public data model ([`NodeRegistration`], [`CatalogNode`],
//!   [`CatalogService`], [`HealthCheck`], ...), the limits, and validation
//!   ([`CatalogError`]).
//! - `apply`: the rules of the catalog commands, against the small storage trait
//!   [`CatalogTables`](tables::CatalogTables), so they run unchanged on LMDB and in memory.
//! - `query`: the reads, and the index each read reports.
//! - `reader`: [`CatalogReader`], local reads and blocking queries.
//!
//! # Indexes
//! Every entry has CreateIndex/ModifyIndex, the Raft log index of the write that created
//! and last changed it. A write that changes nothing (a periodic anti-entropy sync of
//! identical state) changes no index and wakes nobody. Besides the entries, the catalog
//! keeps one index per table (nodes, services, checks), one per service name (raised by
//! any change to what a read of that service returns: its instances, their checks, and
//! the nodes and node checks of the nodes running it) and one per node (its record, its
//! services and its checks). A blocking query waits on exactly the one it read
//! ([`CatalogScope`]).

mod apply;
mod query;
mod reader;
pub(crate) mod tables;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub(crate) use apply::apply;
pub use reader::CatalogReader;

/// Id of the check that reports whether gossip sees a node alive. Set by the servers with
/// [`Request::CatalogSetNodeHealth`](crate::Request::CatalogSetNodeHealth), never by a
/// node's own sync.
pub const SERF_HEALTH_CHECK_ID: &str = "serfHealth";
/// Name of the [`SERF_HEALTH_CHECK_ID`] check.
pub const SERF_HEALTH_CHECK_NAME: &str = "Serf Health Status";

/// Longest node name, service name, service id or check id, in bytes.
pub const MAX_CATALOG_NAME_LEN: usize = 128;
/// Longest check name, address or node id, in bytes.
pub const MAX_CATALOG_TEXT_LEN: usize = 256;
/// Most tags of one service.
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;
/// Most metadata pairs of one node or service.
pub const MAX_META_PAIRS: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_META_VALUE_LEN: usize = 512;
/// Check output and notes are truncated to this many bytes.
pub const MAX_CHECK_OUTPUT: usize = 4096;
/// Most services one node may register.
pub const MAX_SERVICES_PER_NODE: usize = 1024;
/// Most checks one node may register.
pub const MAX_CHECKS_PER_NODE: usize = 2048;

/// The status of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded; the instance is still served except to `?passing` queries.
    Warning,
    /// Failing.
    Critical,
}

impl CheckStatus {
    /// Consul's spelling: `passing`, `warning`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// Parses Consul's spelling (case-insensitive).
    pub fn parse(text: &str) -> Option<CheckStatus> {
        match text.to_ascii_lowercase().as_str() {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// Which checks `/v1/health/state/<state>` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    /// Every check.
    Any,
    /// Checks with this status.
    Is(CheckStatus),
}

impl CheckState {
    /// Parses `any`, `passing`, `warning` or `critical`.
    pub fn parse(text: &str) -> Option<CheckState> {
        if text == "any" {
            return Some(CheckState::Any);
        }
        CheckStatus::parse(text)
            .filter(|_| text == text.to_ascii_lowercase())
            .map(CheckState::Is)
    }
}

/// A service instance as a node registers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// Instance id, unique on its node; empty means the service name.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address of the instance; empty means the node's address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
}

impl ServiceEntry {
    /// The instance id: `id`, or the service name when `id` is empty.
    pub fn effective_id(&self) -> &str {
        if self.id.is_empty() {
            &self.service
        } else {
            &self.id
        }
    }
}

/// A health check as a node registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckEntry {
    /// Check id, unique on its node; empty means the check name.
    pub check_id: String,
    /// Check name.
    pub name: String,
    /// Current status.
    pub status: CheckStatus,
    /// Free text from the check's definition.
    pub notes: String,
    /// Output of the last run (truncated to [`MAX_CHECK_OUTPUT`] bytes).
    pub output: String,
    /// The service instance checked, or empty for a check of the whole node.
    pub service_id: String,
    /// `ttl`, `http`, `tcp`, `script` or empty.
    pub kind: String,
}

impl CheckEntry {
    /// The check id: `check_id`, or the name when `check_id` is empty.
    pub fn effective_id(&self) -> &str {
        if self.check_id.is_empty() {
            &self.name
        } else {
            &self.check_id
        }
    }

    /// Truncates output and notes to [`MAX_CHECK_OUTPUT`] bytes (at a character
    /// boundary), as the state machine stores them.
    pub fn truncate_text(&mut self) {
        truncate(&mut self.output, MAX_CHECK_OUTPUT);
        truncate(&mut self.notes, MAX_CHECK_OUTPUT);
    }
}

/// The whole local state of one node, as its agent's anti-entropy pushes it
/// ([`Request::CatalogSync`](crate::Request::CatalogSync)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Node name.
    pub node: String,
    /// Node id (a UUID) or empty.
    pub id: String,
    /// Address of the node (required).
    pub address: String,
    /// Node metadata.
    pub meta: BTreeMap<String, String>,
    /// Every service instance of the node.
    pub services: Vec<ServiceEntry>,
    /// Every check of the node except [`SERF_HEALTH_CHECK_ID`].
    pub checks: Vec<CheckEntry>,
}

/// One `PUT /v1/catalog/register`
/// ([`Request::CatalogRegister`](crate::Request::CatalogRegister)): registers or updates
/// the node, and adds or updates one service and some checks, leaving the node's other
/// services and checks as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRegistration {
    /// Node name.
    pub node: String,
    /// Node id (a UUID) or empty.
    pub id: String,
    /// Address of the node (required).
    pub address: String,
    /// Node metadata (replaces the node's metadata).
    pub meta: BTreeMap<String, String>,
    /// A service instance to add or update.
    pub service: Option<ServiceEntry>,
    /// Checks to add or update; a check naming a service must name one of this node.
    pub checks: Vec<CheckEntry>,
}

/// A node of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogNode {
    /// Node name.
    pub node: String,
    /// Node id or empty.
    pub id: String,
    /// Address.
    pub address: String,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Log index of the write that created the node.
    pub create_index: u64,
    /// Log index of the last write that changed the node's record.
    pub modify_index: u64,
}

/// A service instance of the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogService {
    /// The node running it.
    pub node: String,
    /// Instance id, unique on the node.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Address of the instance; empty means the node's address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Log index of the write that created the instance.
    pub create_index: u64,
    /// Log index of the last write that changed it.
    pub modify_index: u64,
}

/// A health check of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The node.
    pub node: String,
    /// Check id, unique on the node.
    pub check_id: String,
    /// Check name.
    pub name: String,
    /// Status.
    pub status: CheckStatus,
    /// Notes.
    pub notes: String,
    /// Output of the last run.
    pub output: String,
    /// The instance checked, or empty for a node check.
    pub service_id: String,
    /// Name of the instance checked (filled in when read), or empty.
    pub service_name: String,
    /// Tags of the instance checked (filled in when read).
    pub service_tags: Vec<String>,
    /// `ttl`, `http`, `tcp`, `script` or empty.
    pub kind: String,
    /// Log index of the write that created the check.
    pub create_index: u64,
    /// Log index of the last write that changed it.
    pub modify_index: u64,
}

/// A service instance with its node ([`CatalogReader::service_nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInstance {
    /// The node running the instance.
    pub node: CatalogNode,
    /// The instance.
    pub service: CatalogService,
}

/// A service instance with its node and every check that applies to it: the node's checks
/// and the instance's own ([`CatalogReader::service_health`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The node running the instance.
    pub node: CatalogNode,
    /// The instance.
    pub service: CatalogService,
    /// Node checks, then service checks, each sorted by id.
    pub checks: Vec<HealthCheck>,
}

/// A node with its services ([`CatalogReader::node_services`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeServices {
    /// The node.
    pub node: CatalogNode,
    /// Its services, sorted by id.
    pub services: Vec<CatalogService>,
}

/// What a catalog command changed ([`Response::Catalog`](crate::Response::Catalog)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogOutcome {
    /// Nodes created, updated or removed.
    pub nodes: u32,
    /// Service instances created, updated or removed.
    pub services: u32,
    /// Checks created, updated or removed.
    pub checks: u32,
}

impl CatalogOutcome {
    /// True when the command changed nothing.
    pub fn is_unchanged(&self) -> bool {
        self.nodes == 0 && self.services == 0 && self.checks == 0
    }
}

/// What a catalog blocking query watches, and whose index a read reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CatalogScope {
    /// The node list (`/v1/catalog/nodes`).
    Nodes,
    /// Every service instance (`/v1/catalog/services`).
    Services,
    /// Every check (`/v1/health/state/...`).
    Checks,
    /// One service name: its instances, their checks, nodes and node checks.
    Service(String),
    /// One node: its record, services and checks.
    Node(String),
}

/// One change applied to the catalog, as followers of
/// [`CatalogReader::changes`] see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// A node was created or its record (address, id, metadata) changed.
    NodeRegistered {
        /// The node.
        node: String,
    },
    /// A service instance was created or changed.
    ServiceRegistered {
        /// The node.
        node: String,
        /// The instance id.
        service_id: String,
        /// The service name.
        service: String,
    },
    /// A service instance was removed.
    ServiceDeregistered {
        /// The node.
        node: String,
        /// The instance id.
        service_id: String,
        /// The service name.
        service: String,
    },
    /// A check appeared or its status changed.
    CheckStatus {
        /// The node.
        node: String,
        /// The check id.
        check_id: String,
        /// The instance checked, or empty for a node check.
        service_id: String,
        /// The new status.
        status: CheckStatus,
        /// The check's ModifyIndex after the change.
        modify_index: u64,
    },
    /// A check was removed.
    CheckDeregistered {
        /// The node.
        node: String,
        /// The check id.
        check_id: String,
    },
    /// A node was removed, with its services and checks (reported before it).
    NodeDeregistered {
        /// The node.
        node: String,
    },
}

/// Why a catalog command is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A required field is empty.
    #[error("Missing {0}")]
    Missing(&'static str),
    /// A field is longer than its limit.
    #[error("{what} is {len} bytes, the limit is {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A list has more elements than its limit.
    #[error("too many {what}: {count}, the limit is {max}")]
    TooMany {
        /// The list.
        what: &'static str,
        /// Its length.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A name contains a NUL character.
    #[error("{0} contains a NUL character")]
    Nul(&'static str),
    /// Two services of one node have the same id.
    #[error("duplicate service id {0:?}")]
    DuplicateService(String),
    /// Two checks of one node have the same id.
    #[error("duplicate check id {0:?}")]
    DuplicateCheck(String),
    /// A node's own sync names the check that only servers set.
    #[error("check id {SERF_HEALTH_CHECK_ID:?} is reserved")]
    ReservedCheck,
    /// A check names a service that the node does not have.
    #[error("Unknown service ID {service_id:?} for check ID {check_id:?}")]
    UnknownService {
        /// The check.
        check_id: String,
        /// The service it names.
        service_id: String,
    },
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

fn check_name(what: &'static str, name: &str, required: bool) -> Result<(), CatalogError> {
    if required && name.is_empty() {
        return Err(CatalogError::Missing(what));
    }
    check_len(what, name, MAX_CATALOG_NAME_LEN)?;
    if name.contains('\0') {
        return Err(CatalogError::Nul(what));
    }
    Ok(())
}

fn check_len(what: &'static str, text: &str, max: usize) -> Result<(), CatalogError> {
    if text.len() > max {
        return Err(CatalogError::TooLong {
            what,
            len: text.len(),
            max,
        });
    }
    Ok(())
}

fn check_count(what: &'static str, count: usize, max: usize) -> Result<(), CatalogError> {
    if count > max {
        return Err(CatalogError::TooMany { what, count, max });
    }
    Ok(())
}

fn check_meta(meta: &BTreeMap<String, String>) -> Result<(), CatalogError> {
    check_count("metadata pairs", meta.len(), MAX_META_PAIRS)?;
    for (key, value) in meta {
        if key.is_empty() {
            return Err(CatalogError::Missing("metadata key"));
        }
        check_len("metadata key", key, MAX_META_KEY_LEN)?;
        check_len("metadata value", value, MAX_META_VALUE_LEN)?;
    }
    Ok(())
}

fn check_node(node: &str, id: &str, address: &str) -> Result<(), CatalogError> {
    check_name("node name", node, true)?;
    check_len("node id", id, MAX_CATALOG_TEXT_LEN)?;
    if address.is_empty() {
        return Err(CatalogError::Missing("node address"));
    }
    check_len("node address", address, MAX_CATALOG_TEXT_LEN)
}

fn check_service(service: &ServiceEntry) -> Result<(), CatalogError> {
    check_name("service name", &service.service, true)?;
    check_name("service id", &service.id, false)?;
    check_len("service address", &service.address, MAX_CATALOG_TEXT_LEN)?;
    check_count("tags", service.tags.len(), MAX_TAGS)?;
    for tag in &service.tags {
        check_len("tag", tag, MAX_TAG_LEN)?;
    }
    check_meta(&service.meta)
}

fn check_check(check: &CheckEntry) -> Result<(), CatalogError> {
    check_name("check id", check.effective_id(), true)?;
    check_len("check name", &check.name, MAX_CATALOG_TEXT_LEN)?;
    check_name("check service id", &check.service_id, false)?;
    check_len("check type", &check.kind, MAX_CATALOG_NAME_LEN)?;
    // Output and notes are truncated, not refused, but a command carrying megabytes of
    // them is refused before it enters the log.
    check_len("check output", &check.output, 16 * MAX_CHECK_OUTPUT)?;
    check_len("check notes", &check.notes, 16 * MAX_CHECK_OUTPUT)
}

/// Checks services for form and duplicates; returns their effective ids.
fn check_services<'a>(
    services: impl Iterator<Item = &'a ServiceEntry>,
) -> Result<BTreeSet<&'a str>, CatalogError> {
    let mut ids = BTreeSet::new();
    for service in services {
        check_service(service)?;
        if !ids.insert(service.effective_id()) {
            return Err(CatalogError::DuplicateService(
                service.effective_id().to_owned(),
            ));
        }
    }
    Ok(ids)
}

fn check_checks(checks: &[CheckEntry]) -> Result<(), CatalogError> {
    let mut ids = BTreeSet::new();
    for check in checks {
        check_check(check)?;
        if !ids.insert(check.effective_id()) {
            return Err(CatalogError::DuplicateCheck(
                check.effective_id().to_owned(),
            ));
        }
    }
    Ok(())
}

impl NodeRegistration {
    /// Checks form and limits: names present and bounded, no duplicate ids, every check
    /// naming a service of this registration, no [`SERF_HEALTH_CHECK_ID`] check.
    pub fn validate(&self) -> Result<(), CatalogError> {
        check_node(&self.node, &self.id, &self.address)?;
        check_meta(&self.meta)?;
        check_count("services", self.services.len(), MAX_SERVICES_PER_NODE)?;
        check_count("checks", self.checks.len(), MAX_CHECKS_PER_NODE)?;
        let ids = check_services(self.services.iter())?;
        check_checks(&self.checks)?;
        for check in &self.checks {
            if check.effective_id() == SERF_HEALTH_CHECK_ID {
                return Err(CatalogError::ReservedCheck);
            }
            if !check.service_id.is_empty() && !ids.contains(check.service_id.as_str()) {
                return Err(CatalogError::UnknownService {
                    check_id: check.effective_id().to_owned(),
                    service_id: check.service_id.clone(),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn approx_size(&self) -> usize {
        self.node.len()
            + self.id.len()
            + self.address.len()
            + meta_size(&self.meta)
            + self.services.iter().map(service_size).sum::<usize>()
            + self.checks.iter().map(check_size).sum::<usize>()
    }
}

impl CatalogRegistration {
    /// Checks form and limits (whether a check's service exists is checked when applied).
    pub fn validate(&self) -> Result<(), CatalogError> {
        check_node(&self.node, &self.id, &self.address)?;
        check_meta(&self.meta)?;
        check_count("checks", self.checks.len(), MAX_CHECKS_PER_NODE)?;
        check_services(self.service.iter())?;
        check_checks(&self.checks)
    }

    pub(crate) fn approx_size(&self) -> usize {
        self.node.len()
            + self.id.len()
            + self.address.len()
            + meta_size(&self.meta)
            + self.service.iter().map(service_size).sum::<usize>()
            + self.checks.iter().map(check_size).sum::<usize>()
    }
}

/// Checks the names of a deregistration or health update.
pub(crate) fn check_node_name(node: &str) -> Result<(), CatalogError> {
    check_name("node name", node, true)
}

pub(crate) fn check_node_health(node: &str, address: &str) -> Result<(), CatalogError> {
    check_node(node, "", address)
}

pub(crate) fn check_deregister(
    node: &str,
    service_id: Option<&str>,
    check_id: Option<&str>,
) -> Result<(), CatalogError> {
    check_name("node name", node, true)?;
    if let Some(id) = service_id {
        check_name("service id", id, true)?;
    }
    if let Some(id) = check_id {
        check_name("check id", id, true)?;
    }
    Ok(())
}

fn meta_size(meta: &BTreeMap<String, String>) -> usize {
    meta.iter().map(|(k, v)| k.len() + v.len() + 2).sum()
}

fn service_size(s: &ServiceEntry) -> usize {
    16 + s.id.len()
        + s.service.len()
        + s.address.len()
        + s.tags.iter().map(|t| t.len() + 1).sum::<usize>()
        + meta_size(&s.meta)
}

fn check_size(c: &CheckEntry) -> usize {
    16 + c.check_id.len()
        + c.name.len()
        + c.notes.len()
        + c.output.len()
        + c.service_id.len()
        + c.kind.len()
}
