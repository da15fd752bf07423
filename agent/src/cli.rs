//! The command line: what the user typed, parsed and nothing more.
//!
//! Parsing does no I/O. `main` turns a [`Command`] into work: [`crate::run`] for the
//! daemon, [`crate::commands`] for the commands that talk to a running agent or that
//! make certificates.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default address of the local agent's HTTP API.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// `agent`: one binary on every host of the mesh.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The sub-commands of `agent`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon.
    Run(Box<RunArgs>),
    /// Read and write the key/value store through the local agent.
    Kv(KvArgs),
    /// Make the cluster CA and node certificates.
    Tls(TlsArgs),
    /// Show the local agent's view of itself.
    Info(HttpArgs),
    /// Ask the local agent to join the cluster through other agents.
    Join(JoinArgs),
    /// Ask the local agent to leave the cluster gracefully and stop.
    Leave(HttpArgs),
    /// List the members of the cluster as the local agent sees them.
    Members(MembersArgs),
    /// Move a failed member to the left state, so it is no longer probed.
    ForceLeave(ForceLeaveArgs),
    /// Operate the cluster.
    Operator(OperatorArgs),
    /// Fire a user event through the local agent.
    Event(EventArgs),
    /// Watch a key, a key prefix, user events, the members or the services, and run a
    /// handler (or print JSON) on every change.
    Watch(WatchArgs),
}

/// `agent event --name NAME [PAYLOAD] [--node RE] [--service RE] [--tag RE] [--dc DC]`
#[derive(Debug, Args)]
pub struct EventArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Name of the event.
    #[arg(long, value_parser = NonEmptyStringValueParser::new())]
    pub name: String,
    /// Payload of the event ("-" reads it from stdin; none sends an empty payload).
    pub payload: Option<String>,
    /// Only agents whose node name matches this regular expression handle the event.
    #[arg(long, value_name = "REGEX")]
    pub node: Option<String>,
    /// Only agents with a local service whose name matches this regular expression
    /// handle the event.
    #[arg(long, value_name = "REGEX")]
    pub service: Option<String>,
    /// With --service: only agents where a matching service has a tag matching this
    /// regular expression handle the event.
    #[arg(long, value_name = "REGEX", requires = "service")]
    pub tag: Option<String>,
    /// Fire the event in this datacenter (by one of its servers) instead of the local
    /// agent's.
    #[arg(long, value_name = "DC")]
    pub dc: Option<String>,
}

/// `agent watch --type TYPE [--key K|--prefix P|--name N] [-- HANDLER ARGS...]`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// What to watch.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub kind: WatchKind,
    /// The key to watch (--type key).
    #[arg(long)]
    pub key: Option<String>,
    /// The key prefix to watch (--type keyprefix).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Only user events of this name (--type event).
    #[arg(long)]
    pub name: Option<String>,
    /// Longest wait of one blocking query (a Go duration).
    #[arg(long, hide = true, default_value = "5m", value_parser = parse_duration)]
    pub wait: std::time::Duration,
    /// Program (and its arguments) run on every change with the JSON on stdin, without a
    /// shell, and AGENT_INDEX (for events also AGENT_EVENT=user, AGENT_USER_EVENT=<name>)
    /// in its environment; without one, each change is printed to stdout as a JSON line.
    #[arg(last = true, value_name = "HANDLER")]
    pub handler: Vec<String>,
}

/// What `agent watch` watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchKind {
    /// One key: its entry as a JSON object, `null` when absent.
    Key,
    /// Every key under a prefix: a JSON array of entries, `[]` when none.
    Keyprefix,
    /// User events: each new event as a JSON object, once.
    Event,
    /// The members of the LAN pool: a JSON array.
    Members,
    /// The services of the catalog: a JSON object of names to tags.
    Services,
}

/// `agent operator ...`
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// The operation.
    #[command(subcommand)]
    pub command: OperatorCommand,
}

/// `agent operator raft ...`
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// The Raft configuration.
    Raft {
        /// What to do with it.
        #[command(subcommand)]
        command: OperatorRaftCommand,
    },
}

/// `agent operator raft list-peers`
#[derive(Debug, Subcommand)]
pub enum OperatorRaftCommand {
    /// List the Raft servers: node, id, address, state, voter.
    ListPeers {
        /// Ask any server, not only the leader.
        #[arg(long)]
        stale: bool,
    },
}

