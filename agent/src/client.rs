//! A small client of the agent's HTTP API, for the CLI commands and for tests.

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use thiserror::Error;

/// A KV entry as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    /// The key.
    pub key: String,
    /// Base64 of the value, `None` for an empty value.
    pub value: Option<String>,
    /// Opaque flags.
    pub flags: u64,
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the last write to the key.
    pub modify_index: u64,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    /// The session holding the lock, if any.
    #[serde(default)]
    pub session: Option<String>,
}

impl KvPair {
    /// The decoded value.
    pub fn value_bytes(&self) -> Result<Vec<u8>, ClientError> {
        match &self.value {
            None => Ok(Vec::new()),
            Some(text) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ClientError::Decode(format!("value of {}: {e}", self.key))),
        }
    }
}

/// A member as `/v1/agent/members` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MemberJson {
    /// Node name.
    pub name: String,
    /// Gossip IP address.
    pub addr: String,
    /// Gossip port.
    pub port: u16,
    /// Tags (`role`, `dc`, `build`, and the user's).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
}

impl MemberJson {
    /// The status as a word.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            1 => "alive",
            2 => "leaving",
            3 => "left",
            4 => "failed",
            _ => "none",
        }
    }
}

/// A user event as `/v1/event/fire` and `/v1/event/list` return it (Consul's shape).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserEventJson {
    /// Unique ID (a UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// The event's name.
    pub name: String,
    /// Base64 of the payload, `None` for an empty payload.
    #[serde(default)]
    pub payload: Option<String>,
    /// Regex on node names, empty when unset.
    #[serde(default)]
    pub node_filter: String,
    /// Regex on service names, empty when unset.
    #[serde(default)]
    pub service_filter: String,
    /// Regex on service tags, empty when unset.
    #[serde(default)]
    pub tag_filter: String,
    /// Format version.
    #[serde(default)]
    pub version: u64,
    /// Lamport time at which the event was fired.
    #[serde(rename = "LTime", default)]
    pub ltime: u64,
}

/// The answer to a blocking query.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockingAnswer {
    /// `X-Consul-Index`, sent back as `?index=` by the next query (0 when the header is
    /// missing or not a number).
    pub index: u64,
    /// The decoded body; `None` when the agent answered 404 (the data is absent).
    pub body: Option<serde_json::Value>,
}

/// What can go wrong talking to the agent.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The agent could not be reached or the connection broke.
    #[error("cannot reach the agent at {addr}: {source}")]
    Unreachable {
        /// Where we tried.
        addr: String,
        /// Why it failed.
        source: reqwest::Error,
    },
    /// The agent answered with an error status.
    #[error("the agent answered {status}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The agent's plain-text reason.
        message: String,
    },
    /// The agent's answer could not be decoded.
    #[error("unexpected answer from the agent: {0}")]
    Decode(String),
}

/// A client of one agent's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// The datacenter KV requests name (`?dc=`), when not the agent's own.
    dc: Option<String>,
}

