//! Services and checks read from Consul's JSON shape, as the HTTP API and config files
//! give them.
//!
//! Keys are matched without regard to case, `_` or `-` (`ServiceID`, `service_id`,
//! `serviceid`), so Consul's PascalCase JSON and a config file's lowercase keys both
//! work. [`Consul<T, true>`] refuses a key it does not know (config files: a typo is an
//! error); [`Consul<T, false>`] skips it (the HTTP API: Consul's clients send fields such
//! as `Weights` or `DeregisterCriticalServiceAfter` that this agent does not use).
//!
//! Parsing applies the defaults: a service's id is its name; a check's id is its name,
//! or `service:<service-id>` for the check of a service (`service:<service-id>:<n>`,
//! from 1, when the service has several); a check of a service is named
//! `Service '<name>' check` unless named. A check is exactly one of `TTL`, `HTTP`, `TCP`
//! and `Args`; the others need an `Interval` (at least [`MIN_INTERVAL`]) and take a
//! `Timeout` (default [`DEFAULT_TIMEOUT`]). Durations are Go duration strings (`10s`,
//! `500ms`). Limits of names, tags and meta are checked afterwards
//! ([`ServiceDefinition::check`], [`CheckDefinition::check`]).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use events::HealthStatus;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::check::{
    CheckDefinition, CheckKind, DEFAULT_TIMEOUT, MAX_ARG_LEN, MAX_ARGS, MAX_TARGET_LEN,
    MIN_INTERVAL,
};
use super::service::ServiceDefinition;

/// A service with the checks registered along with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRegistration {
    /// The service.
    pub service: ServiceDefinition,
    /// Its checks (`Check` and `Checks`), their `service_id` set to the service's id.
    pub checks: Vec<CheckDefinition>,
}

/// A value read from Consul's shape; `STRICT` refuses unknown keys (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consul<T, const STRICT: bool>(pub T);

impl ServiceRegistration {
    /// Parses the body of `PUT /v1/agent/service/register` (unknown keys skipped).
    pub fn from_json(bytes: &[u8]) -> Result<ServiceRegistration, String> {
        serde_json::from_slice::<Consul<ServiceRegistration, false>>(bytes)
            .map(|parsed| parsed.0)
            .map_err(|e| format!("Request decode failed: {e}"))
    }
}

impl CheckDefinition {
    /// Parses the body of `PUT /v1/agent/check/register` (unknown keys skipped).
    pub fn from_json(bytes: &[u8]) -> Result<CheckDefinition, String> {
        serde_json::from_slice::<Consul<CheckDefinition, false>>(bytes)
            .map(|parsed| parsed.0)
            .map_err(|e| format!("Request decode failed: {e}"))
    }
}

/// `ServiceID`, `service_id` and `serviceid` are one key.
fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn once<T, E: de::Error>(slot: &mut Option<T>, key: &'static str, value: T) -> Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(E::duplicate_field(key));
    }
    Ok(())
}

/// Skips the value of an unknown key, or refuses it when strict.
fn unknown<'de, A: MapAccess<'de>>(
    strict: bool,
    key: &str,
    expected: &'static [&'static str],
    map: &mut A,
) -> Result<(), A::Error> {
    if strict {
        return Err(de::Error::unknown_field(key, expected));
    }
    map.next_value::<IgnoredAny>()?;
    Ok(())
}

const SERVICE_KEYS: &[&str] = &[
    "name", "id", "tags", "address", "port", "meta", "check", "checks",
];