/// `agent join [--wan] ADDR...`
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Join the WAN pool (servers only).
    #[arg(long)]
    pub wan: bool,
    /// Gossip addresses (IP:PORT; the port defaults to 8301) of agents to join.
    #[arg(required = true, value_name = "ADDR")]
    pub addrs: Vec<String>,
}

/// `agent members [--wan] [--status S] [--detailed]`
#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// List the WAN pool (servers only).
    #[arg(long)]
    pub wan: bool,
    /// Only members whose status (alive, leaving, left, failed) matches this regular
    /// expression.
    #[arg(long, value_name = "REGEX")]
    pub status: Option<String>,
    /// Show every tag of each member.
    #[arg(long)]
    pub detailed: bool,
}

/// `agent force-leave NODE`
#[derive(Debug, Args)]
pub struct ForceLeaveArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// The failed member's node name.
    pub node: String,
}

/// Flags of `agent run` (DESIGN §3).
///
/// A setting left out here may come from a `--config` file, so the fields hold only what
/// was typed: the defaults are applied by [`crate::config::Config::build`].
#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// TOML or JSON file of settings (repeatable), by extension (.toml, .json). Keys are
    /// the flag names with underscores (`data_dir`, `join`, ...; `event_handlers` for
    /// --event-handler) plus `services` and `checks`. Flags on the command line override the files; later
    /// files override earlier ones; lists (join, join_wan, event_handlers, services,
    /// checks) add up. Relative paths in a file are relative to the file's directory.
    #[arg(long, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Single server that bootstraps itself, with a temporary data dir (unless
    /// --data-dir is given) and a CA and certificate made on the fly.
    #[arg(long)]
    pub dev: bool,
    /// Node name, unique in its datacenter (default: host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Datacenter name [default: dc1].
    #[arg(long)]
    pub dc: Option<String>,
    /// Directory for persistent state (required unless --dev).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run as a Raft server.
    #[arg(long)]
    pub server: bool,
    /// Number of servers to see before Raft bootstraps.
    #[arg(long, value_name = "N")]
    pub bootstrap_expect: Option<u32>,
    /// LAN QUIC address (gossip and RPC) [default: 0.0.0.0:8301; 127.0.0.1:8301 with --dev].
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// Address other agents use to reach this one [default: the bind address].
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Option<SocketAddr>,
    /// WAN QUIC address, servers only [default: the bind IP, port 8302].
    #[arg(long, value_name = "IP:PORT")]
    pub wan_bind: Option<SocketAddr>,
    /// Address servers of other datacenters use to reach this one [default: the WAN bind
    /// address, or the advertised IP with the WAN port when that is 0.0.0.0].
    #[arg(long, value_name = "IP:PORT")]
    pub advertise_wan: Option<SocketAddr>,
    /// HTTP API address [default: 127.0.0.1:8500].
    #[arg(long, value_name = "IP:PORT")]
    pub http: Option<SocketAddr>,
    /// DNS interface address [default: 127.0.0.1:8600].
    #[arg(long, value_name = "IP:PORT")]
    pub dns: Option<SocketAddr>,
    /// LAN peer to join at start (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// WAN peer to join at start (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub join_wan: Vec<String>,
    /// PEM file of the cluster CA.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this node's certificate.
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of this node's private key.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// A server failed for longer than this (a Go duration: 10m, 90s) is removed from
    /// the Raft voters by the leader, never below --bootstrap-expect voters
    /// [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dead_server_cleanup: Option<std::time::Duration>,
    /// Raft log entries between snapshots (servers) [default: 10000].
    #[arg(long, value_name = "N")]
    pub raft_snapshot_threshold: Option<u64>,
    /// Raft log entries kept behind a snapshot, for followers that lag a little
    /// [default: 1000].
    #[arg(long, value_name = "N")]
    pub raft_trailing_logs: Option<u64>,
    /// Command run with `sh -c` on every event that matches (repeatable):
    /// `[TYPE[:NAME][,...]=]COMMAND`, e.g. `user:deploy=/usr/local/bin/deploy`,
    /// `member-join,member-leave=notify`, or a bare command for every event. Types: `user`,
    /// `user:NAME`, `member`, `member-join`, `member-leave`, `member-failed`,
    /// `member-update`, `member-reap`, `kv`, `health`, `*`. The event is on stdin (a user
    /// event's payload), its type in `AGENT_EVENT`.
    #[arg(long, value_name = "[TYPE[:NAME][,...]=]COMMAND")]
    pub event_handler: Vec<String>,
    /// A handler still running after this long is killed (a Go duration: 30s, 2m)
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub event_handler_timeout: Option<std::time::Duration>,
    /// Largest name plus payload of a user event this agent fires, in bytes (at most 1000)
    /// [default: 512].
    #[arg(long, value_name = "BYTES")]
    pub event_size_limit: Option<usize>,
    /// Let the HTTP API register script checks (`Args`), which run commands as the
    /// agent's user; script checks of config files run without it.
    #[arg(long)]
    pub enable_script_checks: bool,
    /// Log filter (tracing's EnvFilter syntax), overridden by RUST_LOG [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::http::parse_go_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 10m, 90s or 1h30m"))
}

