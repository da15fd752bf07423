//! The agent's validated configuration.
//!
//! [`Config::build`] merges the flags of `agent run` with the config files read before
//! ([`file`]), checks the result and fills in defaults; it does no I/O, so every rule
//! here is tested without a file system or a socket. Building the components from a
//! `Config` is [`crate::run`]'s job.
//!
//! Precedence: a flag given on the command line wins over every file; a later file wins
//! over an earlier one; lists (`join`, `join_wan`, `event_handlers`, `services`) add up,
//! files in order and then the flags. Defaults apply to what nobody set.

pub mod file;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cli::RunArgs;
use crate::handlers::{HandlerSpec, SpecError};
use crate::local::{CheckDefinition, InvalidService, MAX_CHECKS, MAX_SERVICES, ServiceDefinition};

pub use file::ConfigFile;

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
    /// Address servers of other datacenters use to reach this one (port 0: the port
    /// bound).
    pub advertise_wan: SocketAddr,
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
    /// Services defined for this agent (from config files), checked, with unique ids.
    pub services: Vec<ServiceDefinition>,
    /// Checks defined for this agent (from config files, those of services included),
    /// checked, with unique ids, each of the node or of one of `services`.
    pub checks: Vec<CheckDefinition>,
    /// Whether the HTTP API may register script checks.
    pub enable_script_checks: bool,
    /// Log filter (tracing's EnvFilter syntax).
    pub log_level: String,
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
    /// A service definition that cannot be used.
    #[error("config file {file}: service {service}: {reason}")]
    Service {
        /// The file defining it.
        file: PathBuf,
        /// Its name (quoted), or its position in the file when it has none.
        service: String,
        /// What is wrong.
        reason: InvalidService,
    },
    /// Two services with the same id (the name, when no id is given).
    #[error(
        "service id {id:?} is defined twice ({}): give the services distinct ids",
        if first == second {
            format!("in {}", first.display())
        } else {
            format!("in {} and in {}", first.display(), second.display())
        }
    )]
    DuplicateServiceId {
        /// The id.
        id: String,
        /// The file of the first definition.
        first: PathBuf,
        /// The file of the second.
        second: PathBuf,
    },
    /// A check definition that cannot be used.
    #[error("config file {file}: check {check:?}: {reason}")]
    Check {
        /// The file defining it.
        file: PathBuf,
        /// Its id.
        check: String,
        /// What is wrong.
        reason: String,
    },
    /// More services or checks than an agent holds.
    #[error("the config files define {count} {what}, more than {max}")]
    TooMany {
        /// `services` or `checks`.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Default LAN QUIC port.
pub const DEFAULT_LAN_PORT: u16 = 8301;
/// Default datacenter.
pub const DEFAULT_DC: &str = "dc1";
/// Default WAN QUIC port (on the bind IP).
pub const DEFAULT_WAN_PORT: u16 = 8302;
/// Default HTTP API address.
pub const DEFAULT_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8500);
/// Default DNS address.
pub const DEFAULT_DNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8600);
/// Default time after which a failed server leaves the Raft voters.
pub const DEFAULT_DEAD_SERVER_CLEANUP: Duration = Duration::from_secs(10 * 60);
/// Default Raft log entries between snapshots.
pub const DEFAULT_RAFT_SNAPSHOT_THRESHOLD: u64 = 10_000;
/// Default Raft log entries kept behind a snapshot.
pub const DEFAULT_RAFT_TRAILING_LOGS: u64 = 1_000;
/// Default time an event handler may run.
pub const DEFAULT_EVENT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

impl Config {
    /// Validates `args` alone, as if no config file was given.
    pub fn from_args(args: &RunArgs, host_name: &str) -> Result<Config, ConfigError> {
        Config::build(args, &[], host_name)
    }

