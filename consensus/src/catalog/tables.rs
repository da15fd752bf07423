//! The catalog's tables as the rules see them: byte values under string keys in five
//! tables, implemented on LMDB by `sm_db` and in memory for tests.
//!
//! - `Nodes`: node → [`CatalogNode`](super::CatalogNode);
//! - `Services`: `node \0 service_id` → [`CatalogService`](super::CatalogService);
//! - `Checks`: `node \0 check_id` → [`HealthCheck`](super::HealthCheck) (without the
//!   service's name and tags, which are joined in when read);
//! - `ByService`: `service_name \0 node \0 service_id` → nothing, to find the instances of
//!   a service in node order;
//! - `Indexes`: `nodes`, `services`, `checks`, `s:<service name>`, `n:<node>` → u64.
//!
//! Names never contain NUL (validation refuses them), so `\0` separates key parts and a
//! prefix ending in `\0` selects exactly one node's or one service's rows.

use std::ops::ControlFlow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// One of the catalog's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) enum CatalogTable {
    Nodes,
    Services,
    Checks,
    ByService,
    Indexes,
}

impl CatalogTable {
    pub(crate) const ALL: [CatalogTable; 5] = [
        CatalogTable::Nodes,
        CatalogTable::Services,
        CatalogTable::Checks,
        CatalogTable::ByService,
        CatalogTable::Indexes,
    ];
}

/// Visitor of `(key, value)` rows.
pub(crate) type RowVisit<'a> = dyn FnMut(&str, &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

/// Read access to the catalog's tables.
pub(crate) trait CatalogView {
    /// The value under `key`.
    fn get_row(&self, table: CatalogTable, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits the rows whose key starts with `prefix`, in key order, until `visit` breaks.
    fn scan_rows(
        &self,
        table: CatalogTable,
        prefix: &str,
        visit: &mut RowVisit<'_>,
    ) -> Result<(), StoreError>;
}

/// Write access to the catalog's tables.
pub(crate) trait CatalogTables: CatalogView {
    /// Stores `value` under `key`.
    fn put_row(&mut self, table: CatalogTable, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; true if it existed.
    fn delete_row(&mut self, table: CatalogTable, key: &str) -> Result<bool, StoreError>;
}

pub(crate) fn pair_key(a: &str, b: &str) -> String {
    let mut key = String::with_capacity(a.len() + b.len() + 1);
    key.push_str(a);
    key.push('\0');
    key.push_str(b);
    key
}

pub(crate) fn node_prefix(node: &str) -> String {
    pair_key(node, "")
}

pub(crate) fn by_service_key(service: &str, node: &str, id: &str) -> String {
    pair_key(&pair_key(service, node), id)
}

pub(crate) fn get<T: DeserializeOwned>(
    view: &dyn CatalogView,
    table: CatalogTable,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match view.get_row(table, key)? {
        Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
        None => Ok(None),
    }
}

pub(crate) fn put<T: Serialize>(
    tables: &mut dyn CatalogTables,
    table: CatalogTable,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = postcard::to_allocvec(value)?;
    tables.put_row(table, key, &bytes)
}

/// Every value whose key starts with `prefix`, in key order.
pub(crate) fn list<T: DeserializeOwned>(
    view: &dyn CatalogView,
    table: CatalogTable,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    view.scan_rows(table, prefix, &mut |_, bytes| {
        out.push(postcard::from_bytes(bytes)?);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Every key that starts with `prefix`, in order.
pub(crate) fn keys(
    view: &dyn CatalogView,
    table: CatalogTable,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    view.scan_rows(table, prefix, &mut |key, _| {
        out.push(key.to_owned());
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Whether any key starts with `prefix`.
pub(crate) fn any(
    view: &dyn CatalogView,
    table: CatalogTable,
    prefix: &str,
) -> Result<bool, StoreError> {
    let mut found = false;
    view.scan_rows(table, prefix, &mut |_, _| {
        found = true;
        Ok(ControlFlow::Break(()))
    })?;
    Ok(found)
}

#[cfg(test)]
pub(crate) mod mem {
    //! The catalog's tables in `BTreeMap`s, for tests.

    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Default, Clone, PartialEq)]
    pub(crate) struct MemCatalog {
        pub(crate) tables: BTreeMap<CatalogTable, BTreeMap<String, Vec<u8>>>,
    }

    impl CatalogView for MemCatalog {
        fn get_row(&self, table: CatalogTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
        }

        fn scan_rows(
            &self,
            table: CatalogTable,
            prefix: &str,
            visit: &mut RowVisit<'_>,
        ) -> Result<(), StoreError> {
            let Some(rows) = self.tables.get(&table) else {
                return Ok(());
            };
            for (k, v) in rows
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                if visit(k, v)?.is_break() {
                    break;
                }
            }
            Ok(())
        }
    }

    impl CatalogTables for MemCatalog {
        fn put_row(
            &mut self,
            table: CatalogTable,
            key: &str,
            value: &[u8],
        ) -> Result<(), StoreError> {
            self.tables
                .entry(table)
                .or_default()
                .insert(key.to_owned(), value.to_vec());
            Ok(())
        }

        fn delete_row(&mut self, table: CatalogTable, key: &str) -> Result<bool, StoreError> {
            Ok(self
                .tables
                .get_mut(&table)
                .is_some_and(|t| t.remove(key).is_some()))
        }
    }
}
