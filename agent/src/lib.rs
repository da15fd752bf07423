//! The agent: the one binary that runs on every host of the mesh.
//!
//! `main` is thin: it parses the command line ([`cli`]), validates it into a
//! [`config::Config`] and hands it to [`run`] (the daemon) or to one of the
//! [`commands`] (which talk to a running agent through [`client`]).
//!
//! Layout:
//! - [`cli`]: the command line, parsed with clap; no I/O.
//! - [`config`]: validated settings of `agent run` from flags and config files; no I/O
//!   but reading the files.
//! - [`run`]: builds the components from a config and runs them until shutdown.
//! - [`tls`]: the cluster CA, node certificates, peer identities, rustls configs for mTLS.
//! - [`transport`]: one QUIC endpoint per pool carrying datagrams and RPC frames.
//! - [`rpc`]: routes incoming RPC by kind and checks who may ask what.
//! - [`gossip`]: the LAN gossip driver running `membership` on the transport.
//! - [`servers`]: servers found through gossip: forming the cluster, autopilot.
//! - [`reconcile`]: the leader keeps the catalog's nodes and `serfHealth` checks in step
//!   with gossip.
//! - [`raft`]: Raft RPC over the transport (the agent's `consensus::RaftTransport`).
//! - [`http`]: the Consul-compatible HTTP API.
//! - [`dns`]: the DNS interface (Consul's), answered from the HTTP API.
//! - [`local`]: the services and health checks registered on this host.
//! - [`anti_entropy`]: pushes the local services and checks into the servers' catalog.
//! - [`process`]: running a command with a timeout in its own process group (event
//!   handlers, script checks).
//! - [`handlers`]: `--event-handler` commands run for the events on the bus.
//! - [`client`]: a client of the HTTP API, for the commands and tests.
//! - [`commands`]: `agent kv`, `agent event`, `agent watch`, the membership and operator
//!   commands, `agent tls`, `agent info`.
//! - [`node_id`], [`logging`], [`signals`]: the node's stable id, logs, Ctrl-C/SIGTERM.
//! - [`data_file`]: small files of the data dir, written atomically.

pub mod anti_entropy;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod data_file;
pub mod dns;
pub mod gossip;
pub mod handlers;
pub mod http;
pub mod local;
pub mod logging;
pub mod node_id;
pub mod process;
pub mod raft;
pub mod reconcile;
pub mod rpc;
pub mod run;
pub mod servers;
pub mod signals;
pub mod tls;
pub mod transport;
pub mod wan;

/// The host name, the default node name (`localhost` when it cannot be read).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
