//! Config files of `agent run --config FILE`: TOML or JSON holding the settings of the
//! flags, plus the `services` of this host.
//!
//! The keys are the flag names with underscores (`data_dir`, `join_wan`, ...), except
//! `event_handlers` for the repeatable `--event-handler`; `dev` stays on the command line.
//! A key this agent does not know is an error. Relative paths (`data_dir`, `ca_file`,
//! `cert_file`, `key_file`) are relative to the file's directory.
//!
//! ```toml
//! node = "web-1"
//! dc = "east"
//! data_dir = "data"            # next to this file
//! join = ["10.0.0.2", "10.0.0.3:8301"]
//! dead_server_cleanup = "30m"
//! event_handlers = ["user:deploy=/usr/local/bin/deploy"]
//!
//! [[services]]
//! name = "web"
//! id = "web-8080"              # the name when left out
//! tags = ["v2", "primary"]
//! port = 8080
//! meta = { version = "2.1" }
//! check = { http = "http://127.0.0.1:8080/health", interval = "10s" }
//!
//! [[checks]]
//! name = "disk"
//! args = ["/usr/local/bin/check-disk", "/var"]
//! interval = "30s"
//! ```
//!
//! Services may carry a `check` or `checks`; top-level `checks` are the node's, or a
//! service's with `service_id`. Service and check keys are also accepted in any case
//! (`Name`, `ID`, `Tags`, `ServiceID`, as Consul's JSON has them); see
//! [`crate::local::parse`]. [`ConfigFile::parse`] is pure; [`ConfigFile::read`] is the step that touches
//! the file system. [`super::Config::build`] merges the files with the flags.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use thiserror::Error;

#[cfg(test)]
use crate::local::ServiceDefinition;
use crate::local::{CheckDefinition, Consul, ServiceRegistration};

/// Largest config file read, in bytes (1 MiB).
pub const MAX_FILE_SIZE: u64 = 1 << 20;

/// The syntax of a config file, told by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`
    Toml,
    /// `.json`
    Json,
}

