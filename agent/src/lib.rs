//! The agent: the one binary that runs on every host.
//!
//! Layout:
//! - [`tls`]: the cluster CA, node certificates, and the rustls configurations for mTLS.
//! - [`transport`]: one QUIC endpoint per pool carrying datagrams and RPC frames.

pub mod tls;
pub mod transport;