impl<'de, const STRICT: bool> Deserialize<'de> for Consul<ServiceRegistration, STRICT> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServiceVisitor<const S: bool>;
        impl<'de, const S: bool> Visitor<'de> for ServiceVisitor<S> {
            type Value = Consul<ServiceRegistration, S>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a service (a table with a name)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut name: Option<Option<String>> = None;
                let mut id: Option<Option<String>> = None;
                let mut tags: Option<Option<Vec<String>>> = None;
                let mut address: Option<Option<String>> = None;
                let mut port: Option<Option<u16>> = None;
                let mut meta: Option<Option<BTreeMap<String, String>>> = None;
                let mut check: Option<Option<RawCheck<S>>> = None;
                let mut checks: Option<Option<Vec<RawCheck<S>>>> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match normalize(&key).as_str() {
                        "name" => once(&mut name, "name", map.next_value()?)?,
                        "id" => once(&mut id, "id", map.next_value()?)?,
                        "tags" => once(&mut tags, "tags", map.next_value()?)?,
                        "address" => once(&mut address, "address", map.next_value()?)?,
                        "port" => once(&mut port, "port", map.next_value()?)?,
                        "meta" => once(&mut meta, "meta", map.next_value()?)?,
                        "check" => once(&mut check, "check", map.next_value()?)?,
                        "checks" => once(&mut checks, "checks", map.next_value()?)?,
                        _ => unknown(S, &key, SERVICE_KEYS, &mut map)?,
                    }
                }
                let name = name
                    .flatten()
                    .ok_or_else(|| de::Error::missing_field("name"))?;
                let id = id
                    .flatten()
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| name.clone());
                let raw: Vec<RawCheck<S>> = check
                    .flatten()
                    .into_iter()
                    .chain(checks.flatten().unwrap_or_default())
                    .collect();
                let several = raw.len() > 1;
                let checks = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, raw)| {
                        let default_id = if several {
                            format!("service:{id}:{}", i + 1)
                        } else {
                            format!("service:{id}")
                        };
                        raw.build(Some((&id, &name, default_id)))
                            .map_err(de::Error::custom)
                    })
                    .collect::<Result<Vec<_>, A::Error>>()?;
                Ok(Consul(ServiceRegistration {
                    service: ServiceDefinition {
                        id,
                        service: name,
                        tags: tags.flatten().unwrap_or_default(),
                        address: address.flatten().unwrap_or_default(),
                        port: port.flatten().unwrap_or(0),
                        meta: meta.flatten().unwrap_or_default(),
                    },
                    checks,
                }))
            }
        }
        deserializer.deserialize_map(ServiceVisitor::<STRICT>)
    }
}

impl<'de, const STRICT: bool> Deserialize<'de> for Consul<CheckDefinition, STRICT> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawCheck::<STRICT>::deserialize(deserializer)?;
        raw.build(None).map(Consul).map_err(de::Error::custom)
    }
}

/// A check's keys as given, before defaults and checks.
#[derive(Default)]
struct RawCheck<const STRICT: bool> {
    id: Option<String>,
    name: Option<String>,
    service_id: Option<String>,
    ttl: Option<String>,
    http: Option<String>,
    method: Option<String>,
    tcp: Option<String>,
    args: Option<Vec<String>>,
    interval: Option<String>,
    timeout: Option<String>,
    notes: Option<String>,
    status: Option<String>,
}

const CHECK_KEYS: &[&str] = &[
    "name",
    "id",
    "checkid",
    "serviceid",
    "ttl",
    "http",
    "method",
    "tcp",
    "args",
    "interval",
    "timeout",
    "notes",
    "status",
];

