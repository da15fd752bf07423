//! Query-string parameters as Consul's HTTP API reads them.
//!
//! Flags are present-means-true whatever their value (`?recurse`, `?recurse=1`,
//! `?keys=True`); numbers must parse or the request is refused with 400; `wait` is a Go
//! duration (`2s`, `100ms`, `1m30s`).

use std::collections::HashMap;
use std::time::Duration;

use super::error::ApiError;

/// The parsed query string of one request.
#[derive(Debug, Default, Clone)]
pub struct Params {
    pairs: HashMap<String, String>,
    /// Every pair in order, for parameters that may repeat (`?tag=a&tag=b`).
    all: Vec<(String, String)>,
}

/// How a read is served (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader from its state.
    Default,
    /// The leader confirms its leadership with a quorum first.
    Consistent,
    /// Any server answers from its local state.
    Stale,
}

impl Params {
    /// Parses a raw query string (`None` when the URL had none).
    pub fn parse(query: Option<&str>) -> Params {
        let mut pairs = HashMap::new();
        let mut all = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode_component(name);
            let value = decode_component(value);
            all.push((name.clone(), value.clone()));
            // The first occurrence wins, as Go's url.Values.Get does.
            pairs.entry(name).or_insert(value);
        }
        Params { pairs, all }
    }

    /// Every value of a parameter that may repeat, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.all
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean parameter as Consul reads `?passing`: absent is false, present without
    /// a value is true, otherwise Go's `strconv.ParseBool` spellings; anything else is a
    /// 400.
    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(text) => Err(ApiError::bad_request(format!(
                "Invalid value for ?{name}: {text:?}"
            ))),
        }
    }

    /// Whether a flag is present (its value does not matter).
    pub fn flag(&self, name: &str) -> bool {
        self.pairs.contains_key(name)
    }

    /// A string parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.get(name).map(String::as_str)
    }

    /// An unsigned integer parameter; present but not a number is a 400.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(text) => text
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("Invalid {name} value: {text:?}"))),
        }
    }

    /// The read mode; `?stale` together with `?consistent` is refused, as Consul does.
    pub fn consistency(&self) -> Result<Consistency, ApiError> {
        match (self.flag("stale"), self.flag("consistent")) {
            (true, true) => Err(ApiError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            )),
            (true, false) => Ok(Consistency::Stale),
            (false, true) => Ok(Consistency::Consistent),
            (false, false) => Ok(Consistency::Default),
        }
    }

    /// `?wait=` as a Go duration.
    pub fn wait(&self) -> Result<Option<Duration>, ApiError> {
        match self.get("wait") {
            None => Ok(None),
            Some(text) => parse_go_duration(text)
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid wait time: {text:?}"))),
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component; bytes that do not form
/// valid UTF-8 are replaced rather than refused (a parameter is never a key).
fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a Go duration (`300ms`, `1.5s`, `2m30s`, `1h`, `0`). `None` when malformed.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    // Anything beyond ~292 years is not a duration Go could express either.
    if !total.is_finite() || total > 9.2e18 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_present_means_true() {
        let p = Params::parse(Some("recurse&keys=True&raw=0&stale=false"));
        assert!(p.flag("recurse") && p.flag("keys") && p.flag("raw") && p.flag("stale"));
        assert!(!p.flag("consistent"));
        assert!(!Params::parse(None).flag("recurse"));
    }

    #[test]
    fn values_are_percent_decoded() {
        let p = Params::parse(Some("separator=%2F&name=a+b&x=%zz"));
        assert_eq!(p.get("separator"), Some("/"));
        assert_eq!(p.get("name"), Some("a b"));
        assert_eq!(p.get("x"), Some("%zz"));
        assert_eq!(Params::parse(Some("t=%4")).get("t"), Some("%4"));
    }

    #[test]
    fn repeated_and_boolean_parameters() {
        let p = Params::parse(Some("tag=a&tag=b&passing&x=false&y=maybe"));
        assert_eq!(p.get_all("tag"), vec!["a", "b"]);
        assert_eq!(p.get("tag"), Some("a"));
        assert!(p.get_all("none").is_empty());
        assert!(p.bool("passing").unwrap());
        assert!(!p.bool("x").unwrap());
        assert!(!p.bool("absent").unwrap());
        assert_eq!(p.bool("y").unwrap_err().status.as_u16(), 400);
        assert!(Params::parse(Some("passing=1")).bool("passing").unwrap());
    }

    #[test]
    fn numbers_must_parse() {
        let p = Params::parse(Some("cas=12&flags=abc"));
        assert_eq!(p.u64("cas").unwrap(), Some(12));
        assert_eq!(p.u64("flags").unwrap_err().status.as_u16(), 400);
        assert_eq!(p.u64("index").unwrap(), None);
    }

    #[test]
    fn consistency_modes() {
        assert_eq!(
            Params::parse(Some("stale")).consistency().unwrap(),
            Consistency::Stale
        );
        assert_eq!(
            Params::parse(Some("consistent=1")).consistency().unwrap(),
            Consistency::Consistent
        );
        assert_eq!(
            Params::parse(None).consistency().unwrap(),
            Consistency::Default
        );
        assert!(
            Params::parse(Some("stale&consistent"))
                .consistency()
                .is_err()
        );
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("2s"), Some(ms(2000)));
        assert_eq!(parse_go_duration("100ms"), Some(ms(100)));
        assert_eq!(parse_go_duration("1m30s"), Some(ms(90_000)));
        assert_eq!(parse_go_duration("1.5s"), Some(ms(1500)));
        assert_eq!(parse_go_duration("1h"), Some(ms(3_600_000)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("300us"), Some(Duration::from_micros(300)));
        for bad in ["", "5", "s", "-1s", "1x", "1.2.3s", "99999999999999h"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