impl ApiClient {
    /// A client of the agent at `addr` (`127.0.0.1:8500` or `http://127.0.0.1:8500`).
    pub fn new(addr: &str) -> Result<ApiClient, ClientError> {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", addr.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| ClientError::Unreachable {
                addr: base.clone(),
                source,
            })?;
        Ok(ApiClient {
            base,
            http,
            dc: None,
        })
    }

    /// The same client, its KV requests sent to datacenter `dc` (`?dc=`) when given.
    pub fn in_datacenter(mut self, dc: Option<String>) -> ApiClient {
        self.dc = dc.filter(|dc| !dc.is_empty());
        self
    }

    /// The URL of a KV key.
    fn kv_url(&self, key: &str, query: &str) -> String {
        let mut url = format!("{}/v1/kv/{}", self.base, encode_key(key));
        let mut separator = '?';
        if !query.is_empty() {
            url.push(separator);
            url.push_str(query);
            separator = '&';
        }
        if let Some(dc) = &self.dc {
            url.push(separator);
            url.push_str("dc=");
            url.push_str(&encode_component(dc));
        }
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                addr: self.base.clone(),
                source,
            })
    }

    async fn body_text(&self, response: reqwest::Response) -> Result<String, ClientError> {
        response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                addr: self.base.clone(),
                source,
            })
    }

    /// Turns an error status into [`ClientError::Status`].
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let message = self.body_text(response).await.unwrap_or_default();
        Err(ClientError::Status {
            status: status.as_u16(),
            message: message.trim().to_string(),
        })
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let text = self.body_text(response).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::Decode(format!("{e}: {text}")))
    }

    /// `PUT /v1/kv/<key>`; `Ok(false)` when a check-and-set did not apply.
    pub async fn kv_put(
        &self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<bool, ClientError> {
        let mut query = format!("flags={flags}");
        if let Some(index) = cas {
            query.push_str(&format!("&cas={index}"));
        }
        let response = self
            .send(self.http.put(self.kv_url(key, &query)).body(value))
            .await?;
        let response = self.check(response).await?;
        self.json(response).await
    }

    /// `GET /v1/kv/<key>` (`?recurse` when `recurse`); an empty list when absent.
    pub async fn kv_get(&self, key: &str, recurse: bool) -> Result<Vec<KvPair>, ClientError> {
        let query = if recurse { "recurse" } else { "" };
        let response = self.send(self.http.get(self.kv_url(key, query))).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let response = self.check(response).await?;
        self.json(response).await
    }

    /// `GET /v1/kv/<prefix>?keys&separator=<sep>`.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let query = match separator {
            Some(sep) => format!("keys&separator={}", encode_key(sep)),
            None => "keys".to_string(),
        };
        let response = self
            .send(self.http.get(self.kv_url(prefix, &query)))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let response = self.check(response).await?;
        self.json(response).await
    }

    /// `DELETE /v1/kv/<key>` (`?recurse` when `recurse`).
    pub async fn kv_delete(&self, key: &str, recurse: bool) -> Result<bool, ClientError> {
        let query = if recurse { "recurse" } else { "" };
        let response = self.send(self.http.delete(self.kv_url(key, query))).await?;
        let response = self.check(response).await?;
        self.json(response).await
    }

    /// `PUT <path>` with an empty body; the answer's body as text.
    pub async fn put_empty(&self, path: &str) -> Result<String, ClientError> {
        let response = self
            .send(self.http.put(format!("{}{}", self.base, path)))
            .await?;
        let response = self.check(response).await?;
        self.body_text(response).await
    }

    /// `GET /v1/agent/members` (`?wan` for the WAN pool).
    pub async fn members(&self, wan: bool) -> Result<Vec<MemberJson>, ClientError> {
        let path = if wan {
            "/v1/agent/members?wan"
        } else {
            "/v1/agent/members"
        };
        let response = self
            .send(self.http.get(format!("{}{}", self.base, path)))
            .await?;
        let response = self.check(response).await?;
        self.json(response).await
    }

    /// `PUT /v1/event/fire/<name>` with `payload` as the body (fired in datacenter `dc`
    /// when given): the event as fired.
    pub async fn fire_event(
        &self,
        name: &str,
        payload: Vec<u8>,
        filter: &events::user::EventFilter,
        dc: Option<&str>,
    ) -> Result<UserEventJson, ClientError> {
        let mut url = format!("{}/v1/event/fire/{}", self.base, encode_component(name));
        let dc = dc.map(str::to_string);
        let filters = [
            ("node", &filter.node),
            ("service", &filter.service),
            ("tag", &filter.tag),
            ("dc", &dc),
        ];
        let mut separator = '?';
        for (param, value) in filters {
            if let Some(value) = value {
                url.push(separator);
                url.push_str(param);
                url.push('=');
                url.push_str(&encode_component(value));
                separator = '&';
            }
        }
        let response = self.send(self.http.put(url).body(payload)).await?;
        let response = self.check(response).await?;
        self.json(response).await
    }

    /// `GET <path>` as a blocking query: with `index=<index>&wait=<wait>` unless `index`
    /// is 0, which asks for the current data at once. A 404 is an absent body, any other
    /// error status is [`ClientError::Status`].
    pub async fn get_blocking(
        &self,
        path: &str,
        index: u64,
        wait: Duration,
    ) -> Result<BlockingAnswer, ClientError> {
        let mut url = format!("{}{}", self.base, path);
        if index > 0 {
            url.push(if path.contains('?') { '&' } else { '?' });
            url.push_str(&format!("index={index}&wait={}ms", wait.as_millis()));
        }
        // The agent may add up to wait/16 of jitter; leave room for it and a slow answer.
        let timeout = wait + wait / 16 + BLOCKING_SLACK;
        let response = self.send(self.http.get(url).timeout(timeout)).await?;
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(BlockingAnswer { index, body: None });
        }
        let response = self.check(response).await?;
        let body = self.json(response).await?;
        Ok(BlockingAnswer {
            index,
            body: Some(body),
        })
    }

    /// `GET <path>` decoded as JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let response = self
            .send(self.http.get(format!("{}{}", self.base, path)))
            .await?;
        let response = self.check(response).await?;
        self.json(response).await
    }
}

/// Time a blocking query may take beyond its wait before the client gives up on it.
const BLOCKING_SLACK: Duration = Duration::from_secs(10);

/// Percent-encodes a key for a URL path, keeping `/` and unreserved characters.
pub fn encode_key(key: &str) -> String {
    encode(key, b"/")
}

/// Percent-encodes one path segment or query value: every byte but the unreserved ones
/// (so `/`, `&`, `=`, `+`, `?` and `#` are encoded).
pub fn encode_component(text: &str) -> String {
    encode(text, b"")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || keep.contains(&byte)
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_paths() {
        assert_eq!(encode_key("a/b-c_d.e~"), "a/b-c_d.e~");
        assert_eq!(encode_key("a b#c?d%"), "a%20b%23c%3Fd%25");
        assert_eq!(encode_key("é"), "%C3%A9");
    }

    #[test]
    fn components_are_encoded_whole() {
        assert_eq!(encode_component("deploy-v1.2_x~"), "deploy-v1.2_x~");
        assert_eq!(encode_component("a/b c"), "a%2Fb%20c");
        assert_eq!(
            encode_component("^web$|a+b&c=d?#"),
            "%5Eweb%24%7Ca%2Bb%26c%3Dd%3F%23"
        );
    }

    #[test]
    fn kv_urls_name_the_datacenter_when_one_is_chosen() {
        let client = ApiClient::new("127.0.0.1:8500").unwrap();
        assert_eq!(client.kv_url("a", ""), "http://127.0.0.1:8500/v1/kv/a");
        let client = client.in_datacenter(Some("dc 2".into()));
        assert_eq!(
            client.kv_url("a", ""),
            "http://127.0.0.1:8500/v1/kv/a?dc=dc%202"
        );
        assert_eq!(
            client.kv_url("a", "recurse"),
            "http://127.0.0.1:8500/v1/kv/a?recurse&dc=dc%202"
        );
    }

    #[test]
    fn addresses_become_base_urls() {
        assert_eq!(
            ApiClient::new("127.0.0.1:8500").unwrap().base,
            "http://127.0.0.1:8500"
        );
        assert_eq!(
            ApiClient::new("http://127.0.0.1:1/").unwrap().base,
            "http://127.0.0.1:1"
        );
    }
}