/// How to reach the local agent's HTTP API.
#[derive(Debug, Args, Clone)]
pub struct HttpArgs {
    /// Address of the agent's HTTP API.
    #[arg(long, env = "AGENT_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR, global = true)]
    pub http_addr: String,
}

/// `agent kv ...`
#[derive(Debug, Args)]
pub struct KvArgs {
    /// Where the agent listens.
    #[command(flatten)]
    pub http: HttpArgs,
    /// Read and write the KV store of this datacenter instead of the agent's own.
    #[arg(long, value_name = "DC", global = true)]
    pub dc: Option<String>,
    /// The KV operation.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// The KV operations.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write VALUE at KEY ("-" reads the value from stdin; no VALUE writes an empty one).
    Put {
        /// The key.
        key: String,
        /// The value, or "-" for stdin.
        value: Option<String>,
        /// Check-and-set: write only if the key's ModifyIndex is --modify-index
        /// (0: only if the key does not exist).
        #[arg(long, requires = "modify_index")]
        cas: bool,
        /// The ModifyIndex that --cas expects.
        #[arg(long, value_name = "N")]
        modify_index: Option<u64>,
        /// Opaque 64-bit flags stored with the key.
        #[arg(long, value_name = "N", default_value_t = 0)]
        flags: u64,
    },
    /// Print the value at KEY.
    Get {
        /// The key (or prefix with --recurse / --keys).
        key: String,
        /// Print every key under the prefix with its value.
        #[arg(long)]
        recurse: bool,
        /// Print only the key names under the prefix, rolled up at "/".
        #[arg(long)]
        keys: bool,
        /// Print every field of the entry.
        #[arg(long)]
        detailed: bool,
    },
    /// Delete KEY (or every key under the prefix with --recurse).
    Delete {
        /// The key or prefix.
        key: String,
        /// Delete every key under the prefix.
        #[arg(long)]
        recurse: bool,
    },
    /// Print every key under PREFIX as JSON (`[{"key", "flags", "value"}]`, value in
    /// base64), the format `kv import` reads.
    Export {
        /// The prefix (all keys when absent).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Write the keys of a JSON export (a file, or "-" for stdin).
    Import {
        /// The file, or "-".
        file: String,
    },
}

/// `agent tls ...`
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// What to create.
    #[command(subcommand)]
    pub command: TlsCommand,
}

/// `agent tls ca|cert`
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// The cluster certificate authority.
    Ca {
        /// The CA action.
        #[command(subcommand)]
        command: TlsCaCommand,
    },
    /// Node certificates signed by the cluster CA.
    Cert {
        /// The certificate action.
        #[command(subcommand)]
        command: TlsCertCommand,
    },
}

/// `agent tls ca create`
#[derive(Debug, Subcommand)]
pub enum TlsCaCommand {
    /// Write agent-ca.pem and agent-ca-key.pem.
    Create {
        /// Directory to write into.
        #[arg(long, value_name = "D", default_value = ".")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = crate::tls::CA_DAYS)]
        days: u32,
    },
}

/// `agent tls cert create`
#[derive(Debug, Subcommand)]
pub enum TlsCertCommand {
    /// Write NAME.pem and NAME-key.pem signed by the CA in --dir.
    Create {
        /// A server certificate (SAN server.<dc>.agent, localhost, 127.0.0.1).
        #[arg(long, conflicts_with = "client", required_unless_present = "client")]
        server: bool,
        /// A client certificate (SAN client.<dc>.agent).
        #[arg(long)]
        client: bool,
        /// Datacenter of the node.
        #[arg(long)]
        dc: String,
        /// Node name carried by the certificate (default: host name).
        #[arg(long)]
        node: Option<String>,
        /// Base name of the files to write.
        #[arg(long, value_name = "NAME")]
        out: String,
        /// Directory holding the CA, where the files are written.
        #[arg(long, value_name = "D", default_value = ".")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = crate::tls::LEAF_DAYS)]
        days: u32,
    },
}
