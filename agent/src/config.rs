//! The agent's validated configuration.
//!
//! [`Config::from_args`] checks the flags of `agent run` and fills in defaults; it does
//! no I/O, so every rule here is tested without a file system or a socket. Building the
//! components from a `Config` is [`crate::run`]'s job.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use thiserror::Error;

use crate::cli::RunArgs;
use crate::handlers::{HandlerSpec, SpecError};

/// Where the agent keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// A directory the operator named; it outlives the process.
    Persistent(PathBuf),
    /// A fresh temporary directory removed at exit (`--dev` without `--data-dir`).
    Temporary,
}

/// Where the agent's mTLS material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files made by `agent tls`.
    Files {
        /// The cluster CA certificate.
        ca: PathBuf,
        /// This node's certificate.
        cert: PathBuf,
        /// This node's private key.
        key: PathBuf,
    },
    /// A CA and a server certificate made in memory at start (`--dev`).
    Generated,
}

/// Everything `agent run` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Development mode: a single server that bootstraps itself.
    pub dev: bool,
    /// Node name, unique in its datacenter.
    pub node: String,
    /// Datacenter.
    pub dc: String,
    /// Persistent state.
    pub data_dir: DataDir,
    /// Whether this agent is a Raft server.
    pub server: bool,
    /// Servers to see before Raft bootstraps (`--dev`: 1).
    pub bootstrap_expect: Option<u32>,
    /// LAN QUIC bind address.
    pub bind: SocketAddr,
    /// Address other agents use to reach this one.
    pub advertise: SocketAddr,
    /// WAN QUIC bind address (servers).
    pub wan_bind: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// DNS address.
    pub dns: SocketAddr,
    /// LAN peers to join at start.
    pub join: Vec<SocketAddr>,
    /// WAN peers to join at start.
    pub join_wan: Vec<SocketAddr>,
    /// mTLS material.
    pub tls: TlsSource,
    /// A server failed for longer than this is removed from the Raft voters.
    pub dead_server_cleanup: std::time::Duration,
    /// Raft log entries between snapshots.
    pub raft_snapshot_threshold: u64,
    /// Raft log entries kept behind a snapshot.
    pub raft_trailing_logs: u64,
    /// Event handlers (`[TYPE[:NAME][,...]=]COMMAND`).
    pub event_handlers: Vec<HandlerSpec>,
    /// How long an event handler may run.
    pub event_handler_timeout: std::time::Duration,
    /// Limit on the name plus payload of the user events this agent fires.
    pub event_size_limit: events::SizeLimit,
    /// Services defined for this agent (from config files).
    pub services: Vec<crate::local::ServiceDefinition>,
}

/// A flag combination that cannot run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--data-dir` is required unless `--dev`.
    #[error("--data-dir is required (or use --dev)")]
    MissingDataDir,
    /// TLS files are required unless `--dev`.
    #[error("--ca-file, --cert-file and --key-file are required (or use --dev)")]
    MissingTls,
    /// Only some of the TLS files were given.
    #[error("--ca-file, --cert-file and --key-file go together: {0} is missing")]
    PartialTls(&'static str),
    /// A name that cannot be used.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// An address that cannot be advertised.
    #[error(
        "cannot advertise the unspecified address {0}: set --advertise to an address other agents can reach"
    )]
    UnspecifiedAdvertise(SocketAddr),
    /// A join address that is not `IP` or `IP:PORT`.
    #[error("invalid join address {0:?}: want IP or IP:PORT")]
    JoinAddress(String),
    /// A user event size limit out of range.
    #[error("--event-size-limit: {0}")]
    EventSizeLimit(String),
    /// An event handler that cannot run.
    #[error("--event-handler {spec:?}: {error}")]
    EventHandler {
        /// The handler as given.
        spec: String,
        /// What is wrong with it.
        error: SpecError,
    },
    /// A bootstrap-expect value that makes no sense.
    #[error("--bootstrap-expect {0}: {1}")]
    BootstrapExpect(u32, &'static str),
}

/// Default LAN QUIC port.
pub const DEFAULT_LAN_PORT: u16 = 8301;

