//! `<data-dir>/local.json`: the services and checks registered through the HTTP API, so
//! that a restarted agent keeps them. Definitions only; statuses start over.
//!
//! Written whole and atomically ([`crate::data_file::write_atomic`]) after every change.
//! A file that cannot be read or parsed is an error at start, never skipped.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::check::CheckDefinition;
use super::parse::Consul;
use super::service::ServiceDefinition;

/// File name inside the data dir.
pub const FILE: &str = "local.json";

/// Largest file read (definitions are bounded, and so is their number).
const MAX_FILE_SIZE: u64 = 64 << 20;

/// Version of the file's layout.
const LAYOUT: u32 = 1;

/// What the file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Services registered through the API.
    pub services: Vec<ServiceDefinition>,
    /// Checks registered through the API (with their services or alone).
    pub checks: Vec<CheckDefinition>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Out<'a> {
    version: u32,
    services: Vec<&'a ServiceDefinition>,
    checks: Vec<&'a CheckDefinition>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct In {
    version: u32,
    #[serde(default)]
    services: Vec<ServiceDefinition>,
    #[serde(default)]
    checks: Vec<Consul<CheckDefinition, true>>,
}

/// The file's bytes for these definitions.
pub fn encode<'a>(
    services: impl IntoIterator<Item = &'a ServiceDefinition>,
    checks: impl IntoIterator<Item = &'a CheckDefinition>,
) -> anyhow::Result<Vec<u8>> {
    let out = Out {
        version: LAYOUT,
        services: services.into_iter().collect(),
        checks: checks.into_iter().collect(),
    };
    serde_json::to_vec_pretty(&out).context("encoding the local services and checks")
}

/// Reads the file at `path`; no file is nothing saved.
pub fn load(path: &Path) -> anyhow::Result<Saved> {
    let Some(bytes) = crate::data_file::read_bounded(path, MAX_FILE_SIZE)? else {
        return Ok(Saved::default());
    };
    let file: In = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a valid file of local services and checks (move it away to start without them)",
            path.display()
        )
    })?;
    if file.version != LAYOUT {
        anyhow::bail!(
            "{} has layout version {}, this agent reads {LAYOUT}",
            path.display(),
            file.version
        );
    }
    Ok(Saved {
        services: file.services,
        checks: file.checks.into_iter().map(|c| c.0).collect(),
    })
}