    /// Merges `args` over `files` (in the order given), validates the result and fills
    /// in the defaults. `host_name` is the default node name (the caller reads it from
    /// the system).
    pub fn build(
        args: &RunArgs,
        files: &[ConfigFile],
        host_name: &str,
    ) -> Result<Config, ConfigError> {
        let node = pick(&args.node, files, |f| &f.node).unwrap_or_else(|| host_name.to_string());
        let dc = pick(&args.dc, files, |f| &f.dc).unwrap_or_else(|| DEFAULT_DC.to_string());
        check_name("node name", &node, is_node_char)?;
        check_name("datacenter", &dc, is_dc_char)?;

        let data_dir = match (pick(&args.data_dir, files, |f| &f.data_dir), args.dev) {
            (Some(dir), _) => DataDir::Persistent(dir),
            (None, true) => DataDir::Temporary,
            (None, false) => return Err(ConfigError::MissingDataDir),
        };

        let tls = match (
            pick(&args.ca_file, files, |f| &f.ca_file),
            pick(&args.cert_file, files, |f| &f.cert_file),
            pick(&args.key_file, files, |f| &f.key_file),
        ) {
            (Some(ca), Some(cert), Some(key)) => TlsSource::Files { ca, cert, key },
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
        let bind = pick(&args.bind, files, |f| &f.bind)
            .unwrap_or(SocketAddr::new(default_ip, DEFAULT_LAN_PORT));
        let advertise = pick(&args.advertise, files, |f| &f.advertise).unwrap_or(bind);
        if advertise.ip().is_unspecified() {
            return Err(ConfigError::UnspecifiedAdvertise(advertise));
        }
        // The WAN endpoint binds the LAN's IP by default (port 0 stays 0, for tests).
        let wan_bind = pick(&args.wan_bind, files, |f| &f.wan_bind).unwrap_or_else(|| {
            let port = if bind.port() == 0 {
                0
            } else {
                DEFAULT_WAN_PORT
            };
            SocketAddr::new(bind.ip(), port)
        });
        let advertise_wan =
            pick(&args.advertise_wan, files, |f| &f.advertise_wan).unwrap_or_else(|| {
                if wan_bind.ip().is_unspecified() {
                    SocketAddr::new(advertise.ip(), wan_bind.port())
                } else {
                    wan_bind
                }
            });
        if advertise_wan.ip().is_unspecified() {
            return Err(ConfigError::UnspecifiedAdvertise(advertise_wan));
        }

        // `--server` can only say yes; a file can say either.
        let server =
            args.server || args.dev || files.iter().rev().find_map(|f| f.server).unwrap_or(false);
        let bootstrap_expect = match (
            pick(&args.bootstrap_expect, files, |f| &f.bootstrap_expect),
            args.dev,
        ) {
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

        let join = concat(
            files,
            |f| &f.join,
            parse_join(&args.join, DEFAULT_LAN_PORT)?,
        );
        let join_wan = concat(
            files,
            |f| &f.join_wan,
            parse_join(&args.join_wan, DEFAULT_WAN_PORT)?,
        );
        let event_handlers = concat(files, |f| &f.event_handlers, args.event_handler.clone());
        let (services, checks) = services_and_checks(files)?;
        let event_size_limit = pick(&args.event_size_limit, files, |f| &f.event_size_limit)
            .unwrap_or(events::user::DEFAULT_MAX_EVENT_SIZE);

        Ok(Config {
            dev: args.dev,
            node,
            dc,
            data_dir,
            server,
            bootstrap_expect,
            bind,
            advertise,
            wan_bind,
            advertise_wan,
            http: pick(&args.http, files, |f| &f.http).unwrap_or(DEFAULT_HTTP),
            dns: pick(&args.dns, files, |f| &f.dns).unwrap_or(DEFAULT_DNS),
            join,
            join_wan,
            tls,
            dead_server_cleanup: pick(&args.dead_server_cleanup, files, |f| &f.dead_server_cleanup)
                .unwrap_or(DEFAULT_DEAD_SERVER_CLEANUP),
            raft_snapshot_threshold: pick(&args.raft_snapshot_threshold, files, |f| {
                &f.raft_snapshot_threshold
            })
            .unwrap_or(DEFAULT_RAFT_SNAPSHOT_THRESHOLD)
            .max(1),
            raft_trailing_logs: pick(&args.raft_trailing_logs, files, |f| &f.raft_trailing_logs)
                .unwrap_or(DEFAULT_RAFT_TRAILING_LOGS),
            event_handlers: parse_handlers(&event_handlers)?,
            event_handler_timeout: pick(&args.event_handler_timeout, files, |f| {
                &f.event_handler_timeout
            })
            .unwrap_or(DEFAULT_EVENT_HANDLER_TIMEOUT),
            event_size_limit: events::SizeLimit::new(event_size_limit)
                .map_err(|e| ConfigError::EventSizeLimit(e.to_string()))?,
            services,
            checks,
            enable_script_checks: args.enable_script_checks
                || files
                    .iter()
                    .rev()
                    .find_map(|f| f.enable_script_checks)
                    .unwrap_or(false),
            log_level: pick(&args.log_level, files, |f| &f.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string()),
        })
    }
}

/// The flag if given, else the value of the last file that sets it.
fn pick<T: Clone>(
    flag: &Option<T>,
    files: &[ConfigFile],
    setting: impl Fn(&ConfigFile) -> &Option<T>,
) -> Option<T> {
    flag.clone()
        .or_else(|| files.iter().rev().find_map(|f| setting(f).clone()))
}

/// The list of every file in order, then the flags'.
fn concat<T: Clone>(
    files: &[ConfigFile],
    setting: impl Fn(&ConfigFile) -> &Vec<T>,
    flags: Vec<T>,
) -> Vec<T> {
    files
        .iter()
        .flat_map(|f| setting(f).iter().cloned())
        .chain(flags)
        .collect()
}

/// The services and checks of every file, each checked, their ids unique across the
/// files, every check of the node or of one of the services.
fn services_and_checks(
    files: &[ConfigFile],
) -> Result<(Vec<ServiceDefinition>, Vec<CheckDefinition>), ConfigError> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    let mut services = Vec::new();
    let mut checks: Vec<(&Path, &CheckDefinition)> = Vec::new();
    for file in files {
        for (i, registration) in file.services.iter().enumerate() {
            let service = &registration.service;
            service.check().map_err(|reason| ConfigError::Service {
                file: file.path.clone(),
                service: if service.service.is_empty() {
                    format!("#{}", i + 1)
                } else {
                    format!("{:?}", service.service)
                },
                reason,
            })?;
            if let Some(first) = seen.insert(&service.id, &file.path) {
                return Err(ConfigError::DuplicateServiceId {
                    id: service.id.clone(),
                    first: first.to_path_buf(),
                    second: file.path.clone(),
                });
            }
            services.push(service.clone());
            checks.extend(registration.checks.iter().map(|c| (file.path.as_path(), c)));
        }
        checks.extend(file.checks.iter().map(|c| (file.path.as_path(), c)));
    }
    for (what, count, max) in [
        ("services", services.len(), MAX_SERVICES),
        ("checks", checks.len(), MAX_CHECKS),
    ] {
        if count > max {
            return Err(ConfigError::TooMany { what, count, max });
        }
    }
    let mut check_files: HashMap<&str, &Path> = HashMap::new();
    for (file, check) in &checks {
        let error = |reason: String| ConfigError::Check {
            file: file.to_path_buf(),
            check: check.id.clone(),
            reason,
        };
        check.check().map_err(|e| error(e.to_string()))?;
        if !check.service_id.is_empty() && !seen.contains_key(check.service_id.as_str()) {
            return Err(error(format!(
                "its service_id {:?} is no service of the config files",
                check.service_id
            )));
        }
        if let Some(first) = check_files.insert(&check.id, file) {
            return Err(error(format!(
                "the id is defined twice (in {} and in {}): give the checks distinct ids",
                first.display(),
                file.display()
            )));
        }
    }
    let checks = checks.into_iter().map(|(_, c)| c.clone()).collect();
    Ok((services, checks))
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

fn parse_join(addrs: &[String], default_port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
    addrs
        .iter()
        .map(|text| {
            parse_addr_or_ip(text, default_port)
                .ok_or_else(|| ConfigError::JoinAddress(text.clone()))
        })
        .collect()
}

/// `IP:PORT`, or an IP alone with the default LAN port (`[::1]` for IPv6).
pub fn parse_gossip_addr(text: &str) -> Option<SocketAddr> {
    parse_addr_or_ip(text, DEFAULT_LAN_PORT)
}

/// `IP:PORT`, or an IP alone with the default WAN port (`[::1]` for IPv6).
pub fn parse_wan_addr(text: &str) -> Option<SocketAddr> {
    parse_addr_or_ip(text, DEFAULT_WAN_PORT)
}

fn parse_addr_or_ip(text: &str, default_port: u16) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
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
        args.dc = Some("dc.1".into());
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

    /// A TOML config file at `path`.
    fn file(path: &str, text: &str) -> ConfigFile {
        ConfigFile::parse(text, file::Format::Toml, Path::new(path)).unwrap()
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let argv = ["agent", "run"].iter().chain(argv);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_to_what_nobody_set() {
        let config = Config::from_args(&dev(), "h").unwrap();
        assert_eq!(config.dc, DEFAULT_DC);
        // A dev agent binds 127.0.0.1:8301, so its WAN endpoint is 127.0.0.1:8302.
        assert_eq!(config.wan_bind, "127.0.0.1:8302".parse().unwrap());
        assert_eq!(config.advertise_wan, config.wan_bind);
        assert_eq!(config.http, DEFAULT_HTTP);
        assert_eq!(config.dns, DEFAULT_DNS);
        assert_eq!(config.dead_server_cleanup, DEFAULT_DEAD_SERVER_CLEANUP);
        assert_eq!(
            config.raft_snapshot_threshold,
            DEFAULT_RAFT_SNAPSHOT_THRESHOLD
        );
        assert_eq!(config.raft_trailing_logs, DEFAULT_RAFT_TRAILING_LOGS);
        assert_eq!(config.event_handler_timeout, DEFAULT_EVENT_HANDLER_TIMEOUT);
        assert_eq!(config.event_size_limit, events::SizeLimit::default());
        assert_eq!(config.log_level, DEFAULT_LOG_LEVEL);
        assert!(config.join.is_empty() && config.event_handlers.is_empty());
        assert!(config.services.is_empty());
    }

    #[test]
    fn run_help_states_the_defaults_that_config_applies() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for default in [
            DEFAULT_DC.to_string(),
            format!("the bind IP, port {DEFAULT_WAN_PORT}"),
            DEFAULT_HTTP.to_string(),
            DEFAULT_DNS.to_string(),
            "10m".to_string(),
            DEFAULT_RAFT_SNAPSHOT_THRESHOLD.to_string(),
            DEFAULT_RAFT_TRAILING_LOGS.to_string(),
            "30s".to_string(),
            events::user::DEFAULT_MAX_EVENT_SIZE.to_string(),
            DEFAULT_LOG_LEVEL.to_string(),
        ] {
            assert!(
                help.contains(&format!("[default: {default}]")),
                "the help does not say [default: {default}]:\n{help}"
            );
        }
        assert_eq!(crate::cli::DEFAULT_HTTP_ADDR.parse(), Ok(DEFAULT_HTTP));
        assert_eq!(DEFAULT_DEAD_SERVER_CLEANUP, Duration::from_secs(600));
        assert_eq!(DEFAULT_EVENT_HANDLER_TIMEOUT, Duration::from_secs(30));
        assert!(help.contains("relative to the file's directory"), "{help}");
    }

    #[test]
    fn files_fill_in_what_the_flags_leave_out() {
        let a = file(
            "/etc/agent/a.toml",
            r#"
                node = "from-file"
                dc = "east"
                data_dir = "data"
                server = true
                bootstrap_expect = 3
                advertise = "10.0.0.1:8301"
                ca_file = "ca.pem"
                cert_file = "n.pem"
                key_file = "n-key.pem"
                http = "127.0.0.1:9500"
                dead_server_cleanup = "1m"
                raft_trailing_logs = 7
                event_handler_timeout = "5s"
                event_size_limit = 1000
                log_level = "debug"
            "#,
        );
        let config = Config::build(&run_args(&[]), &[a], "host").unwrap();
        assert_eq!(config.node, "from-file");
        assert_eq!(config.dc, "east");
        assert_eq!(
            config.data_dir,
            DataDir::Persistent("/etc/agent/data".into())
        );
        assert_eq!(
            config.tls,
            TlsSource::Files {
                ca: "/etc/agent/ca.pem".into(),
                cert: "/etc/agent/n.pem".into(),
                key: "/etc/agent/n-key.pem".into(),
            }
        );
        assert!(config.server);
        assert_eq!(config.bootstrap_expect, Some(3));
        assert_eq!(config.http, "127.0.0.1:9500".parse().unwrap());
        assert_eq!(config.dns, DEFAULT_DNS);
        assert_eq!(config.dead_server_cleanup, Duration::from_secs(60));
        assert_eq!(config.raft_trailing_logs, 7);
        assert_eq!(config.event_handler_timeout, Duration::from_secs(5));
        assert_eq!(config.event_size_limit.get(), 1000);
        assert_eq!(config.log_level, "debug");
    }

    #[test]
    fn flags_win_over_files_and_later_files_over_earlier_ones() {
        let a = file(
            "/a/a.toml",
            "node = \"a\"\ndc = \"dc-a\"\nhttp = \"127.0.0.1:1001\"\nlog_level = \"warn\"\ndata_dir = \"/data-a\"",
        );
        let b = file("/b/b.toml", "dc = \"dc-b\"\nhttp = \"127.0.0.1:1002\"");
        let files = [a, b];

        let config = Config::build(&run_args(&["--dev"]), &files, "h").unwrap();
        assert_eq!(config.node, "a", "only the first file sets it");
        assert_eq!(config.dc, "dc-b", "the later file wins");
        assert_eq!(config.http, "127.0.0.1:1002".parse().unwrap());
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.data_dir, DataDir::Persistent("/data-a".into()));

        // Flags win, including flags whose value equals the default.
        let args = run_args(&[
            "--dev",
            "--node",
            "flag",
            "--dc",
            "dc1",
            "--http",
            "127.0.0.1:8500",
            "--log-level",
            "info",
            "--data-dir",
            "rel",
        ]);
        let config = Config::build(&args, &files, "h").unwrap();
        assert_eq!(config.node, "flag");
        assert_eq!(config.dc, "dc1");
        assert_eq!(config.http, DEFAULT_HTTP);
        assert_eq!(config.log_level, "info");
        assert_eq!(
            config.data_dir,
            DataDir::Persistent("rel".into()),
            "a relative flag stays relative to the working directory"
        );
    }

