//! Health checks as defined on an agent: what to probe, how often, what it is about.
//!
//! A check is one of Consul's four kinds ([`CheckKind`]): a TTL the application must
//! refresh, an HTTP GET, a TCP connect, or a script run without a shell. Definitions are
//! built by [`super::parse`] from Consul's JSON shape (or a config file's), which applies
//! the defaults and the limits below; the state of a running check lives in
//! [`super::LocalState`].

use std::time::Duration;

use events::HealthStatus;
use serde::ser::{Serialize, SerializeMap, Serializer};
use thiserror::Error;

/// Timeout of HTTP, TCP and script checks that do not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest interval between two runs of a check; shorter ones are raised to it, as
/// Consul does.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest output kept of a check (a script's output, an HTTP body, `Output` of an
/// update), in bytes.
pub const MAX_OUTPUT: usize = 4096;
/// Longest check name, in bytes.
pub const MAX_CHECK_NAME_LEN: usize = 256;
/// Longest notes, in bytes.
pub const MAX_NOTES_LEN: usize = 1024;
/// Longest URL of an HTTP check or address of a TCP check, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;
/// Most arguments of a script check.
pub const MAX_ARGS: usize = 64;
/// Longest argument of a script check, in bytes.
pub const MAX_ARG_LEN: usize = 4096;

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Critical unless refreshed (`/v1/agent/check/pass/<id>`, ...) within `ttl`.
    Ttl {
        /// How long a status holds without a refresh.
        ttl: Duration,
    },
    /// `method url`: 2xx is passing, 429 warning, anything else critical.
    Http {
        /// `http://...` (or `https://`).
        url: String,
        /// `GET` unless set.
        method: String,
    },
    /// A TCP connect to `addr` (`host:port`): passing when it succeeds.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// `args[0]` run with the other arguments, without a shell: exit 0 is passing, 1
    /// warning, anything else critical.
    Script {
        /// The program and its arguments.
        args: Vec<String>,
    },
}

impl CheckKind {
    /// `ttl`, `http`, `tcp` or `script` (Consul's `Type`).
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Script { .. } => "script",
        }
    }
}

/// A health check registered on this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDefinition {
    /// Unique on this agent: the name unless given; `service:<service-id>` for the
    /// check of a service (`service:<service-id>:<n>` when it has several).
    pub id: String,
    /// What the check is called.
    pub name: String,
    /// The service it belongs to; empty for a check of the node.
    pub service_id: String,
    /// What it probes.
    pub kind: CheckKind,
    /// Time between two runs (zero for TTL checks).
    pub interval: Duration,
    /// How long one run may take.
    pub timeout: Duration,
    /// Free text for humans.
    pub notes: String,
    /// Status before the first run; critical when not given.
    pub status: Option<HealthStatus>,
}

/// Why a check definition cannot be used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidCheck(pub String);

impl CheckDefinition {
    /// The status the check has before its first run.
    pub fn initial_status(&self) -> HealthStatus {
        self.status.unwrap_or(HealthStatus::Critical)
    }

    /// Checks what the parser cannot: a usable id, bounded name and notes, and (for a
    /// definition not made by the parser) a TTL, interval and timeout above zero.
    pub fn check(&self) -> Result<(), InvalidCheck> {
        if self.id.is_empty() {
            return Err(InvalidCheck("Missing check ID".into()));
        }
        if self.id.len() > MAX_CHECK_NAME_LEN {
            return Err(InvalidCheck(format!(
                "check ID is {} bytes long, more than {MAX_CHECK_NAME_LEN}",
                self.id.len()
            )));
        }
        if self
            .id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/')
        {
            return Err(InvalidCheck(format!(
                "check ID {:?} holds a control character, white space or '/'",
                self.id
            )));
        }
        if self.name.is_empty() {
            return Err(InvalidCheck("Missing check name".into()));
        }
        if self.name.len() > MAX_CHECK_NAME_LEN || self.name.chars().any(char::is_control) {
            return Err(InvalidCheck(format!(
                "check name must be at most {MAX_CHECK_NAME_LEN} bytes without control characters"
            )));
        }
        match &self.kind {
            CheckKind::Ttl { ttl } if ttl.is_zero() => {
                return Err(InvalidCheck("the TTL must be above zero".into()));
            }
            CheckKind::Ttl { .. } => {}
            _ if self.interval.is_zero() || self.timeout.is_zero() => {
                return Err(InvalidCheck(
                    "Interval and Timeout must be > 0 for script, HTTP or TCP checks".into(),
                ));
            }
            _ => {}
        }
        if self.notes.len() > MAX_NOTES_LEN {
            return Err(InvalidCheck(format!(
                "notes are {} bytes long, more than {MAX_NOTES_LEN}",
                self.notes.len()
            )));
        }
        Ok(())
    }
}

/// A Go duration string of `d` that [`crate::http::parse_go_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Keeps the first [`MAX_OUTPUT`] bytes of `text`, cut at a character boundary.
pub fn bound_output(mut text: String) -> String {
    if text.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Consul's shape (`CheckID`, `Name`, `ServiceID`, `TTL`/`HTTP`/`TCP`/`Args`, ...), as
/// [`super::parse`] reads it back.
impl Serialize for CheckDefinition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("CheckID", &self.id)?;
        map.serialize_entry("Name", &self.name)?;
        if !self.service_id.is_empty() {
            map.serialize_entry("ServiceID", &self.service_id)?;
        }
        if !self.notes.is_empty() {
            map.serialize_entry("Notes", &self.notes)?;
        }
        if let Some(status) = self.status {
            map.serialize_entry("Status", status.as_str())?;
        }
        match &self.kind {
            CheckKind::Ttl { ttl } => map.serialize_entry("TTL", &format_duration(*ttl))?,
            CheckKind::Http { url, method } => {
                map.serialize_entry("HTTP", url)?;
                map.serialize_entry("Method", method)?;
            }
            CheckKind::Tcp { addr } => map.serialize_entry("TCP", addr)?,
            CheckKind::Script { args } => map.serialize_entry("Args", args)?,
        }
        if !matches!(self.kind, CheckKind::Ttl { .. }) {
            map.serialize_entry("Interval", &format_duration(self.interval))?;
            map.serialize_entry("Timeout", &format_duration(self.timeout))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_as_go_reads_them() {
        for d in [
            Duration::from_secs(10),
            Duration::from_millis(1500),
            Duration::from_nanos(1_000_000_001),
            Duration::ZERO,
        ] {
            assert_eq!(
                crate::http::parse_go_duration(&format_duration(d)),
                Some(d),
                "{d:?}"
            );
        }
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_OUTPUT);
        let cut = bound_output(text);
        assert!(cut.len() <= MAX_OUTPUT && cut.len() >= MAX_OUTPUT - 1);
        assert_eq!(bound_output("short".into()), "short");
    }
}
