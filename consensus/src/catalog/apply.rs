//! The rules of the catalog commands, after Consul's state store:
//!
//! - A node sync replaces the node's services and checks with exactly those it names,
//!   except the `serfHealth` check, which only the servers set.
//! - A register adds or updates one service and some checks and removes nothing.
//! - A deregister removes a service (with its checks), a check, or the whole node.
//! - An entry that would be written unchanged is not written: it keeps its ModifyIndex,
//!   and no index rises, so a periodic sync of identical state wakes no blocking query.
//! - After the command, the indexes of what changed are set to the log index: the tables
//!   touched, each node touched, and each service name whose read result may differ
//!   (its instances, their checks, their nodes' records and node checks). The index of a
//!   node or service name that no longer exists is removed: its table's index, raised by
//!   the same command, stands in for it, so reported indexes never go backwards.

use std::collections::{BTreeMap, BTreeSet};

use super::tables::{self, CatalogTable, CatalogTables, by_service_key, node_prefix, pair_key};
use super::{
    CatalogChange, CatalogError, CatalogNode, CatalogOutcome, CatalogRegistration, CatalogScope,
    CatalogService, CheckEntry, CheckStatus, HealthCheck, NodeRegistration, SERF_HEALTH_CHECK_ID,
    SERF_HEALTH_CHECK_NAME, ServiceEntry,
};
use crate::error::StoreError;
use crate::types::{Request, Response};
use crate::watch::Changes;

/// Index keys of the three tables.
pub(crate) const NODES_INDEX: &str = "nodes";
pub(crate) const SERVICES_INDEX: &str = "services";
pub(crate) const CHECKS_INDEX: &str = "checks";

pub(crate) fn service_index_key(name: &str) -> String {
    format!("s:{name}")
}

pub(crate) fn node_index_key(node: &str) -> String {
    format!("n:{node}")
}

/// Applies a catalog command made by the log entry at `index` and adds what it changed to
/// `changes`. An invalid command is answered with [`Response::Rejected`] and changes
/// nothing; errors are storage failures only.
pub(crate) fn apply(
    tables: &mut dyn CatalogTables,
    index: u64,
    request: &Request,
    changes: &mut Changes,
) -> Result<Response, StoreError> {
    if let Err(e) = request.validate() {
        return Ok(Response::Rejected(e.to_string()));
    }
    let mut w = Writer {
        tables,
        index,
        outcome: CatalogOutcome::default(),
        touched: Touched::default(),
        feed: Vec::new(),
    };
    match request {
        Request::CatalogSync(reg) => w.sync(reg)?,
        Request::CatalogSetNodeHealth {
            node,
            address,
            status,
            output,
        } => w.set_node_health(node, address, *status, output)?,
        Request::CatalogDeregisterNode { node } => w.remove_node(node)?,
        Request::CatalogRegister(reg) => {
            if let Err(e) = w.check_register(reg) {
                return Ok(Response::Rejected(e.to_string()));
            }
            w.register(reg)?;
        }
        Request::CatalogDeregister {
            node,
            service_id,
            check_id,
        } => w.deregister(node, service_id.as_deref(), check_id.as_deref())?,
        _ => return Ok(Response::Rejected("not a catalog command".into())),
    }
    w.finish(changes)
}

/// What a command touched, so that the right indexes rise and the right watchers wake.
#[derive(Default)]
struct Touched {
    nodes: bool,
    services: bool,
    checks: bool,
    node_names: BTreeSet<String>,
    service_names: BTreeSet<String>,
    /// Nodes whose record or node checks changed: every service they run is affected.
    node_wide: BTreeSet<String>,
}

struct Writer<'t> {
    tables: &'t mut dyn CatalogTables,
    index: u64,
    outcome: CatalogOutcome,
    touched: Touched,
    feed: Vec<CatalogChange>,
}

