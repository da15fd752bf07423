//! The workload: concurrent clients doing reads, writes and compare-and-sets
//! on a few registers (keys) through the agents' HTTP KV API, recorded in a
//! [`Recorder`].
//!
//! # Operations
//!
//! Client `c` talks to agent `c mod 5` (servers and client agents) and loops
//! until told to stop: it picks one of the keys at random and does
//!
//! * 30 %: a default-mode read, `GET /v1/kv/<key>`;
//! * 20 %: a consistent read, `GET /v1/kv/<key>?consistent`;
//! * 30 %: a write of a unique value `c<client>-<n>`, `PUT /v1/kv/<key>`;
//! * 20 %: a compare-and-set (below).
//!
//! # Compare-and-set over the ModifyIndex
//!
//! The register model's CAS is "if the value is `expected`, set `new`"; the
//! KV API's is "if the entry's ModifyIndex is `i`, set" (`?cas=i`, `0`: only
//! if absent). Each client remembers, per key, the value and ModifyIndex of
//! its last successful read (absent: index 0) and a CAS is `?cas=<that
//! index>` recorded as `expected = <that value>`. The two agree because every
//! value written to a key is unique and every write bumps the key's
//! ModifyIndex: the entry carries index `i` exactly when the write that
//! produced the value read (the only write of that value) is the last one
//! applied, i.e. exactly when the register still holds `expected`. (Index 0
//! matches exactly when the key is absent, and keys are never deleted.) If
//! the read that supplied the pair was itself wrong, the checker sees a read
//! that does not fit — which is the point.
//!
//! # Outcomes
//!
//! * Reads: 200 with a body or 404 → `Ok` (the value, or absent); anything
//!   else, including timeouts → `Fail` (a read changes nothing).
//! * Writes and CAS: 200 `true`/`false` → `Ok`; 4xx → `Fail`; 5xx (e.g. a
//!   forwarded write that "may or may not have been applied", or a deposed
//!   leader's error), timeouts and connection errors → `Unknown`.
//!
//! Each operation has a timeout ([`OP_TIMEOUT`]); after a failed or unknown
//! operation the client backs off briefly so that a dead agent does not
//! produce thousands of pointless operations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::{OpKind, Outcome, ReadMode, Recorder, Ret};

/// How long one operation may take before it is given up (then `Unknown`
/// for mutations, `Fail` for reads).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after an operation that did not succeed.
pub(crate) const BACKOFF: Duration = Duration::from_millis(100);

/// The keys (registers) of the workload.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("faults/r{i}")).collect()
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

/// A value and the ModifyIndex it had (index 0: absent).
type Seen = (Option<String>, u64);

/// An HTTP client for the workload (no proxy, per-operation timeout).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .pool_max_idle_per_host(2)
        .build()
        .expect("building an HTTP client without TLS cannot fail")
}

/// Reads `key` through `base` (`http://addr`): `Ok(Some((value, index)))` on
/// 200, `Ok(None)`-like absent as `(None, 0)` on 404, `Err` otherwise.
pub async fn read(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    mode: ReadMode,
) -> Result<Seen, String> {
    let query = match mode {
        ReadMode::Default => "",
        ReadMode::Consistent => "?consistent",
        ReadMode::Stale => "?stale",
    };
    let resp = http
        .get(format!("{base}/v1/kv/{key}{query}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    match status {
        404 => Ok((None, 0)),
        200 => {
            let entries: Vec<Entry> =
                serde_json::from_str(&body).map_err(|e| format!("bad body {body:?}: {e}"))?;
            let entry = entries.into_iter().next().ok_or("empty entry list")?;
            let value = match entry.value {
                None => String::new(),
                Some(b64) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| e.to_string())?;
                    String::from_utf8(bytes).map_err(|e| e.to_string())?
                }
            };
            Ok((Some(value), entry.modify_index))
        }
        other => Err(format!("HTTP {other}: {}", body.trim())),
    }
}

/// `PUT` of `value` to `key` (with `?cas=<index>` if given): the outcome.
pub async fn put(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    value: &str,
    cas: Option<u64>,
) -> Outcome {
    let query = cas.map(|i| format!("?cas={i}")).unwrap_or_default();
    let resp = match http
        .put(format!("{base}/v1/kv/{key}{query}"))
        .body(value.to_string())
        .send()
        .await
    {
        Ok(resp) => resp,
        Err(_) => return Outcome::Unknown,
    };
    let status = resp.status();
    let Ok(body) = resp.text().await else {
        return Outcome::Unknown;
    };
    if status.is_success() {
        let swapped = match body.trim() {
            "true" => true,
            "false" => false,
            _ => return Outcome::Unknown,
        };
        match cas {
            Some(_) => Outcome::Ok(Ret::Cas(swapped)),
            None if swapped => Outcome::Ok(Ret::Write),
            None => Outcome::Unknown,
        }
    } else if status.is_client_error() {
        Outcome::Fail
    } else {
        Outcome::Unknown
    }
}

/// One client of the workload.
pub struct Client {
    /// Its id (also in the values it writes).
    pub id: u32,
    /// The agent's HTTP address.
    pub agent: SocketAddr,
    /// The keys.
    pub keys: Vec<String>,
    /// Where to record.
    pub recorder: Recorder,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
}

impl Client {
    /// Runs until `stop` is set.
    pub async fn run(self) {
        let http = http_client(OP_TIMEOUT);
        let base = format!("http://{}", self.agent);
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut n: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let key = self.keys[(rand::random::<u64>() % self.keys.len() as u64) as usize].clone();
            let dice = rand::random::<u64>() % 100;
            let ok = if dice < 50 {
                let mode = if dice < 30 {
                    ReadMode::Default
                } else {
                    ReadMode::Consistent
                };
                let ticket = self.recorder.invoke(self.id, &key, OpKind::Read { mode });
                match read(&http, &base, &key, mode).await {
                    Ok((value, index)) => {
                        self.recorder
                            .complete(ticket, Outcome::Ok(Ret::Read(value.clone())));
                        seen.insert(key, (value, index));
                        true
                    }
                    Err(_) => {
                        self.recorder.complete(ticket, Outcome::Fail);
                        false
                    }
                }
            } else {
                n += 1;
                let value = format!("c{}-{n}", self.id);
                let (kind, cas) = if dice < 80 {
                    (
                        OpKind::Write {
                            value: value.clone(),
                        },
                        None,
                    )
                } else {
                    let (expected, index) = seen.get(&key).cloned().unwrap_or((None, 0));
                    (
                        OpKind::Cas {
                            expected,
                            new: value.clone(),
                        },
                        Some(index),
                    )
                };
                let ticket = self.recorder.invoke(self.id, &key, kind);
                let outcome = put(&http, &base, &key, &value, cas).await;
                let ok = outcome.is_ok();
                self.recorder.complete(ticket, outcome);
                ok
            };
            if !ok {
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}
