//! The agent's local state: the services defined on this host.
//!
//! Services come from the `services` of config files. User events use them for their
//! service and tag filters; the catalog (servers) learns them from each agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A service running on this host, as defined in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDefinition {
    /// Unique on this agent; the name when not given.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service's name, shared by its instances.
    pub service: String,
    /// Tags of this instance.
    pub tags: Vec<String>,
    /// Address of this instance; the node's address when empty.
    pub address: String,
    /// Port of this instance.
    pub port: u16,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
}

impl ServiceDefinition {
    /// The name and tags, as an event filter wants them.
    pub fn name_and_tags(&self) -> (&str, &[String]) {
        (&self.service, &self.tags)
    }
}
