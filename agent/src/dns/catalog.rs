//! Where DNS answers come from: the [`DnsCatalog`] trait, and [`HttpCatalog`], which
//! asks the agent's own HTTP API (in process, without a socket).

use std::fmt::Write as _;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use serde::Deserialize;
use tower::ServiceExt;

/// The largest HTTP answer read for one DNS query.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One passing instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The node the instance runs on.
    pub node: String,
    /// The node's address (an IP, or in principle a host name).
    pub node_address: String,
    /// The service's own address; empty when it uses the node's.
    pub service_address: String,
    /// The service's port.
    pub port: u16,
}

impl Instance {
    /// The address clients should connect to: the service's own if it has one, else the
    /// node's.
    pub fn address(&self) -> &str {
        if self.service_address.is_empty() {
            &self.node_address
        } else {
            &self.service_address
        }
    }
}

/// The catalog could not answer (answered SERVFAIL).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CatalogError(pub String);

/// What DNS answers from. Object-safe, so the server holds an `Arc<dyn DnsCatalog>`.
pub trait DnsCatalog: Send + Sync + 'static {
    /// The passing instances of `service` in datacenter `dc`, only those tagged `tag`
    /// when it is given. An unknown service has no instances.
    fn service<'a>(
        &'a self,
        dc: &'a str,
        service: &'a str,
        tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, CatalogError>>;

    /// The address of `node` in datacenter `dc`, `None` for an unknown node.
    fn node<'a>(
        &'a self,
        dc: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CatalogError>>;
}

/// A [`DnsCatalog`] that asks the agent's HTTP API router (Consul's
/// `/v1/health/service/<name>?passing` and `/v1/catalog/node/<node>`), with `stale`
/// reads so that any server answers.
#[derive(Clone)]
pub struct HttpCatalog {
    router: axum::Router,
    local_dc: String,
}

impl HttpCatalog {
    /// Asks `router`, the HTTP API of an agent of datacenter `local_dc`; queries for
    /// other datacenters carry `dc=`.
    pub fn new(router: axum::Router, local_dc: String) -> HttpCatalog {
        HttpCatalog { router, local_dc }
    }

    /// `GETs` `uri` and returns the body of a 200 answer.
    async fn get(&self, uri: String) -> Result<bytes::Bytes, CatalogError> {
        let request = Request::get(&uri)
            .body(Body::empty())
            .map_err(|e| CatalogError(format!("bad request {uri}: {e}")))?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|e| CatalogError(format!("reading the answer to {uri}: {e}")))?;
        if parts.status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(CatalogError(format!(
                "GET {uri}: {}: {}",
                parts.status,
                text.trim()
            )));
        }
        Ok(body)
    }

    fn dc_param(&self, dc: &str) -> String {
        if dc == self.local_dc {
            String::new()
        } else {
            format!("&dc={}", encode(dc))
        }
    }
}

impl DnsCatalog for HttpCatalog {
    fn service<'a>(
        &'a self,
        dc: &'a str,
        service: &'a str,
        tag: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Instance>, CatalogError>> {
        Box::pin(async move {
            let mut uri = format!("/v1/health/service/{}?passing&stale", encode(service));
            if let Some(tag) = tag {
                let _ = write!(uri, "&tag={}", encode(tag));
            }
            uri.push_str(&self.dc_param(dc));
            let body = self.get(uri).await?;
            let entries: Vec<HealthEntry> = serde_json::from_slice(&body)
                .map_err(|e| CatalogError(format!("bad health answer for {service}: {e}")))?;
            Ok(entries
                .into_iter()
                .filter(|entry| entry.checks.iter().all(|c| c.status == "passing"))
                .filter(|entry| {
                    // The HTTP API filters by tag already; tags compare case-insensitively.
                    tag.is_none_or(|tag| {
                        entry
                            .service
                            .tags
                            .iter()
                            .any(|t| t.eq_ignore_ascii_case(tag))
                    })
                })
                .map(|entry| Instance {
                    node: entry.node.node,
                    node_address: entry.node.address,
                    service_address: entry.service.address,
                    port: entry.service.port,
                })
                .collect())
        })
    }

    fn node<'a>(
        &'a self,
        dc: &'a str,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, CatalogError>> {
        Box::pin(async move {
            let uri = format!(
                "/v1/catalog/node/{}?stale{}",
                encode(node),
                self.dc_param(dc)
            );
            let body = self.get(uri).await?;
            let answer: Option<CatalogNode> = serde_json::from_slice(&body)
                .map_err(|e| CatalogError(format!("bad catalog answer for node {node}: {e}")))?;
            Ok(answer.and_then(|a| a.node).map(|n| n.address))
        })
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// An entry of `/v1/health/service/<name>`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: NodeJson,
    service: ServiceJson,
    #[serde(default)]
    checks: Vec<CheckJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeJson {
    node: String,
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceJson {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default, deserialize_with = "null_as_empty")]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckJson {
    #[serde(default)]
    status: String,
}

/// `/v1/catalog/node/<node>`: `{"Node": {...}, "Services": {...}}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogNode {
    #[serde(default)]
    node: Option<NodeJson>,
}