impl<'de, const STRICT: bool> Deserialize<'de> for RawCheck<STRICT> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CheckVisitor<const S: bool>(PhantomData<()>);
        impl<'de, const S: bool> Visitor<'de> for CheckVisitor<S> {
            type Value = RawCheck<S>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a check (a table)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawCheck<S>, A::Error> {
                fn set<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
                    map: &mut A,
                    slot: &mut Option<T>,
                    seen: &mut Option<()>,
                    key: &'static str,
                ) -> Result<(), A::Error> {
                    once(seen, key, ())?;
                    // `null` and "" are the same as leaving the key out.
                    *slot = map.next_value::<Option<T>>()?;
                    Ok(())
                }
                let mut raw = RawCheck::<S>::default();
                let mut seen: [Option<()>; 12] = Default::default();
                while let Some(key) = map.next_key::<String>()? {
                    let [
                        id,
                        name,
                        sid,
                        ttl,
                        http,
                        method,
                        tcp,
                        args,
                        interval,
                        timeout,
                        notes,
                        status,
                    ] = &mut seen;
                    match normalize(&key).as_str() {
                        "id" | "checkid" => set(&mut map, &mut raw.id, id, "id")?,
                        "name" => set(&mut map, &mut raw.name, name, "name")?,
                        "serviceid" => set(&mut map, &mut raw.service_id, sid, "service_id")?,
                        "ttl" => set(&mut map, &mut raw.ttl, ttl, "ttl")?,
                        "http" => set(&mut map, &mut raw.http, http, "http")?,
                        "method" => set(&mut map, &mut raw.method, method, "method")?,
                        "tcp" => set(&mut map, &mut raw.tcp, tcp, "tcp")?,
                        "args" | "scriptargs" => set(&mut map, &mut raw.args, args, "args")?,
                        "interval" => set(&mut map, &mut raw.interval, interval, "interval")?,
                        "timeout" => set(&mut map, &mut raw.timeout, timeout, "timeout")?,
                        "notes" => set(&mut map, &mut raw.notes, notes, "notes")?,
                        "status" => set(&mut map, &mut raw.status, status, "status")?,
                        _ => unknown(S, &key, CHECK_KEYS, &mut map)?,
                    }
                }
                Ok(raw)
            }
        }
        deserializer.deserialize_map(CheckVisitor::<STRICT>(PhantomData))
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn duration(what: &str, text: &str) -> Result<Duration, String> {
    crate::http::parse_go_duration(text).ok_or_else(|| {
        format!("invalid {what} {text:?}: want a duration like \"10s\" or \"500ms\"")
    })
}

impl<const STRICT: bool> RawCheck<STRICT> {
    /// The definition, with the defaults of a check of the node (`owner` is `None`) or
    /// of the service `(id, name, default check id)`.
    fn build(self, owner: Option<(&str, &str, String)>) -> Result<CheckDefinition, String> {
        let name = non_empty(self.name);
        let given_id = non_empty(self.id);
        let (id, name, service_id) = match owner {
            None => {
                let name = name.ok_or("Missing check name")?;
                (
                    given_id.unwrap_or_else(|| name.clone()),
                    name,
                    self.service_id.unwrap_or_default(),
                )
            }
            Some((service_id, service_name, default_id)) => (
                given_id.unwrap_or(default_id),
                name.unwrap_or_else(|| format!("Service '{service_name}' check")),
                service_id.to_string(),
            ),
        };
        let args = self.args.filter(|args| !args.is_empty());
        let kinds = [
            self.ttl.is_some(),
            self.http.is_some(),
            self.tcp.is_some(),
            args.is_some(),
        ];
        let kind = match kinds.iter().filter(|k| **k).count() {
            0 => {
                return Err(format!(
                    "check {id:?}: set one of TTL, HTTP, TCP or Args (a script)"
                ));
            }
            1 => {
                if let Some(ttl) = non_empty(self.ttl) {
                    let ttl = duration("TTL", &ttl)?;
                    if ttl.is_zero() {
                        return Err(format!("check {id:?}: the TTL must be above zero"));
                    }
                    CheckKind::Ttl { ttl }
                } else if let Some(url) = self.http {
                    CheckKind::Http {
                        url: http_url(&url)?,
                        method: http_method(self.method)?,
                    }
                } else if let Some(addr) = self.tcp {
                    CheckKind::Tcp {
                        addr: tcp_addr(&addr)?,
                    }
                } else if let Some(args) = args {
                    script_args(&args)?;
                    CheckKind::Script { args }
                } else {
                    return Err(format!("check {id:?}: the TTL must not be empty"));
                }
            }
            _ => {
                return Err(format!(
                    "check {id:?}: set only one of TTL, HTTP, TCP and Args"
                ));
            }
        };
        let (interval, timeout) = if matches!(kind, CheckKind::Ttl { .. }) {
            (Duration::ZERO, DEFAULT_TIMEOUT)
        } else {
            let interval = match non_empty(self.interval) {
                Some(text) => duration("Interval", &text)?,
                None => Duration::ZERO,
            };
            if interval.is_zero() {
                return Err(format!(
                    "check {id:?}: Interval must be > 0 for script, HTTP or TCP checks"
                ));
            }
            let timeout = match non_empty(self.timeout) {
                Some(text) => duration("Timeout", &text)?,
                None => Duration::ZERO,
            };
            (
                interval.max(MIN_INTERVAL),
                if timeout.is_zero() {
                    DEFAULT_TIMEOUT
                } else {
                    timeout
                },
            )
        };
        let status = match non_empty(self.status) {
            None => None,
            Some(text) => Some(HealthStatus::parse(&text).ok_or_else(|| {
                format!("check {id:?}: invalid Status {text:?}: want passing, warning or critical")
            })?),
        };
        Ok(CheckDefinition {
            id,
            name,
            service_id,
            kind,
            interval,
            timeout,
            notes: self.notes.unwrap_or_default(),
            status,
        })
    }
}