    #[test]
    fn a_file_can_turn_server_on_and_off_but_not_override_the_flag() {
        let base = "data_dir = \"/d\"\nca_file = \"/c\"\ncert_file = \"/e\"\nkey_file = \"/k\"\nadvertise = \"10.0.0.1:8301\"";
        let on = file("/on.toml", &format!("{base}\nserver = true"));
        let off = file("/off.toml", "server = false");
        let no_flags = run_args(&[]);
        assert!(
            Config::build(&no_flags, std::slice::from_ref(&on), "h")
                .unwrap()
                .server
        );
        assert!(
            !Config::build(&no_flags, &[on.clone(), off.clone()], "h")
                .unwrap()
                .server
        );
        assert!(
            Config::build(&run_args(&["--server"]), &[on, off], "h")
                .unwrap()
                .server
        );
    }

    #[test]
    fn lists_add_up_files_first_then_flags() {
        let a = file(
            "/a.toml",
            r#"
                join = ["127.0.0.2"]
                join_wan = ["127.0.1.2"]
                event_handlers = ["a"]
                [[services]]
                name = "web"
            "#,
        );
        let b = file(
            "/b.toml",
            r#"
                join = ["127.0.0.3:9000"]
                event_handlers = ["user:deploy=b"]
                [[services]]
                name = "db"
                port = 5432
            "#,
        );
        let args = run_args(&[
            "--dev",
            "--join",
            "127.0.0.4",
            "--join-wan",
            "127.0.1.4",
            "--event-handler",
            "c",
        ]);
        let config = Config::build(&args, &[a, b], "h").unwrap();
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|a| a.parse().unwrap()).collect()
        };
        assert_eq!(
            config.join,
            addrs(&["127.0.0.2:8301", "127.0.0.3:9000", "127.0.0.4:8301"])
        );
        assert_eq!(
            config.join_wan,
            addrs(&["127.0.1.2:8302", "127.0.1.4:8302"])
        );
        let handlers: Vec<&str> = config.event_handlers.iter().map(|h| h.command()).collect();
        assert_eq!(handlers, ["a", "b", "c"]);
        let ids: Vec<&str> = config.services.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["web", "db"]);
        assert_eq!(config.services[1].port, 5432);
    }

    #[test]
    fn service_errors_name_the_file_and_the_service() {
        let bad = file(
            "/etc/agent/svc.toml",
            "[[services]]\nname = \"ok\"\n[[services]]\nname = \"has space\"",
        );
        let e = Config::build(&dev(), &[bad], "h").unwrap_err();
        assert!(matches!(
            &e,
            ConfigError::Service { file, service, reason: InvalidService::BadCharacter { .. } }
                if file == Path::new("/etc/agent/svc.toml") && service == "\"has space\""
        ));
        let text = e.to_string();
        assert!(
            text.contains("/etc/agent/svc.toml") && text.contains("has space"),
            "{text}"
        );

        let unnamed = file("/u.toml", "[[services]]\nname = \"\"");
        let e = Config::build(&dev(), &[unnamed], "h").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Service { service, .. } if service == "#1"),
            "{e}"
        );

        let many_tags = file(
            "/t.toml",
            &format!(
                "[[services]]\nname = \"web\"\ntags = [{}]",
                vec!["\"t\""; 65].join(",")
            ),
        );
        assert!(matches!(
            Config::build(&dev(), &[many_tags], "h"),
            Err(ConfigError::Service {
                reason: InvalidService::TooMany { what: "tags", .. },
                ..
            })
        ));
    }

    #[test]
    fn service_ids_are_unique_across_files() {
        let a = file("/a.toml", "[[services]]\nname = \"web\"");
        let b = file("/b.toml", "[[services]]\nname = \"web\"");
        assert_eq!(
            Config::build(&dev(), &[a.clone(), b], "h"),
            Err(ConfigError::DuplicateServiceId {
                id: "web".into(),
                first: "/a.toml".into(),
                second: "/b.toml".into(),
            })
        );
        let same_file = file(
            "/c.toml",
            "[[services]]\nname = \"web\"\n[[services]]\nname = \"api\"\nid = \"web\"",
        );
        assert!(matches!(
            Config::build(&dev(), &[same_file], "h"),
            Err(ConfigError::DuplicateServiceId { .. })
        ));
        let distinct = file("/d.toml", "[[services]]\nname = \"web\"\nid = \"web-2\"");
        let config = Config::build(&dev(), &[a, distinct], "h").unwrap();
        assert_eq!(config.services.len(), 2);
    }

    #[test]
    fn checks_of_all_files_add_up_and_name_existing_services() {
        let a = file(
            "/a.toml",
            "[[services]]\nname = \"web\"\ncheck = { ttl = \"10s\" }\n[[checks]]\nname = \"disk\"\nttl = \"1m\"",
        );
        let b = file(
            "/b.toml",
            "enable_script_checks = true\n[[checks]]\nname = \"web-http\"\nservice_id = \"web\"\nhttp = \"http://127.0.0.1/\"\ninterval = \"5s\"",
        );
        let config = Config::build(&dev(), &[a.clone(), b], "h").unwrap();
        let ids: Vec<&str> = config.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:web", "disk", "web-http"]);
        assert!(config.enable_script_checks);
        assert!(
            !Config::build(&dev(), std::slice::from_ref(&a), "h")
                .unwrap()
                .enable_script_checks
        );
        let mut flag = dev();
        flag.enable_script_checks = true;
        assert!(
            Config::build(&flag, std::slice::from_ref(&a), "h")
                .unwrap()
                .enable_script_checks
        );

        let orphan = file(
            "/o.toml",
            "[[checks]]\nname = \"x\"\nservice_id = \"db\"\nttl = \"1s\"",
        );
        let e = Config::build(&dev(), &[orphan], "h").unwrap_err();
        assert!(
            e.to_string().contains("no service of the config files"),
            "{e}"
        );
        let twice = file("/t.toml", "[[checks]]\nname = \"disk\"\nttl = \"1s\"");
        let e = Config::build(&dev(), &[a, twice], "h").unwrap_err();
        assert!(e.to_string().contains("defined twice"), "{e}");
    }

    #[test]
    fn file_values_are_validated_like_flags() {
        let bad_node = file("/a.toml", "node = \"has space\"");
        assert!(matches!(
            Config::build(&dev(), &[bad_node], "h"),
            Err(ConfigError::InvalidName {
                what: "node name",
                ..
            })
        ));
        let bad_limit = file("/a.toml", "event_size_limit = 5000");
        assert!(matches!(
            Config::build(&dev(), &[bad_limit], "h"),
            Err(ConfigError::EventSizeLimit(_))
        ));
        let partial_tls = file("/a.toml", "ca_file = \"ca.pem\"");
        assert_eq!(
            Config::build(&dev(), &[partial_tls], "h"),
            Err(ConfigError::PartialTls("--cert-file"))
        );
    }
}
