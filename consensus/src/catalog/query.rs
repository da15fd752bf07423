//! Reads of the catalog, and the index each reports.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;

use super::apply::{CHECKS_INDEX, NODES_INDEX, SERVICES_INDEX, node_index_key, service_index_key};
use super::tables::{self, CatalogTable, CatalogView, node_prefix, pair_key};
use super::{
    CatalogNode, CatalogScope, CatalogService, CheckState, CheckStatus, HealthCheck, NodeServices,
    ServiceHealth, ServiceInstance,
};
use crate::error::StoreError;

fn stored_index(view: &dyn CatalogView, key: &str) -> Result<Option<u64>, StoreError> {
    tables::get(view, CatalogTable::Indexes, key)
}

/// The index to report for a read of `scope`: the scope's own index, or for a node or
/// service name that does not exist, its table's index. Never 0.
pub(crate) fn index_for(view: &dyn CatalogView, scope: &CatalogScope) -> Result<u64, StoreError> {
    let index = match scope {
        CatalogScope::Nodes => stored_index(view, NODES_INDEX)?,
        CatalogScope::Services => stored_index(view, SERVICES_INDEX)?,
        CatalogScope::Checks => stored_index(view, CHECKS_INDEX)?,
        CatalogScope::Service(name) => match stored_index(view, &service_index_key(name))? {
            Some(index) => Some(index),
            None => stored_index(view, SERVICES_INDEX)?,
        },
        CatalogScope::Node(node) => match stored_index(view, &node_index_key(node))? {
            Some(index) => Some(index),
            None => stored_index(view, NODES_INDEX)?,
        },
    };
    Ok(index.unwrap_or(0).max(1))
}

/// Every node, sorted by name.
pub(crate) fn nodes(view: &dyn CatalogView) -> Result<Vec<CatalogNode>, StoreError> {
    tables::list(view, CatalogTable::Nodes, "")
}

