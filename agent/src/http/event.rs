//! `/v1/event/...`: user events (fire, list) and a live stream of the event bus.
//!
//! Firing and listing follow Consul's `agent/event_endpoint.go`: the body is the raw
//! payload, the answer is the event as JSON with a base64 payload, and the list's
//! blocking-query index is derived from the newest listed event's ID. The stream is this
//! project's own: a server-sent-events feed of the agent's bus, for dashboards and
//! scripts.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use events::{Event, EventFilter, Received, UserEvent};
use futures::Stream;
use serde::Serialize;

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, json, read_body};
use crate::gossip::{FireRequest, GossipError};

/// Bytes of request body read at most: the largest limit an agent can be configured with.
const MAX_FIRE_BODY: usize = events::user::MAX_EVENT_SIZE_LIMIT;

/// How often an idle stream sends a comment, so proxies and clients see it is alive.
pub const STREAM_HEARTBEAT: Duration = Duration::from_secs(15);

/// A user event as Consul's JSON shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventJson<'a> {
    #[serde(rename = "ID")]
    id: String,
    name: &'a str,
    /// Standard padded base64; `null` when empty.
    payload: Option<String>,
    node_filter: &'a str,
    service_filter: &'a str,
    tag_filter: &'a str,
    version: u8,
    #[serde(rename = "LTime")]
    ltime: u64,
}

impl<'a> From<&'a UserEvent> for EventJson<'a> {
    fn from(event: &'a UserEvent) -> Self {
        EventJson {
            id: event.id.to_string(),
            name: &event.name,
            payload: (!event.payload.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&event.payload)),
            node_filter: event.filter.node.as_deref().unwrap_or_default(),
            service_filter: event.filter.service.as_deref().unwrap_or_default(),
            tag_filter: event.filter.tag.as_deref().unwrap_or_default(),
            version: event.version,
            ltime: event.ltime,
        }
    }
}

/// `PUT /v1/event/fire/<name>?node=&service=&tag=`: fires a user event with the body as
/// payload.
pub async fn fire(
    State(state): State<ApiState>,
    name: Option<Path<String>>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name.map(|Path(n)| n).unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing name"));
    }
    let params = Params::parse(query.as_deref());
    let payload = read_body(body, MAX_FIRE_BODY, |limit| {
        format!("Event payload too large: more than {limit} bytes")
    })
    .await?;
    let filter_param = |name: &str| params.get(name).filter(|v| !v.is_empty()).map(String::from);
    let request = FireRequest {
        name,
        payload,
        filter: EventFilter {
            node: filter_param("node"),
            service: filter_param("service"),
            tag: filter_param("tag"),
        },
    };
    let event = state.inner.gossip.fire(request).await.map_err(fire_error)?;
    Ok(json(&EventJson::from(&event)))
}

fn fire_error(error: GossipError) -> ApiError {
    if error.is_too_large() {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string());
    }
    match error {
        GossipError::Event(e) => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other.to_string()),
    }
}

/// `GET /v1/event/list?name=`: the last user events this agent saw, oldest first;
/// blocking with `?index=` until the list changes.
pub async fn list(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let name = params.get("name").filter(|n| !n.is_empty());
    let log = state.inner.gossip.events();
    let list = match params.u64("index")?.filter(|i| *i > 0) {
        Some(index) => {
            let wait = super::blocking_wait(&params)?;
            log.wait(name, index, wait).await
        }
        None => log.list(name),
    };
    let body: Vec<EventJson> = list.events.iter().map(EventJson::from).collect();
    Ok((index_header(list.index), json(&body)).into_response())
}

/// Just `X-Consul-Index` (never 0), for reads answered by the agent itself.
pub(super) fn index_header(index: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-consul-index"),
        HeaderValue::from(index.max(1)),
    );
    headers
}

/// The kinds of bus event a stream can ask for with `?type=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamTypes {
    user: bool,
    member: bool,
    kv: bool,
    health: bool,
}

impl StreamTypes {
    /// `user,member,kv,health` (any subset, comma separated); all when absent.
    fn parse(text: Option<&str>) -> Result<StreamTypes, ApiError> {
        let Some(text) = text.filter(|t| !t.is_empty()) else {
            return Ok(StreamTypes {
                user: true,
                member: true,
                kv: true,
                health: true,
            });
        };
        let mut types = StreamTypes {
            user: false,
            member: false,
            kv: false,
            health: false,
        };
        for part in text.split(',').map(str::trim) {
            match part {
                "user" => types.user = true,
                "member" => types.member = true,
                "kv" => types.kv = true,
                "health" => types.health = true,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown event type {other:?}: want user, member, kv or health"
                    )));
                }
            }
        }
        Ok(types)
    }
}