impl Writer<'_> {
    fn node(&self, node: &str) -> Result<Option<CatalogNode>, StoreError> {
        tables::get(&*self.tables, CatalogTable::Nodes, node)
    }

    fn service(&self, node: &str, id: &str) -> Result<Option<CatalogService>, StoreError> {
        tables::get(&*self.tables, CatalogTable::Services, &pair_key(node, id))
    }

    fn services_of(&self, node: &str) -> Result<Vec<CatalogService>, StoreError> {
        tables::list(&*self.tables, CatalogTable::Services, &node_prefix(node))
    }

    fn checks_of(&self, node: &str) -> Result<Vec<HealthCheck>, StoreError> {
        tables::list(&*self.tables, CatalogTable::Checks, &node_prefix(node))
    }

    fn sync(&mut self, reg: &NodeRegistration) -> Result<(), StoreError> {
        self.ensure_node(&reg.node, &reg.id, &reg.address, &reg.meta)?;
        let wanted_checks: BTreeSet<&str> = reg.checks.iter().map(|c| c.effective_id()).collect();
        for check in self.checks_of(&reg.node)? {
            if check.check_id != SERF_HEALTH_CHECK_ID
                && !wanted_checks.contains(check.check_id.as_str())
            {
                self.remove_check(&reg.node, &check.check_id)?;
            }
        }
        let wanted_services: BTreeSet<&str> =
            reg.services.iter().map(|s| s.effective_id()).collect();
        for service in self.services_of(&reg.node)? {
            if !wanted_services.contains(service.id.as_str()) {
                self.remove_service(&reg.node, &service.id)?;
            }
        }
        for service in &reg.services {
            self.put_service(&reg.node, service)?;
        }
        for check in &reg.checks {
            self.put_check(&reg.node, check)?;
        }
        Ok(())
    }

    /// A check naming a service must name the registered one or one the node has.
    fn check_register(&self, reg: &CatalogRegistration) -> Result<(), CatalogError> {
        for check in &reg.checks {
            if check.service_id.is_empty()
                || reg
                    .service
                    .as_ref()
                    .is_some_and(|s| s.effective_id() == check.service_id)
            {
                continue;
            }
            // A storage failure here is reported as the unknown service; the write
            // that follows would report it as a failure anyway.
            if !matches!(self.service(&reg.node, &check.service_id), Ok(Some(_))) {
                return Err(CatalogError::UnknownService {
                    check_id: check.effective_id().to_owned(),
                    service_id: check.service_id.clone(),
                });
            }
        }
        Ok(())
    }

    fn register(&mut self, reg: &CatalogRegistration) -> Result<(), StoreError> {
        self.ensure_node(&reg.node, &reg.id, &reg.address, &reg.meta)?;
        if let Some(service) = &reg.service {
            self.put_service(&reg.node, service)?;
        }
        for check in &reg.checks {
            self.put_check(&reg.node, check)?;
        }
        Ok(())
    }

    fn set_node_health(
        &mut self,
        node: &str,
        address: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), StoreError> {
        if self.node(node)?.is_none() {
            self.ensure_node(node, "", address, &BTreeMap::new())?;
        }
        self.put_check(
            node,
            &CheckEntry {
                check_id: SERF_HEALTH_CHECK_ID.into(),
                name: SERF_HEALTH_CHECK_NAME.into(),
                status,
                notes: String::new(),
                output: output.to_owned(),
                service_id: String::new(),
                kind: String::new(),
            },
        )
    }

    fn deregister(
        &mut self,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Result<(), StoreError> {
        if self.node(node)?.is_none() {
            return Ok(());
        }
        if service_id.is_none() && check_id.is_none() {
            return self.remove_node(node);
        }
        if let Some(id) = service_id {
            for check in self.checks_of(node)? {
                if check.service_id == id {
                    self.remove_check(node, &check.check_id)?;
                }
            }
            self.remove_service(node, id)?;
        }
        if let Some(id) = check_id {
            self.remove_check(node, id)?;
        }
        Ok(())
    }

    /// Creates the node or updates its record; an identical record is left alone.
    fn ensure_node(
        &mut self,
        node: &str,
        id: &str,
        address: &str,
        meta: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let existing = self.node(node)?;
        if let Some(e) = &existing
            && e.id == id
            && e.address == address
            && &e.meta == meta
        {
            return Ok(());
        }
        let record = CatalogNode {
            node: node.to_owned(),
            id: id.to_owned(),
            address: address.to_owned(),
            meta: meta.clone(),
            create_index: existing.map_or(self.index, |e| e.create_index),
            modify_index: self.index,
        };
        tables::put(self.tables, CatalogTable::Nodes, node, &record)?;
        self.outcome.nodes += 1;
        self.touched.nodes = true;
        self.touched.node_names.insert(node.to_owned());
        self.touched.node_wide.insert(node.to_owned());
        self.feed.push(CatalogChange::NodeRegistered {
            node: node.to_owned(),
        });
        Ok(())
    }

    fn put_service(&mut self, node: &str, entry: &ServiceEntry) -> Result<(), StoreError> {
        let id = entry.effective_id();
        let existing = self.service(node, id)?;
        if let Some(e) = &existing
            && e.service == entry.service
            && e.tags == entry.tags
            && e.address == entry.address
            && e.port == entry.port
            && e.meta == entry.meta
        {
            return Ok(());
        }
        if let Some(e) = &existing
            && e.service != entry.service
        {
            self.tables.delete_row(
                CatalogTable::ByService,
                &by_service_key(&e.service, node, id),
            )?;
            self.touched.service_names.insert(e.service.clone());
        }
        let record = CatalogService {
            node: node.to_owned(),
            id: id.to_owned(),
            service: entry.service.clone(),
            tags: entry.tags.clone(),
            address: entry.address.clone(),
            port: entry.port,
            meta: entry.meta.clone(),
            create_index: existing.map_or(self.index, |e| e.create_index),
            modify_index: self.index,
        };
        tables::put(
            self.tables,
            CatalogTable::Services,
            &pair_key(node, id),
            &record,
        )?;
        self.tables.put_row(
            CatalogTable::ByService,
            &by_service_key(&entry.service, node, id),
            &[],
        )?;
        self.outcome.services += 1;
        self.touched.services = true;
        self.touched.node_names.insert(node.to_owned());
        self.touched.service_names.insert(entry.service.clone());
        self.feed.push(CatalogChange::ServiceRegistered {
            node: node.to_owned(),
            service_id: id.to_owned(),
            service: entry.service.clone(),
        });
        Ok(())
    }

    fn remove_service(&mut self, node: &str, id: &str) -> Result<(), StoreError> {
        let Some(existing) = self.service(node, id)? else {
            return Ok(());
        };
        self.tables
            .delete_row(CatalogTable::Services, &pair_key(node, id))?;
        self.tables.delete_row(
            CatalogTable::ByService,
            &by_service_key(&existing.service, node, id),
        )?;
        self.outcome.services += 1;
        self.touched.services = true;
        self.touched.node_names.insert(node.to_owned());
        self.touched.service_names.insert(existing.service.clone());
        self.feed.push(CatalogChange::ServiceDeregistered {
            node: node.to_owned(),
            service_id: id.to_owned(),
            service: existing.service,
        });
        Ok(())
    }

    /// Marks the readers of a check of `node` on `service_id` as affected.
    fn touch_check_readers(&mut self, node: &str, service_id: &str) -> Result<(), StoreError> {
        self.touched.checks = true;
        self.touched.node_names.insert(node.to_owned());
        if service_id.is_empty() {
            self.touched.node_wide.insert(node.to_owned());
        } else if let Some(service) = self.service(node, service_id)? {
            self.touched.service_names.insert(service.service);
        }
        Ok(())
    }

    fn put_check(&mut self, node: &str, entry: &CheckEntry) -> Result<(), StoreError> {
        let mut entry = entry.clone();
        entry.truncate_text();
        let id = entry.effective_id().to_owned();
        let key = pair_key(node, &id);
        let existing: Option<HealthCheck> = tables::get(&*self.tables, CatalogTable::Checks, &key)?;
        if let Some(e) = &existing
            && e.name == entry.name
            && e.status == entry.status
            && e.notes == entry.notes
            && e.output == entry.output
            && e.service_id == entry.service_id
            && e.kind == entry.kind
        {
            return Ok(());
        }
        let status_changed = existing.as_ref().is_none_or(|e| e.status != entry.status);
        if let Some(e) = &existing
            && e.service_id != entry.service_id
        {
            self.touch_check_readers(node, &e.service_id)?;
        }
        let record = HealthCheck {
            node: node.to_owned(),
            check_id: id.clone(),
            name: entry.name,
            status: entry.status,
            notes: entry.notes,
            output: entry.output,
            service_id: entry.service_id,
            service_name: String::new(),
            service_tags: Vec::new(),
            kind: entry.kind,
            create_index: existing.map_or(self.index, |e| e.create_index),
            modify_index: self.index,
        };
        tables::put(self.tables, CatalogTable::Checks, &key, &record)?;
        self.outcome.checks += 1;
        self.touch_check_readers(node, &record.service_id)?;
        if status_changed {
            self.feed.push(CatalogChange::CheckStatus {
                node: node.to_owned(),
                check_id: id,
                service_id: record.service_id,
                status: record.status,
                modify_index: self.index,
            });
        }
        Ok(())
    }

    fn remove_check(&mut self, node: &str, check_id: &str) -> Result<(), StoreError> {
        let key = pair_key(node, check_id);
        let Some(existing) = tables::get::<HealthCheck>(&*self.tables, CatalogTable::Checks, &key)?
        else {
            return Ok(());
        };
        self.tables.delete_row(CatalogTable::Checks, &key)?;
        self.outcome.checks += 1;
        self.touch_check_readers(node, &existing.service_id)?;
        self.feed.push(CatalogChange::CheckDeregistered {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
        });
        Ok(())
    }

    /// Removes the node with its checks and services (reported in that order).
    fn remove_node(&mut self, node: &str) -> Result<(), StoreError> {
        if self.node(node)?.is_none() {
            return Ok(());
        }
        for check in self.checks_of(node)? {
            self.remove_check(node, &check.check_id)?;
        }
        for service in self.services_of(node)? {
            self.remove_service(node, &service.id)?;
        }
        self.tables.delete_row(CatalogTable::Nodes, node)?;
        self.outcome.nodes += 1;
        self.touched.nodes = true;
        self.touched.node_names.insert(node.to_owned());
        self.feed.push(CatalogChange::NodeDeregistered {
            node: node.to_owned(),
        });
        Ok(())
    }

    /// Raises the indexes of what changed and hands the changes to the watchers.
    fn finish(self, changes: &mut Changes) -> Result<Response, StoreError> {
        let Writer {
            tables: store,
            index,
            outcome,
            mut touched,
            feed,
        } = self;
        for node in &touched.node_wide {
            for service in
                tables::list::<CatalogService>(&*store, CatalogTable::Services, &node_prefix(node))?
            {
                touched.service_names.insert(service.service);
            }
        }
        let set = |store: &mut dyn CatalogTables, key: &str| {
            tables::put(store, CatalogTable::Indexes, key, &index)
        };
        for (hit, key, scope) in [
            (touched.nodes, NODES_INDEX, CatalogScope::Nodes),
            (touched.services, SERVICES_INDEX, CatalogScope::Services),
            (touched.checks, CHECKS_INDEX, CatalogScope::Checks),
        ] {
            if hit {
                set(store, key)?;
                changes.catalog_scope(scope);
            }
        }
        for name in touched.service_names {
            let key = service_index_key(&name);
            if tables::any(&*store, CatalogTable::ByService, &node_prefix(&name))? {
                set(store, &key)?;
            } else {
                store.delete_row(CatalogTable::Indexes, &key)?;
            }
            changes.catalog_scope(CatalogScope::Service(name));
        }
        for node in touched.node_names {
            let key = node_index_key(&node);
            if store.get_row(CatalogTable::Nodes, &node)?.is_some() {
                set(store, &key)?;
            } else {
                store.delete_row(CatalogTable::Indexes, &key)?;
            }
            changes.catalog_scope(CatalogScope::Node(node));
        }
        changes.catalog_feed.extend(feed);
        Ok(Response::Catalog(outcome))
    }
}