/// Every service name with the union of its instances' tags, sorted.
pub(crate) fn services(
    view: &dyn CatalogView,
) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    view.scan_rows(CatalogTable::Services, "", &mut |_, bytes| {
        let service: CatalogService = postcard::from_bytes(bytes)?;
        let tags = out.entry(service.service).or_default();
        for tag in service.tags {
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    for tags in out.values_mut() {
        tags.sort();
    }
    Ok(out)
}

/// Whether `service` has every tag of `tags` (compared case-insensitively, as Consul does).
fn has_tags(service: &CatalogService, tags: &[&str]) -> bool {
    tags.iter()
        .all(|want| service.tags.iter().any(|t| t.eq_ignore_ascii_case(want)))
}

/// The instances of service `name` carrying every tag of `tags`, sorted by node then id.
pub(crate) fn service_nodes(
    view: &dyn CatalogView,
    name: &str,
    tags: &[&str],
) -> Result<Vec<ServiceInstance>, StoreError> {
    // NUL separates key parts: a name containing one could select another's rows.
    if name.contains('\0') {
        return Ok(Vec::new());
    }
    let prefix = node_prefix(name);
    let mut nodes: HashMap<String, CatalogNode> = HashMap::new();
    let mut out = Vec::new();
    for key in tables::keys(view, CatalogTable::ByService, &prefix)? {
        let Some((node, id)) = key[prefix.len()..].split_once('\0') else {
            return Err(StoreError::Corrupt(format!("catalog index key {key:?}")));
        };
        let Some(service) =
            tables::get::<CatalogService>(view, CatalogTable::Services, &pair_key(node, id))?
        else {
            return Err(StoreError::Corrupt(format!(
                "service {id:?} of node {node:?} is indexed but missing"
            )));
        };
        if !has_tags(&service, tags) {
            continue;
        }
        let record = match nodes.get(node) {
            Some(record) => record.clone(),
            None => {
                let Some(record) = tables::get::<CatalogNode>(view, CatalogTable::Nodes, node)?
                else {
                    return Err(StoreError::Corrupt(format!(
                        "service {id:?} of missing node {node:?}"
                    )));
                };
                nodes.insert(node.to_owned(), record.clone());
                record
            }
        };
        out.push(ServiceInstance {
            node: record,
            service,
        });
    }
    Ok(out)
}

/// Node `node` with its services, or `None` if it is not registered.
pub(crate) fn node_services(
    view: &dyn CatalogView,
    node: &str,
) -> Result<Option<NodeServices>, StoreError> {
    if node.contains('\0') {
        return Ok(None);
    }
    let Some(record) = tables::get::<CatalogNode>(view, CatalogTable::Nodes, node)? else {
        return Ok(None);
    };
    let services = tables::list(view, CatalogTable::Services, &node_prefix(node))?;
    Ok(Some(NodeServices {
        node: record,
        services,
    }))
}

/// Fills in the name and tags of the service each check is on.
fn join_services(view: &dyn CatalogView, checks: &mut [HealthCheck]) -> Result<(), StoreError> {
    let mut known: HashMap<(String, String), Option<CatalogService>> = HashMap::new();
    for check in checks.iter_mut().filter(|c| !c.service_id.is_empty()) {
        let key = (check.node.clone(), check.service_id.clone());
        let service = match known.get(&key) {
            Some(service) => service.clone(),
            None => {
                let service: Option<CatalogService> = tables::get(
                    view,
                    CatalogTable::Services,
                    &pair_key(&check.node, &check.service_id),
                )?;
                known.insert(key, service.clone());
                service
            }
        };
        if let Some(service) = service {
            check.service_name = service.service;
            check.service_tags = service.tags;
        }
    }
    Ok(())
}

/// The checks of node `node`, sorted by id.
pub(crate) fn node_checks(
    view: &dyn CatalogView,
    node: &str,
) -> Result<Vec<HealthCheck>, StoreError> {
    if node.contains('\0') {
        return Ok(Vec::new());
    }
    let mut checks = tables::list(view, CatalogTable::Checks, &node_prefix(node))?;
    join_services(view, &mut checks)?;
    Ok(checks)
}

/// The instances of service `name` with every tag of `tags`, each with its node's checks
/// and its own; with `passing_only`, instances with any check not passing are left out.
pub(crate) fn service_health(
    view: &dyn CatalogView,
    name: &str,
    tags: &[&str],
    passing_only: bool,
) -> Result<Vec<ServiceHealth>, StoreError> {
    let mut node_checks_cache: HashMap<String, Vec<HealthCheck>> = HashMap::new();
    let mut out = Vec::new();
    for instance in service_nodes(view, name, tags)? {
        let node = instance.node.node.clone();
        if !node_checks_cache.contains_key(&node) {
            let checks = node_checks(view, &node)?;
            node_checks_cache.insert(node.clone(), checks);
        }
        let all = node_checks_cache.get(&node).map_or(&[][..], Vec::as_slice);
        let mut checks: Vec<HealthCheck> = all
            .iter()
            .filter(|c| c.service_id.is_empty())
            .cloned()
            .collect();
        checks.extend(
            all.iter()
                .filter(|c| c.service_id == instance.service.id)
                .cloned(),
        );
        if passing_only && checks.iter().any(|c| c.status != CheckStatus::Passing) {
            continue;
        }
        out.push(ServiceHealth {
            node: instance.node,
            service: instance.service,
            checks,
        });
    }
    Ok(out)
}

/// The checks of every instance of service `name`, sorted by node then id.
pub(crate) fn service_checks(
    view: &dyn CatalogView,
    name: &str,
) -> Result<Vec<HealthCheck>, StoreError> {
    let mut out = Vec::new();
    let mut last_node: Option<String> = None;
    let instances = service_nodes(view, name, &[])?;
    for instance in &instances {
        if last_node.as_deref() == Some(instance.node.node.as_str()) {
            continue;
        }
        last_node = Some(instance.node.node.clone());
        let ids: Vec<&str> = instances
            .iter()
            .filter(|i| i.node.node == instance.node.node)
            .map(|i| i.service.id.as_str())
            .collect();
        out.extend(
            node_checks(view, &instance.node.node)?
                .into_iter()
                .filter(|c| ids.contains(&c.service_id.as_str())),
        );
    }
    Ok(out)
}

/// The checks in `state`, sorted by node then id.
pub(crate) fn checks_in_state(
    view: &dyn CatalogView,
    state: CheckState,
) -> Result<Vec<HealthCheck>, StoreError> {
    let mut checks = Vec::new();
    view.scan_rows(CatalogTable::Checks, "", &mut |_, bytes| {
        let check: HealthCheck = postcard::from_bytes(bytes)?;
        if matches!(state, CheckState::Is(s) if s != check.status) {
            return Ok(ControlFlow::Continue(()));
        }
        checks.push(check);
        Ok(ControlFlow::Continue(()))
    })?;
    join_services(view, &mut checks)?;
    Ok(checks)
}