impl Config {
    /// Validates `args`. `host_name` is the default node name (the caller reads it from
    /// the system).
    pub fn from_args(args: &RunArgs, host_name: &str) -> Result<Config, ConfigError> {
        let node = args.node.clone().unwrap_or_else(|| host_name.to_string());
        check_name("node name", &node, is_node_char)?;
        check_name("datacenter", &args.dc, is_dc_char)?;

        let data_dir = match (&args.data_dir, args.dev) {
            (Some(dir), _) => DataDir::Persistent(dir.clone()),
            (None, true) => DataDir::Temporary,
            (None, false) => return Err(ConfigError::MissingDataDir),
        };

        let tls = match (&args.ca_file, &args.cert_file, &args.key_file) {
            (Some(ca), Some(cert), Some(key)) => TlsSource::Files {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            (None, None, None) if args.dev => TlsSource::Generated,
            (None, None, None) => return Err(ConfigError::MissingTls),
            (None, _, _) => return Err(ConfigError::PartialTls("--ca-file")),
            (_, None, _) => return Err(ConfigError::PartialTls("--cert-file")),
            (_, _, None) => return Err(ConfigError::PartialTls("--key-file")),
        };

        // A dev agent stays on loopback unless told otherwise, as Consul's does.
        let default_ip = if args.dev {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let bind = args
            .bind
            .unwrap_or(SocketAddr::new(default_ip, DEFAULT_LAN_PORT));
        let advertise = args.advertise.unwrap_or(bind);
        if advertise.ip().is_unspecified() {
            return Err(ConfigError::UnspecifiedAdvertise(advertise));
        }

        let server = args.server || args.dev;
        let bootstrap_expect = match (args.bootstrap_expect, args.dev) {
            (Some(0), _) => return Err(ConfigError::BootstrapExpect(0, "must be at least 1")),
            (Some(n), true) if n != 1 => {
                return Err(ConfigError::BootstrapExpect(
                    n,
                    "a --dev agent is a single server",
                ));
            }
            (Some(n), false) if !server => {
                return Err(ConfigError::BootstrapExpect(n, "only servers bootstrap"));
            }
            (Some(n), _) => Some(n),
            (None, true) => Some(1),
            (None, false) => None,
        };

        Ok(Config {
            dev: args.dev,
            node,
            dc: args.dc.clone(),
            data_dir,
            server,
            bootstrap_expect,
            bind,
            advertise,
            wan_bind: args.wan_bind,
            http: args.http,
            dns: args.dns,
            join: parse_join(&args.join)?,
            join_wan: parse_join(&args.join_wan)?,
            tls,
            dead_server_cleanup: args.dead_server_cleanup,
            raft_snapshot_threshold: args.raft_snapshot_threshold.max(1),
            raft_trailing_logs: args.raft_trailing_logs,
            event_handlers: parse_handlers(&args.event_handler)?,
            event_handler_timeout: args.event_handler_timeout,
            event_size_limit: events::SizeLimit::new(args.event_size_limit)
                .map_err(|e| ConfigError::EventSizeLimit(e.to_string()))?,
            services: Vec::new(),
        })
    }
}

fn parse_handlers(specs: &[String]) -> Result<Vec<HandlerSpec>, ConfigError> {
    specs
        .iter()
        .map(|text| {
            text.parse().map_err(|error| ConfigError::EventHandler {
                spec: text.clone(),
                error,
            })
        })
        .collect()
}

fn parse_join(addrs: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    addrs
        .iter()
        .map(|text| parse_gossip_addr(text).ok_or_else(|| ConfigError::JoinAddress(text.clone())))
        .collect()
}

/// `IP:PORT`, or an IP alone with the default LAN port (`[::1]` for IPv6).
pub fn parse_gossip_addr(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DEFAULT_LAN_PORT))
    })
}

fn is_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn is_dc_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
}