fn http_url(text: &str) -> Result<String, String> {
    if text.len() > MAX_TARGET_LEN {
        return Err(format!(
            "the HTTP URL is longer than {MAX_TARGET_LEN} bytes"
        ));
    }
    let url =
        reqwest::Url::parse(text.trim()).map_err(|e| format!("invalid HTTP URL {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid HTTP URL {text:?}: want http:// or https://"
        ));
    }
    Ok(text.trim().to_string())
}

fn http_method(method: Option<String>) -> Result<String, String> {
    let Some(method) = non_empty(method) else {
        return Ok("GET".into());
    };
    let method = method.trim().to_ascii_uppercase();
    if method.len() > 16 || !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!("invalid HTTP method {method:?}"));
    }
    Ok(method)
}

fn tcp_addr(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() > MAX_TARGET_LEN {
        return Err(format!(
            "the TCP address is longer than {MAX_TARGET_LEN} bytes"
        ));
    }
    match text.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(text.to_string())
        }
        _ => Err(format!("invalid TCP address {text:?}: want host:port")),
    }
}

fn script_args(args: &[String]) -> Result<(), String> {
    if args.len() > MAX_ARGS {
        return Err(format!("{} Args, more than {MAX_ARGS}", args.len()));
    }
    if args[0].is_empty() {
        return Err("the program (the first of Args) must not be empty".into());
    }
    for arg in args {
        if arg.len() > MAX_ARG_LEN || arg.contains('\0') {
            return Err(format!(
                "each of Args must be at most {MAX_ARG_LEN} bytes without NUL"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<CheckDefinition, String> {
        CheckDefinition::from_json(json.as_bytes())
    }

    #[test]
    fn a_check_id_defaults_to_its_name() {
        let c = check(r#"{"Name": "mem", "TTL": "15s", "Notes": "n"}"#).unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str()), ("mem", "mem"));
        assert_eq!(
            c.kind,
            CheckKind::Ttl {
                ttl: Duration::from_secs(15)
            }
        );
        assert_eq!(c.initial_status(), HealthStatus::Critical);
        let c =
            check(r#"{"name": "mem", "CheckID": "m1", "ttl": "1m", "Status": "passing"}"#).unwrap();
        assert_eq!(c.id, "m1");
        assert_eq!(c.status, Some(HealthStatus::Passing));
        assert!(
            check(r#"{"TTL": "15s"}"#)
                .unwrap_err()
                .contains("Missing check name")
        );
    }

    #[test]
    fn each_kind_parses_with_its_defaults() {
        let c =
            check(r#"{"Name": "web", "HTTP": "http://127.0.0.1:80/health", "Interval": "500ms"}"#)
                .unwrap();
        assert_eq!(
            c.kind,
            CheckKind::Http {
                url: "http://127.0.0.1:80/health".into(),
                method: "GET".into()
            }
        );
        assert_eq!((c.interval, c.timeout), (MIN_INTERVAL, DEFAULT_TIMEOUT));
        let c =
            check(r#"{"Name": "db", "TCP": "localhost:5432", "Interval": "10s", "Timeout": "1s"}"#)
                .unwrap();
        assert_eq!(
            c.kind,
            CheckKind::Tcp {
                addr: "localhost:5432".into()
            }
        );
        assert_eq!(c.timeout, Duration::from_secs(1));
        let c =
            check(r#"{"Name": "s", "Args": ["/bin/true", "x"], "Interval": "5s", "Unknown": 1}"#)
                .unwrap();
        assert_eq!(c.kind.name(), "script");
    }

    #[test]
    fn bad_checks_are_refused_with_a_reason() {
        for (json, reason) in [
            (r#"{"Name": "a"}"#, "set one of"),
            (
                r#"{"Name": "a", "TTL": "1s", "TCP": "h:1", "Interval": "1s"}"#,
                "only one",
            ),
            (r#"{"Name": "a", "TTL": "soon"}"#, "invalid TTL"),
            (r#"{"Name": "a", "TTL": "0"}"#, "above zero"),
            (
                r#"{"Name": "a", "HTTP": "http://x/"}"#,
                "Interval must be > 0",
            ),
            (
                r#"{"Name": "a", "HTTP": "ftp://x/", "Interval": "1s"}"#,
                "http://",
            ),
            (
                r#"{"Name": "a", "TCP": "nohost", "Interval": "1s"}"#,
                "host:port",
            ),
            (
                r#"{"Name": "a", "TTL": "1s", "Status": "fine"}"#,
                "invalid Status",
            ),
            (
                r#"{"Name": "a", "Args": [""], "Interval": "1s"}"#,
                "program",
            ),
            (r#"{"Name": 7, "TTL": "1s"}"#, "invalid type"),
            ("[1]", "invalid type"),
        ] {
            let e = check(json).unwrap_err();
            assert!(e.contains(reason), "{json}: {e}");
        }
    }

    #[test]
    fn service_checks_get_consuls_ids() {
        let one = ServiceRegistration::from_json(
            br#"{"Name": "web", "Port": 80, "Check": {"TTL": "10s"}, "Weights": {"Passing": 1}}"#,
        )
        .unwrap();
        assert_eq!(one.service.id, "web");
        assert_eq!(one.checks.len(), 1);
        assert_eq!(one.checks[0].id, "service:web");
        assert_eq!(one.checks[0].name, "Service 'web' check");
        assert_eq!(one.checks[0].service_id, "web");
        let several = ServiceRegistration::from_json(
            br#"{"Name": "web", "ID": "web-1", "Check": {"TTL": "10s"},
                 "Checks": [{"TTL": "5s"}, {"CheckID": "own", "Name": "x", "TTL": "5s"}]}"#,
        )
        .unwrap();
        let ids: Vec<&str> = several.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:web-1:1", "service:web-1:2", "own"]);
        assert!(ServiceRegistration::from_json(br#"{"Port": 80}"#).is_err());
    }

    #[test]
    fn a_definition_serializes_to_what_parses_back() {
        for json in [
            r#"{"Name": "a", "TTL": "90s", "Notes": "n", "ServiceID": "web", "Status": "warning"}"#,
            r#"{"Name": "a", "HTTP": "http://h/x", "Method": "post", "Interval": "2s", "Timeout": "1500ms"}"#,
            r#"{"Name": "a", "TCP": "h:1", "Interval": "2s"}"#,
            r#"{"Name": "a", "ID": "b", "Args": ["a", "b"], "Interval": "2s"}"#,
        ] {
            let parsed = check(json).unwrap();
            let text = serde_json::to_string(&parsed).unwrap();
            let strict: Consul<CheckDefinition, true> = serde_json::from_str(&text).unwrap();
            assert_eq!(strict.0, parsed, "{text}");
        }
    }
}