impl Format {
    /// The format of `path` by its extension (`.toml` or `.json`, in any case).
    pub fn of(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?;
        if extension.eq_ignore_ascii_case("toml") {
            Some(Format::Toml)
        } else if extension.eq_ignore_ascii_case("json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// A config file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// Neither `.toml` nor `.json`.
    #[error("config file {0}: unknown format, the name must end in .toml or .json")]
    Format(PathBuf),
    /// Opening or reading failed.
    #[error("config file {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Larger than [`MAX_FILE_SIZE`].
    #[error("config file {0}: larger than {MAX_FILE_SIZE} bytes")]
    TooLarge(PathBuf),
    /// Not UTF-8 text.
    #[error("config file {0}: not UTF-8 text")]
    NotUtf8(PathBuf),
    /// A syntax error, an unknown key or a value of the wrong type, as the parser tells
    /// it (with the line and column).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

/// The settings of one config file; `None` and empty lists where the file is silent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the file was read from (named in errors).
    #[serde(skip)]
    pub path: PathBuf,
    /// `node`
    pub node: Option<String>,
    /// `dc`
    pub dc: Option<String>,
    /// `data_dir`, resolved against the file's directory.
    #[serde(default, deserialize_with = "path")]
    pub data_dir: Option<PathBuf>,
    /// `server`
    pub server: Option<bool>,
    /// `bootstrap_expect`
    pub bootstrap_expect: Option<u32>,
    /// `bind`
    pub bind: Option<SocketAddr>,
    /// `advertise`
    pub advertise: Option<SocketAddr>,
    /// `wan_bind`
    pub wan_bind: Option<SocketAddr>,
    /// `advertise_wan`
    pub advertise_wan: Option<SocketAddr>,
    /// `http`
    pub http: Option<SocketAddr>,
    /// `dns`
    pub dns: Option<SocketAddr>,
    /// `join`: `IP` or `IP:PORT` strings.
    #[serde(default, deserialize_with = "gossip_addrs")]
    pub join: Vec<SocketAddr>,
    /// `join_wan`: `IP` (port 8302) or `IP:PORT` strings.
    #[serde(default, deserialize_with = "wan_addrs")]
    pub join_wan: Vec<SocketAddr>,
    /// `ca_file`, resolved against the file's directory.
    #[serde(default, deserialize_with = "path")]
    pub ca_file: Option<PathBuf>,
    /// `cert_file`, resolved against the file's directory.
    #[serde(default, deserialize_with = "path")]
    pub cert_file: Option<PathBuf>,
    /// `key_file`, resolved against the file's directory.
    #[serde(default, deserialize_with = "path")]
    pub key_file: Option<PathBuf>,
    /// `dead_server_cleanup`: a Go duration string.
    #[serde(default, deserialize_with = "duration")]
    pub dead_server_cleanup: Option<Duration>,
    /// `raft_snapshot_threshold`
    pub raft_snapshot_threshold: Option<u64>,
    /// `raft_trailing_logs`
    pub raft_trailing_logs: Option<u64>,
    /// `log_level`
    pub log_level: Option<String>,
    /// `event_handlers`: strings as `--event-handler` takes them.
    #[serde(default)]
    pub event_handlers: Vec<String>,
    /// `event_handler_timeout`: a Go duration string.
    #[serde(default, deserialize_with = "duration")]
    pub event_handler_timeout: Option<Duration>,
    /// `event_size_limit`
    pub event_size_limit: Option<usize>,
    /// `services` with their checks, not yet checked
    /// ([`crate::local::ServiceDefinition::check`]).
    #[serde(default, deserialize_with = "services")]
    pub services: Vec<ServiceRegistration>,
    /// `checks` of the node or of a service of the config (`service_id`).
    #[serde(default, deserialize_with = "checks")]
    pub checks: Vec<CheckDefinition>,
    /// `enable_script_checks`: whether the HTTP API may register script checks.
    pub enable_script_checks: Option<bool>,
}

impl ConfigFile {
    /// Parses `text` as a file of `format` read from `path`, and resolves its relative
    /// paths against the directory of `path`. No I/O.
    pub fn parse(text: &str, format: Format, path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let parsed = match format {
            Format::Toml => toml::from_str::<ConfigFile>(text).map_err(|e| e.to_string()),
            Format::Json => serde_json::from_str::<ConfigFile>(text).map_err(|e| e.to_string()),
        };
        let mut file = parsed.map_err(|message| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: message.trim_end().to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        for setting in [
            &mut file.data_dir,
            &mut file.ca_file,
            &mut file.cert_file,
            &mut file.key_file,
        ]
        .into_iter()
        .flatten()
        {
            if setting.is_relative() {
                *setting = dir.join(&*setting);
            }
        }
        file.path = path.to_path_buf();
        Ok(file)
    }

    /// Reads and parses the file at `path`, refusing files above [`MAX_FILE_SIZE`]
    /// before parsing them.
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigFileError> {
        let format = Format::of(path).ok_or_else(|| ConfigFileError::Format(path.to_path_buf()))?;
        let io = |source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() > MAX_FILE_SIZE {
            return Err(ConfigFileError::TooLarge(path.to_path_buf()));
        }
        // Bounded again while reading: the size of a device or a growing file lies.
        let mut bytes = Vec::new();
        file.take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(ConfigFileError::TooLarge(path.to_path_buf()));
        }
        let text =
            String::from_utf8(bytes).map_err(|_| ConfigFileError::NotUtf8(path.to_path_buf()))?;
        Self::parse(&text, format, path)
    }

    /// Reads every file of `paths`, in order.
    pub fn read_all(paths: &[PathBuf]) -> Result<Vec<ConfigFile>, ConfigFileError> {
        paths.iter().map(|path| Self::read(path)).collect()
    }
}

fn path<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<PathBuf>, D::Error> {
    match Option::<PathBuf>::deserialize(deserializer)? {
        Some(path) if path.as_os_str().is_empty() => {
            Err(de::Error::invalid_value(de::Unexpected::Str(""), &"a path"))
        }
        other => Ok(other),
    }
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    crate::http::parse_go_duration(&text)
        .map(Some)
        .ok_or_else(|| {
            de::Error::invalid_value(
                de::Unexpected::Str(&text),
                &"a duration like \"10m\", \"90s\" or \"1h30m\"",
            )
        })
}

fn gossip_addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    addrs(deserializer, super::parse_gossip_addr)
}

fn wan_addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SocketAddr>, D::Error> {
    addrs(deserializer, super::parse_wan_addr)
}

fn addrs<'de, D: Deserializer<'de>>(
    deserializer: D,
    parse: fn(&str) -> Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            parse(text).ok_or_else(|| {
                de::Error::invalid_value(de::Unexpected::Str(text), &"IP or IP:PORT")
            })
        })
        .collect()
}

