//! SWIM membership for the agent mesh.
//!
//! This crate owns who is in the cluster: foca driven by a transport-agnostic runtime,
//! node identities (name, address, datacenter, role, generation), member tags, the LAN
//! and WAN pools, and the discovery of servers from gossip. It opens no sockets and reads
//! no clock: the agent feeds it packets and timer events and carries out what it asks
//! for, so that hundreds of simulated nodes can run deterministically in one test.
//!
//! The gossip runtime arrives with the membership work; this crate is the place for it.
#![warn(missing_docs)]
