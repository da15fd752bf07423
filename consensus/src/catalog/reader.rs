//! [`CatalogReader`]: concurrent local reads of the catalog and its blocking queries.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;

use super::query;
use super::{
    CatalogChange, CatalogNode, CatalogScope, CheckState, HealthCheck, NodeServices, ServiceHealth,
    ServiceInstance,
};
use crate::error::{ReadError, StoreError};
use crate::sm_db::{SmDb, View};
use crate::watch::WatchRegistry;

/// Reads the catalog of the local state machine. Cheap to clone.
///
/// Like [`KvReader`](crate::KvReader), every call runs one short LMDB read transaction,
/// reads are as fresh as this node's applied state (call
/// [`RaftServer::ensure_linearizable`](crate::RaftServer::ensure_linearizable) first for
/// a linearizable read), and after the server shuts down every call returns
/// [`ReadError::Closed`]. Each read returns its data with the index to report for it
/// (`X-Consul-Index`, never 0), read in the same transaction; a blocking query passes
/// that index to [`wait`](Self::wait) with the scope the read names.
#[derive(Clone)]
pub struct CatalogReader {
    db: Arc<RwLock<Option<SmDb>>>,
    watches: Arc<WatchRegistry>,
}

impl CatalogReader {
    pub(crate) fn new(db: Arc<RwLock<Option<SmDb>>>, watches: Arc<WatchRegistry>) -> Self {
        CatalogReader { db, watches }
    }

    fn with_view<T>(
        &self,
        read: impl FnOnce(&View<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, ReadError> {
        crate::reader::read_view(&self.db, read)
    }

    fn read_scoped<T>(
        &self,
        scope: &CatalogScope,
        read: impl FnOnce(&View<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<(T, u64), ReadError> {
        self.with_view(|v| {
            let data = read(v)?;
            Ok((data, query::index_for(v, scope)?))
        })
    }

    /// Every node, sorted by name; scope [`CatalogScope::Nodes`].
    pub fn nodes(&self) -> Result<(Vec<CatalogNode>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Nodes, |v| query::nodes(v))
    }

    /// Every service name with the union of its instances' tags (sorted); scope
    /// [`CatalogScope::Services`].
    pub fn services(&self) -> Result<(BTreeMap<String, Vec<String>>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Services, |v| query::services(v))
    }

    /// The instances of service `name` (matched exactly) that carry every tag in `tags`
    /// (compared case-insensitively, as Consul does), sorted by node then instance id;
    /// scope [`CatalogScope::Service`].
    pub fn service_nodes(
        &self,
        name: &str,
        tags: &[&str],
    ) -> Result<(Vec<ServiceInstance>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Service(name.to_owned()), |v| {
            query::service_nodes(v, name, tags)
        })
    }

    /// Node `node` with its services, or `None` if it is not registered; scope
    /// [`CatalogScope::Node`].
    pub fn node_services(&self, node: &str) -> Result<(Option<NodeServices>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Node(node.to_owned()), |v| {
            query::node_services(v, node)
        })
    }

    /// The instances of service `name` with `tags` (as [`service_nodes`](Self::service_nodes)),
    /// each with its node's checks and its own. With `passing_only`, an instance with any
    /// check (node or service) not passing is left out, as Consul's `?passing` does. Scope
    /// [`CatalogScope::Service`].
    pub fn service_health(
        &self,
        name: &str,
        tags: &[&str],
        passing_only: bool,
    ) -> Result<(Vec<ServiceHealth>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Service(name.to_owned()), |v| {
            query::service_health(v, name, tags, passing_only)
        })
    }

    /// The checks of node `node`, sorted by id; scope [`CatalogScope::Node`].
    pub fn node_checks(&self, node: &str) -> Result<(Vec<HealthCheck>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Node(node.to_owned()), |v| {
            query::node_checks(v, node)
        })
    }

    /// The checks of the instances of service `name`, sorted by node then id; scope
    /// [`CatalogScope::Service`].
    pub fn service_checks(&self, name: &str) -> Result<(Vec<HealthCheck>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Service(name.to_owned()), |v| {
            query::service_checks(v, name)
        })
    }

    /// The checks in `state`, sorted by node then id; scope [`CatalogScope::Checks`].
    pub fn checks_in_state(&self, state: CheckState) -> Result<(Vec<HealthCheck>, u64), ReadError> {
        self.read_scoped(&CatalogScope::Checks, |v| query::checks_in_state(v, state))
    }

    /// The index to report for a read of `scope`: the log index of the last write that
    /// changed what the scope covers (for a node or service name not registered, the
    /// index of its table). Never 0.
    pub fn index_for(&self, scope: &CatalogScope) -> Result<u64, ReadError> {
        self.with_view(|v| query::index_for(v, scope))
    }

    /// Blocking-query wait: returns the index of `scope` as soon as it is greater than
    /// `after_index`, or after `timeout` whatever it is then. Only writes that change what
    /// the scope covers wake the wait. Returns [`ReadError::Closed`] when the server shuts
    /// down.
    pub async fn wait(
        &self,
        scope: CatalogScope,
        after_index: u64,
        timeout: Duration,
    ) -> Result<u64, ReadError> {
        // Register before reading, so a change committed after the read wakes us.
        self.watches
            .register_catalog(&scope)
            .wait_past(after_index, timeout, || self.index_for(&scope))
            .await
    }

    /// Follows the catalog changes this server applies from now on, in order. A follower
    /// that falls more than [`CHANGE_FEED_CAPACITY`](crate::CHANGE_FEED_CAPACITY) behind
    /// loses the oldest and is told how many. A snapshot install replaces the state
    /// without reporting individual changes.
    pub fn changes(&self) -> broadcast::Receiver<CatalogChange> {
        self.watches.subscribe_catalog_changes()
    }
}
