//! The event bus of the agent mesh.
//!
//! This crate owns the event types (user events such as `deploy web v42`, member, KV and
//! health changes), Lamport clocks, the de-duplication and coalescing of events, and the
//! in-process bus with its subscriptions. Handlers that run commands are the agent's
//! business; this crate does no I/O.
//!
//! # Layout
//! - [`member`]: membership changes as events ([`MemberEvent`]).
//! - [`bus`]: the in-process [`Bus`] that components publish to and subscribe from.
#![warn(missing_docs)]

pub mod bus;
pub mod member;

pub use bus::{Bus, Received, Subscription};
pub use member::{MemberEvent, MemberEventKind};

use serde::Serialize;

/// Anything that happens in the mesh and can be observed on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "Type")]
pub enum Event {
    /// A member joined, changed, became suspect, failed, left or was reaped.
    Member(MemberEvent),
}