/// Consul writes `"Tags": null` for a service without tags.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, RawQuery};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;

    /// A fake HTTP API that serves Consul's JSON shapes and records the queries asked.
    pub(crate) fn fake_api(asked: Arc<Mutex<Vec<String>>>) -> axum::Router {
        let health_asked = asked.clone();
        axum::Router::new()
            .route(
                "/v1/health/service/{name}",
                get(move |Path(name): Path<String>, RawQuery(query): RawQuery| {
                    let asked = health_asked.clone();
                    async move {
                        if let Ok(mut asked) = asked.lock() {
                            asked.push(format!("{name}?{}", query.unwrap_or_default()));
                        }
                        match name.as_str() {
                            "web" => (
                                StatusCode::OK,
                                r#"[
                                  {"Node": {"ID": "x", "Node": "n1", "Address": "10.0.0.1",
                                            "Datacenter": "dc1"},
                                   "Service": {"ID": "web1", "Service": "web", "Tags": ["v1"],
                                               "Address": "", "Port": 8080},
                                   "Checks": [{"Status": "passing"}]},
                                  {"Node": {"Node": "n2", "Address": "10.0.0.2"},
                                   "Service": {"ID": "web2", "Service": "web", "Tags": null,
                                               "Address": "fd00::2", "Port": 8081},
                                   "Checks": []},
                                  {"Node": {"Node": "n3", "Address": "10.0.0.3"},
                                   "Service": {"ID": "web3", "Service": "web", "Tags": [],
                                               "Address": "", "Port": 8082},
                                   "Checks": [{"Status": "critical"}]}
                                ]"#,
                            )
                                .into_response(),
                            "broken" => {
                                (StatusCode::INTERNAL_SERVER_ERROR, "no leader").into_response()
                            }
                            _ => (StatusCode::OK, "[]").into_response(),
                        }
                    }
                }),
            )
            .route(
                "/v1/catalog/node/{name}",
                get(move |Path(name): Path<String>, RawQuery(query): RawQuery| {
                    let asked = asked.clone();
                    async move {
                        if let Ok(mut asked) = asked.lock() {
                            asked.push(format!("node {name}?{}", query.unwrap_or_default()));
                        }
                        if name == "n1" {
                            r#"{"Node": {"ID": "x", "Node": "n1", "Address": "10.0.0.1"},
                                "Services": {}}"#
                        } else {
                            "null"
                        }
                    }
                }),
            )
    }

    #[tokio::test]
    async fn http_catalog_reads_consul_shapes() {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let catalog = HttpCatalog::new(fake_api(asked.clone()), "dc1".to_string());

        let instances = catalog.service("dc1", "web", None).await.unwrap();
        assert_eq!(
            instances,
            vec![
                Instance {
                    node: "n1".into(),
                    node_address: "10.0.0.1".into(),
                    service_address: String::new(),
                    port: 8080,
                },
                Instance {
                    node: "n2".into(),
                    node_address: "10.0.0.2".into(),
                    service_address: "fd00::2".into(),
                    port: 8081,
                },
            ],
            "the instance with a critical check is left out"
        );
        assert_eq!(instances[0].address(), "10.0.0.1");
        assert_eq!(instances[1].address(), "fd00::2");

        let tagged = catalog.service("dc2", "web", Some("v1")).await.unwrap();
        assert_eq!(tagged.len(), 1);
        assert_eq!(tagged[0].node, "n1");

        assert!(catalog.service("dc1", "db", None).await.unwrap().is_empty());
        let err = catalog.service("dc1", "broken", None).await.unwrap_err();
        assert!(err.0.contains("500"), "{err}");

        assert_eq!(
            catalog.node("dc1", "n1").await.unwrap().as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(catalog.node("dc1", "nope").await.unwrap(), None);

        let asked = asked.lock().unwrap().clone();
        assert_eq!(
            asked,
            vec![
                "web?passing&stale",
                "web?passing&stale&tag=v1&dc=dc2",
                "db?passing&stale",
                "broken?passing&stale",
                "node n1?stale",
                "node nope?stale",
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_endpoint_is_an_error() {
        let catalog = HttpCatalog::new(axum::Router::new(), "dc1".to_string());
        assert!(catalog.service("dc1", "web", None).await.is_err());
        assert!(catalog.node("dc1", "n1").await.is_err());
    }

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(encode("web-1_a.b~"), "web-1_a.b~");
        assert_eq!(encode("a b/c?&"), "a%20b%2Fc%3F%26");
    }
}