fn services<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ServiceRegistration>, D::Error> {
    Ok(
        Vec::<Consul<ServiceRegistration, true>>::deserialize(deserializer)?
            .into_iter()
            .map(|service| service.0)
            .collect(),
    )
}

fn checks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<CheckDefinition>, D::Error> {
    Ok(
        Vec::<Consul<CheckDefinition, true>>::deserialize(deserializer)?
            .into_iter()
            .map(|check| check.0)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> Result<ConfigFile, ConfigFileError> {
        ConfigFile::parse(text, Format::Toml, Path::new("/etc/agent/a.toml"))
    }

    fn json(text: &str) -> Result<ConfigFile, ConfigFileError> {
        ConfigFile::parse(text, Format::Json, Path::new("/etc/agent/a.json"))
    }

    fn message(result: Result<ConfigFile, ConfigFileError>) -> String {
        match result {
            Ok(file) => panic!("accepted: {file:?}"),
            Err(e) => e.to_string(),
        }
    }

    const FULL_TOML: &str = r#"
        node = "n1"
        dc = "east"
        data_dir = "/var/lib/agent"
        server = true
        bootstrap_expect = 3
        bind = "10.0.0.1:8301"
        advertise = "10.0.0.1:8301"
        wan_bind = "10.0.0.1:8302"
        http = "127.0.0.1:9500"
        dns = "127.0.0.1:9600"
        join = ["10.0.0.2", "10.0.0.3:9301"]
        join_wan = ["10.1.0.1"]
        ca_file = "/pki/ca.pem"
        cert_file = "/pki/n1.pem"
        key_file = "/pki/n1-key.pem"
        dead_server_cleanup = "1h30m"
        raft_snapshot_threshold = 500
        raft_trailing_logs = 50
        log_level = "debug"
        event_handlers = ["user:deploy=/bin/deploy"]
        event_handler_timeout = "2m"
        event_size_limit = 900

        [[services]]
        name = "web"
        tags = ["v1"]
        port = 80
        meta = { version = "1" }

        [[services]]
        name = "web"
        id = "web-2"
        address = "10.0.0.9"
    "#;

    const FULL_JSON: &str = r#"{
        "node": "n1", "dc": "east", "data_dir": "/var/lib/agent", "server": true,
        "bootstrap_expect": 3, "bind": "10.0.0.1:8301", "advertise": "10.0.0.1:8301",
        "wan_bind": "10.0.0.1:8302", "http": "127.0.0.1:9500", "dns": "127.0.0.1:9600",
        "join": ["10.0.0.2", "10.0.0.3:9301"], "join_wan": ["10.1.0.1"],
        "ca_file": "/pki/ca.pem", "cert_file": "/pki/n1.pem", "key_file": "/pki/n1-key.pem",
        "dead_server_cleanup": "1h30m", "raft_snapshot_threshold": 500,
        "raft_trailing_logs": 50, "log_level": "debug",
        "event_handlers": ["user:deploy=/bin/deploy"], "event_handler_timeout": "2m",
        "event_size_limit": 900,
        "services": [
            {"Name": "web", "Tags": ["v1"], "Port": 80, "Meta": {"version": "1"}},
            {"name": "web", "ID": "web-2", "address": "10.0.0.9"}
        ]
    }"#;

    #[test]
    fn every_key_parses_and_both_formats_agree() {
        let from_toml = toml(FULL_TOML).unwrap();
        let mut from_json = json(FULL_JSON).unwrap();
        assert_eq!(from_json.path, Path::new("/etc/agent/a.json"));
        from_json.path = from_toml.path.clone();
        assert_eq!(from_toml, from_json);

        let file = from_toml;
        assert_eq!(file.node.as_deref(), Some("n1"));
        assert_eq!(file.server, Some(true));
        assert_eq!(
            file.join,
            vec![
                "10.0.0.2:8301".parse::<SocketAddr>().unwrap(),
                "10.0.0.3:9301".parse().unwrap()
            ]
        );
        // A WAN address without a port gets the WAN port.
        assert_eq!(file.join_wan, vec!["10.1.0.1:8302".parse().unwrap()]);
        assert_eq!(file.dead_server_cleanup, Some(Duration::from_secs(5400)));
        assert_eq!(file.event_handler_timeout, Some(Duration::from_secs(120)));
        assert_eq!(file.event_size_limit, Some(900));
        assert_eq!(file.log_level.as_deref(), Some("debug"));
        assert!(file.services.iter().all(|s| s.checks.is_empty()));
        assert_eq!(
            file.services
                .iter()
                .map(|s| s.service.clone())
                .collect::<Vec<_>>(),
            vec![
                ServiceDefinition {
                    id: "web".into(),
                    service: "web".into(),
                    tags: vec!["v1".into()],
                    address: String::new(),
                    port: 80,
                    meta: [("version".to_string(), "1".to_string())].into(),
                },
                ServiceDefinition {
                    id: "web-2".into(),
                    service: "web".into(),
                    address: "10.0.0.9".into(),
                    ..ServiceDefinition::default()
                },
            ]
        );
    }

    #[test]
    fn checks_come_with_services_and_alone() {
        let file = toml(
            r#"
            enable_script_checks = true

            [[services]]
            name = "web"
            check = { http = "http://127.0.0.1:8080/health", interval = "10s" }

            [[services]]
            name = "db"
            [[services.checks]]
            tcp = "127.0.0.1:5432"
            interval = "5s"
            timeout = "1s"
            [[services.checks]]
            Name = "db ttl"
            TTL = "30s"

            [[checks]]
            name = "disk"
            args = ["/usr/local/bin/check-disk", "/var"]
            interval = "30s"
            notes = "free space"

            [[checks]]
            name = "web-ttl"
            service_id = "web"
            ttl = "1m"
        "#,
        )
        .unwrap();
        assert_eq!(file.enable_script_checks, Some(true));
        let web = &file.services[0];
        assert_eq!(web.checks.len(), 1);
        assert_eq!(web.checks[0].id, "service:web");
        assert_eq!(web.checks[0].kind.name(), "http");
        let db: Vec<(&str, &str)> = file.services[1]
            .checks
            .iter()
            .map(|c| (c.id.as_str(), c.kind.name()))
            .collect();
        assert_eq!(db, [("service:db:1", "tcp"), ("service:db:2", "ttl")]);
        let checks: Vec<(&str, &str, &str)> = file
            .checks
            .iter()
            .map(|c| (c.id.as_str(), c.service_id.as_str(), c.kind.name()))
            .collect();
        assert_eq!(checks, [("disk", "", "script"), ("web-ttl", "web", "ttl")]);

        // The same in JSON, with Consul's keys.
        let file = json(
            r#"{"services": [{"Name": "web", "Check": {"HTTP": "http://127.0.0.1:8080/health", "Interval": "10s"}}],
                "checks": [{"Name": "disk", "Args": ["/bin/df"], "Interval": "30s", "ServiceID": ""}]}"#,
        )
        .unwrap();
        assert_eq!(file.services[0].checks[0].id, "service:web");
        assert_eq!(file.checks[0].id, "disk");

        for bad in [
            "[[checks]]\nname = \"x\"",
            "[[checks]]\nname = \"x\"\nttl = \"1s\"\ntypo = 1",
            "[[checks]]\nttl = \"1s\"",
            "[[services]]\nname = \"web\"\ncheck = { tcp = \"h:1\" }",
        ] {
            let e = message(toml(bad));
            assert!(
                e.starts_with("config file /etc/agent/a.toml: "),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        let file = toml("").unwrap();
        assert_eq!(
            file,
            ConfigFile {
                path: "/etc/agent/a.toml".into(),
                ..ConfigFile::default()
            }
        );
        assert_eq!(json("{}").unwrap().node, None);
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let e = message(toml("node = \"a\"\nnode_name = \"b\"\n"));
        assert!(e.contains("/etc/agent/a.toml"), "{e}");
        assert!(e.contains("node_name"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = message(json(r#"{"node": "a", "Node": "b"}"#));
        assert!(e.contains("/etc/agent/a.json"), "{e}");
        assert!(e.contains("unknown field `Node`"), "{e}");
        // `dev` stays on the command line.
        assert!(message(toml("dev = true")).contains("unknown field `dev`"));
        // The service keys are checked too.
        let e = message(json(r#"{"services": [{"name": "web", "Kind": "x"}]}"#));
        assert!(e.contains("unknown field `Kind`"), "{e}");
    }

    #[test]
    fn syntax_errors_carry_the_position() {
        let e = message(toml("node = \"a\"\ndc = \n"));
        assert!(e.contains("line 2"), "{e}");
        let e = message(json("{\n  \"node\": \"a\",\n  \"dc\": \n}"));
        assert!(e.contains("line 4 column 1"), "{e}");
        let e = message(json(""));
        assert!(e.contains("/etc/agent/a.json"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_refused() {
        for bad in [
            "node = 7",
            "server = \"yes\"",
            "bootstrap_expect = -1",
            "bind = \"10.0.0.1\"",
            "join = \"10.0.0.1\"",
            "join = [\"example.com\"]",
            "dead_server_cleanup = 600",
            "dead_server_cleanup = \"soon\"",
            "event_handlers = \"x\"",
            "data_dir = \"\"",
            "services = { name = \"web\" }",
            "[[services]]\nport = 80",
            "[[services]]\nname = \"web\"\nport = 65536",
            "[[services]]\nname = \"web\"\nport = -1",
            "[[services]]\nname = \"web\"\ntags = \"v1\"",
            "[[services]]\nname = \"web\"\nmeta = { n = 1 }",
            "[[services]]\nname = \"web\"\nName = \"api\"",
        ] {
            let e = message(toml(bad));
            assert!(
                e.starts_with("config file /etc/agent/a.toml: "),
                "{bad}: {e}"
            );
        }
        let e = message(toml("[[services]]\nport = 80"));
        assert!(e.contains("missing field `name`"), "{e}");
        let e = message(toml("[[services]]\nname = \"a\"\nName = \"b\""));
        assert!(e.contains("duplicate field `name`"), "{e}");
        let e = message(json(r#"{"services": [{"name": "web", "port": 70000}]}"#));
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let text = r#"
            data_dir = "data"
            ca_file = "../pki/ca.pem"
            cert_file = "/pki/n1.pem"
            key_file = "pki/n1-key.pem"
        "#;
        let file = toml(text).unwrap();
        assert_eq!(file.data_dir, Some("/etc/agent/data".into()));
        assert_eq!(file.ca_file, Some("/etc/agent/../pki/ca.pem".into()));
        assert_eq!(file.cert_file, Some("/pki/n1.pem".into()));
        assert_eq!(file.key_file, Some("/etc/agent/pki/n1-key.pem".into()));

        // A file named relative to the working directory keeps its paths relative to it.
        let file = ConfigFile::parse(text, Format::Toml, Path::new("conf/a.toml")).unwrap();
        assert_eq!(file.data_dir, Some("conf/data".into()));
        let file = ConfigFile::parse(text, Format::Toml, Path::new("a.toml")).unwrap();
        assert_eq!(file.data_dir, Some("data".into()));
    }

    #[test]
    fn the_format_is_told_by_the_extension() {
        assert_eq!(Format::of(Path::new("a.toml")), Some(Format::Toml));
        assert_eq!(Format::of(Path::new("/x/A.JSON")), Some(Format::Json));
        assert_eq!(Format::of(Path::new("a.hcl")), None);
        assert_eq!(Format::of(Path::new("toml")), None);
        assert!(matches!(
            ConfigFile::read(Path::new("/nonexistent/agent.yaml")),
            Err(ConfigFileError::Format(_))
        ));
    }

    #[test]
    fn reading_refuses_what_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = ConfigFile::read(&missing).unwrap_err();
        assert!(matches!(e, ConfigFileError::Read { .. }), "{e}");
        assert!(e.to_string().contains("missing.toml"), "{e}");

        let huge = dir.path().join("huge.json");
        std::fs::write(&huge, vec![b' '; MAX_FILE_SIZE as usize + 1]).unwrap();
        assert!(matches!(
            ConfigFile::read(&huge),
            Err(ConfigFileError::TooLarge(_))
        ));

        let binary = dir.path().join("binary.toml");
        std::fs::write(&binary, [b'#', 0xff, 0xfe, b'\n']).unwrap();
        assert!(matches!(
            ConfigFile::read(&binary),
            Err(ConfigFileError::NotUtf8(_))
        ));

        let as_dir = dir.path().join("dir.toml");
        std::fs::create_dir(&as_dir).unwrap();
        assert!(matches!(
            ConfigFile::read(&as_dir),
            Err(ConfigFileError::Read { .. })
        ));

        let good = dir.path().join("good.toml");
        std::fs::write(&good, "node = \"n1\"\ndata_dir = \"data\"\n").unwrap();
        let files = ConfigFile::read_all(std::slice::from_ref(&good)).unwrap();
        assert_eq!(files[0].path, good);
        assert_eq!(files[0].node.as_deref(), Some("n1"));
        assert_eq!(files[0].data_dir, Some(dir.path().join("data")));
        assert!(ConfigFile::read_all(&[good, missing]).is_err());
    }
}