fn check_name(
    what: &'static str,
    value: &str,
    allowed: fn(char) -> bool,
) -> Result<(), ConfigError> {
    let invalid = |reason| ConfigError::InvalidName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > 128 {
        return Err(invalid("must be at most 128 bytes"));
    }
    if !value.chars().all(allowed) {
        return Err(invalid(
            "may hold only letters, digits, '-', '_' (and '.' in node names)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// `agent run --dev` as clap parses it, with every default filled in.
    fn dev() -> RunArgs {
        match Cli::parse_from(["agent", "run", "--dev"]).command {
            Command::Run(args) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn dev_defaults_to_loopback_temporary_generated_single_server() {
        let config = Config::from_args(&dev(), "host-a").unwrap();
        assert_eq!(config.node, "host-a");
        assert_eq!(config.data_dir, DataDir::Temporary);
        assert_eq!(config.tls, TlsSource::Generated);
        assert!(config.server);
        assert_eq!(config.bootstrap_expect, Some(1));
        assert_eq!(config.bind, "127.0.0.1:8301".parse().unwrap());
        assert_eq!(config.advertise, config.bind);
    }

    #[test]
    fn dev_honours_data_dir_and_bind() {
        let mut args = dev();
        args.data_dir = Some("/var/lib/agent".into());
        args.bind = Some("127.0.0.9:9000".parse().unwrap());
        let config = Config::from_args(&args, "h").unwrap();
        assert_eq!(
            config.data_dir,
            DataDir::Persistent("/var/lib/agent".into())
        );
        assert_eq!(config.advertise, "127.0.0.9:9000".parse().unwrap());
    }

    #[test]
    fn non_dev_needs_data_dir_and_tls() {
        let mut args = dev();
        args.dev = false;
        assert_eq!(
            Config::from_args(&args, "h"),
            Err(ConfigError::MissingDataDir)
        );
        args.data_dir = Some("d".into());
        assert_eq!(Config::from_args(&args, "h"), Err(ConfigError::MissingTls));
        args.ca_file = Some("ca.pem".into());
        assert_eq!(
            Config::from_args(&args, "h"),
            Err(ConfigError::PartialTls("--cert-file"))
        );
    }

    #[test]
    fn unspecified_bind_needs_advertise() {
        let mut args = dev();
        args.bind = Some("0.0.0.0:8301".parse().unwrap());
        assert!(matches!(
            Config::from_args(&args, "h"),
            Err(ConfigError::UnspecifiedAdvertise(_))
        ));
        args.advertise = Some("127.0.0.2:8301".parse().unwrap());
        assert!(Config::from_args(&args, "h").is_ok());
    }

    #[test]
    fn bad_names_are_refused() {
        let mut args = dev();
        args.node = Some("has space".into());
        assert!(matches!(
            Config::from_args(&args, "h"),
            Err(ConfigError::InvalidName {
                what: "node name",
                ..
            })
        ));
        let mut args = dev();
        args.dc = "dc.1".into();
        assert!(matches!(
            Config::from_args(&args, "h"),
            Err(ConfigError::InvalidName {
                what: "datacenter",
                ..
            })
        ));
        assert!(matches!(
            Config::from_args(&dev(), ""),
            Err(ConfigError::InvalidName { .. })
        ));
    }

    #[test]
    fn join_addresses_are_parsed_with_a_default_port() {
        assert_eq!(
            parse_gossip_addr("127.0.0.2:9000"),
            Some("127.0.0.2:9000".parse().unwrap())
        );
        assert_eq!(
            parse_gossip_addr("127.0.0.2"),
            Some("127.0.0.2:8301".parse().unwrap())
        );
        assert_eq!(
            parse_gossip_addr("[::1]"),
            Some("[::1]:8301".parse().unwrap())
        );
        assert_eq!(parse_gossip_addr("example.com"), None);
        let mut args = dev();
        args.join = vec!["127.0.0.3".into()];
        assert_eq!(
            Config::from_args(&args, "h").unwrap().join,
            vec!["127.0.0.3:8301".parse::<SocketAddr>().unwrap()]
        );
        args.join = vec!["nope:x".into()];
        assert_eq!(
            Config::from_args(&args, "h"),
            Err(ConfigError::JoinAddress("nope:x".into()))
        );
    }

    #[test]
    fn event_handlers_are_parsed() {
        let mut args = dev();
        args.event_handler = vec!["user:deploy=/bin/deploy".into(), "FOO=1 cmd".into()];
        let config = Config::from_args(&args, "h").unwrap();
        assert_eq!(
            config.event_handlers,
            vec![
                "user:deploy=/bin/deploy".parse::<HandlerSpec>().unwrap(),
                "FOO=1 cmd".parse::<HandlerSpec>().unwrap(),
            ]
        );
        assert_eq!(config.event_handlers[1].command(), "FOO=1 cmd");
        args.event_handler.push("member-join=".into());
        assert_eq!(
            Config::from_args(&args, "h"),
            Err(ConfigError::EventHandler {
                spec: "member-join=".into(),
                error: SpecError::EmptyCommand,
            })
        );
    }

    #[test]
    fn bootstrap_expect_rules() {
        let mut args = dev();
        args.bootstrap_expect = Some(3);
        assert!(Config::from_args(&args, "h").is_err());
        let mut args = dev();
        args.dev = false;
        args.data_dir = Some("d".into());
        args.ca_file = Some("a".into());
        args.cert_file = Some("b".into());
        args.key_file = Some("c".into());
        args.advertise = Some("10.0.0.1:8301".parse().unwrap());
        args.bootstrap_expect = Some(3);
        assert!(
            Config::from_args(&args, "h").is_err(),
            "a client cannot bootstrap"
        );
        args.server = true;
        assert_eq!(
            Config::from_args(&args, "h").unwrap().bootstrap_expect,
            Some(3)
        );
    }
}
