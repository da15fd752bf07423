//! The event bus of the agent mesh.
//!
//! This crate owns the event types (user events such as `deploy web v42`, member, KV and
//! health changes), Lamport clocks, the de-duplication and coalescing of events, and the
//! in-process bus with its subscriptions. Handlers that run commands are the agent's
//! business; this crate does no I/O.
#![warn(missing_docs)]
