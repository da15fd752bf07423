//! The event bus of the agent mesh.
//!
//! This crate owns the event types (user events such as `deploy web v42`, member, KV and
//! health changes), Lamport clocks, the de-duplication and coalescing of events, and the
//! in-process bus with its subscriptions. Handlers that run commands are the agent's
//! business; this crate does no I/O and reads no clock: the caller passes time and
//! randomness in.
//!
//! # Layout
//! - [`member`]: membership changes as events ([`MemberEvent`]).
//! - [`user`]: user events ([`UserEvent`]), their filters, size limits and encoding.
//! - [`lamport`]: the Lamport clock that orders user events ([`LamportClock`]).
//! - [`dedupe`]: recently seen user events, so each is delivered once
//!   ([`RecentEvents`]), and the state exchanged in a push-pull.
//! - [`ring`]: the last user events an agent received, for listing ([`EventRing`]).
//! - [`coalesce`]: member events coalesced for handlers ([`MemberCoalescer`]).
//! - [`bus`]: the in-process [`Bus`] that components publish to and subscribe from.
//!
//! # A user event's path
//! The firing agent stamps the event with its event clock's [`LamportClock::time`], then
//! [`LamportClock::increment`]s, [`UserEvent::validate`]s and gossips the
//! [`UserEvent::encode`]d bytes, and handles its own event as if received. A receiving
//! agent [`UserEvent::decode`]s, [`LamportClock::witness`]es the event's time and asks
//! [`RecentEvents::observe`]: only an [`Observed::New`] event is gossiped on, checked
//! against [`EventFilter::matches`] and, if it matches, pushed to the [`EventRing`] and
//! published as [`Event::User`].
#![warn(missing_docs)]

pub mod bus;
pub mod coalesce;
pub mod dedupe;
pub mod lamport;
pub mod member;
pub mod ring;
pub mod user;

pub use bus::{Bus, Received, Subscription};
pub use coalesce::{CoalesceConfig, MemberCoalescer};
pub use dedupe::{Observed, RecentEvents};
pub use lamport::LamportClock;
pub use member::{MemberEvent, MemberEventKind};
pub use ring::EventRing;
pub use user::{EventFilter, SizeLimit, UserEvent, UserEventError};

use serde::Serialize;

/// Anything that happens in the mesh and can be observed on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Type")]
pub enum Event {
    /// A member joined, changed, became suspect, failed, left or was reaped.
    Member(MemberEvent),
    /// A user event that passed this agent's filters.
    User(UserEvent),
    /// A key of the replicated KV store was written or deleted.
    #[serde(rename_all = "PascalCase")]
    Kv {
        /// The key.
        key: String,
        /// The Raft index of the write (Consul's `ModifyIndex`).
        modify_index: u64,
        /// Whether the write deleted the key.
        deleted: bool,
        /// Whether every key under `key` (a prefix) was deleted at once.
        recurse: bool,
    },
    /// A health check changed status.
    #[serde(rename_all = "PascalCase")]
    Health {
        /// The node the check belongs to.
        node: String,
        /// The check's ID.
        check: String,
        /// Its new status.
        status: HealthStatus,
    },
}

/// The status of a health check, as Consul names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The check passes.
    Passing,
    /// The check passes with a warning.
    Warning,
    /// The check fails.
    Critical,
}

impl HealthStatus {
    /// Consul's name: `passing`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }

    /// The status of Consul's name (`passing`, `warning`, `critical`, in any case).
    pub fn parse(text: &str) -> Option<HealthStatus> {
        [
            HealthStatus::Passing,
            HealthStatus::Warning,
            HealthStatus::Critical,
        ]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(text.trim()))
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_variant_serializes_with_its_type_tag() {
        let member = Event::Member(MemberEvent {
            kind: MemberEventKind::Join,
            name: "n1".into(),
            addr: "127.0.0.1:8301".parse().unwrap(),
            dc: "dc1".into(),
            role: "client".into(),
            tags: Default::default(),
            status: 1,
        });
        let json = serde_json::to_value(&member).unwrap();
        assert_eq!(json["Type"], "Member");
        assert_eq!(json["Kind"], "Join");
        assert_eq!(json["Name"], "n1");

        let user = UserEvent::new(
            UserEvent::new_id([9; 16]),
            "deploy",
            b"v42".to_vec(),
            7,
            "n1",
        );
        let json = serde_json::to_value(Event::User(user.clone())).unwrap();
        assert_eq!(json["Type"], "User");
        assert_eq!(json["ID"], user.id.to_string());
        assert_eq!(json["Name"], "deploy");
        assert_eq!(json["Payload"], "djQy");
        assert_eq!(json["LTime"], 7);

        let kv = Event::Kv {
            key: "app/config".into(),
            modify_index: 12,
            deleted: false,
            recurse: false,
        };
        assert_eq!(
            serde_json::to_value(kv).unwrap(),
            json!({"Type": "Kv", "Key": "app/config", "ModifyIndex": 12, "Deleted": false, "Recurse": false})
        );

        let health = Event::Health {
            node: "n1".into(),
            check: "serfHealth".into(),
            status: HealthStatus::Critical,
        };
        assert_eq!(
            serde_json::to_value(health).unwrap(),
            json!({"Type": "Health", "Node": "n1", "Check": "serfHealth", "Status": "critical"})
        );
    }
}