/// What a stream passes on.
#[derive(Debug, Clone)]
struct StreamFilter {
    types: StreamTypes,
    /// Only user events of this name.
    name: Option<String>,
}

impl StreamFilter {
    fn wants(&self, event: &Event) -> bool {
        match event {
            Event::User(user) => {
                self.types.user && self.name.as_deref().is_none_or(|name| user.name == name)
            }
            Event::Member(_) => self.types.member,
            Event::Kv { .. } => self.types.kv,
            Event::Health { .. } => self.types.health,
        }
    }
}

/// One bus event as a server-sent event: its type as the SSE event name, its JSON as the
/// data (user events in Consul's shape).
fn sse_event(event: &Event) -> SseEvent {
    let (kind, data) = match event {
        Event::User(user) => ("user", serde_json::to_string(&EventJson::from(user))),
        Event::Member(_) => ("member", serde_json::to_string(event)),
        Event::Kv { .. } => ("kv", serde_json::to_string(event)),
        Event::Health { .. } => ("health", serde_json::to_string(event)),
    };
    match data {
        Ok(data) => SseEvent::default().event(kind).data(data),
        // Serializing these types cannot fail; say so in the stream if it ever does.
        Err(e) => SseEvent::default().comment(format!("event not encoded: {e}")),
    }
}

/// `GET /v1/event/stream?type=user,member,kv,health&name=`: the agent's bus as
/// server-sent events, from now on, with a heartbeat comment every 15 s. A client that
/// falls too far behind gets a `lagged` event saying how many events it missed.
pub async fn stream(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let filter = StreamFilter {
        types: StreamTypes::parse(params.get("type"))?,
        name: params
            .get("name")
            .filter(|n| !n.is_empty())
            .map(String::from),
    };
    let subscription = state.inner.bus.subscribe();
    let shutdown = state.inner.shutdown.clone();
    let events = bus_stream(subscription, filter, shutdown);
    Ok(Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(STREAM_HEARTBEAT)
                .text("heartbeat"),
        )
        .into_response())
}

fn bus_stream(
    subscription: events::Subscription,
    filter: StreamFilter,
    shutdown: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(
        (subscription, filter, shutdown),
        |(mut subscription, filter, shutdown)| async move {
            loop {
                let received = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    received = subscription.recv() => received,
                };
                let item = match received {
                    Received::Event(event) if filter.wants(&event) => sse_event(&event),
                    Received::Event(_) => continue,
                    Received::Lagged(missed) => SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"Missed\":{missed}}}")),
                    Received::Closed => return None,
                };
                return Some((Ok(item), (subscription, filter, shutdown)));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_json_shape() {
        let mut event = UserEvent::new(
            UserEvent::new_id([7; 16]),
            "deploy",
            b"v42".to_vec(),
            9,
            "n1",
        );
        event.filter.node = Some("^web".into());
        let value = serde_json::to_value(EventJson::from(&event)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "ID": event.id.to_string(),
                "Name": "deploy",
                "Payload": "djQy",
                "NodeFilter": "^web",
                "ServiceFilter": "",
                "TagFilter": "",
                "Version": 1,
                "LTime": 9,
            })
        );
        event.payload.clear();
        let value = serde_json::to_value(EventJson::from(&event)).unwrap();
        assert!(value["Payload"].is_null());
    }

    #[test]
    fn stream_types_parse_and_filter() {
        assert!(StreamTypes::parse(Some("user,bogus")).is_err());
        let filter = StreamFilter {
            types: StreamTypes::parse(Some("user, kv")).unwrap(),
            name: Some("deploy".into()),
        };
        let deploy = UserEvent::new(UserEvent::new_id([1; 16]), "deploy", vec![], 1, "n1");
        let restart = UserEvent::new(UserEvent::new_id([2; 16]), "restart", vec![], 2, "n1");
        assert!(filter.wants(&Event::User(deploy)));
        assert!(!filter.wants(&Event::User(restart)));
        assert!(filter.wants(&Event::Kv {
            key: "a".into(),
            modify_index: 3,
            deleted: false,
            recurse: false,
        }));
        assert!(!filter.wants(&Event::Health {
            node: "n1".into(),
            check: "serfHealth".into(),
            status: events::HealthStatus::Passing,
        }));
        let all = StreamTypes::parse(None).unwrap();
        assert!(all.user && all.member && all.kv && all.health);
    }
}
