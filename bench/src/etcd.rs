//! Just enough of etcd for `bench kv`: its v3 gRPC messages written by hand (so the
//! build needs no `protoc`), a client for Put, Range, Status and Watch, and a 3-member
//! cluster started from Debian's `etcd` binary.
//!
//! The messages carry only the fields the benchmark uses; the field numbers are those
//! of etcd's `etcdserverpb/rpc.proto` and `mvccpb/kv.proto` (protobuf skips the fields a
//! message does not declare, so the shorter messages decode etcd's answers).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use crate::cluster::Cluster;

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `etcdserverpb.PutRequest` (without `ignore_value`, `ignore_lease`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub lease: i64,
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, optional, tag = "2")]
    pub prev_kv: Option<KeyValue>,
}

/// `etcdserverpb.RangeRequest` (up to `serializable`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(int32, tag = "5")]
    pub sort_order: i32,
    #[prost(int32, tag = "6")]
    pub sort_target: i32,
    /// A read answered by the member from its own state, without asking the leader
    /// (etcd's stale read); `false` is etcd's default, linearizable read.
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "3")]
    pub more: bool,
    #[prost(int64, tag = "4")]
    pub count: i64,
}

/// `etcdserverpb.StatusRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// `etcdserverpb.StatusResponse` (up to `raftTerm`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(int64, tag = "3")]
    pub db_size: i64,
    /// The member id of the leader (0: none).
    #[prost(uint64, tag = "4")]
    pub leader: u64,
    #[prost(uint64, tag = "5")]
    pub raft_index: u64,
    #[prost(uint64, tag = "6")]
    pub raft_term: u64,
}

/// `etcdserverpb.WatchRequest`: a oneof of which only creation is used.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(oneof = "WatchRequestUnion", tags = "1")]
    pub request_union: Option<WatchRequestUnion>,
}

/// `WatchRequest.request_union` (without `cancel_request` = 2, `progress_request` = 3).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WatchRequestUnion {
    #[prost(message, tag = "1")]
    CreateRequest(WatchCreateRequest),
}

/// `etcdserverpb.WatchCreateRequest` (without `filters` = 5).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// 0: from the next revision on.
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
    #[prost(bool, tag = "6")]
    pub prev_kv: bool,
    /// 0: chosen by etcd.
    #[prost(int64, tag = "7")]
    pub watch_id: i64,
    #[prost(bool, tag = "8")]
    pub fragment: bool,
}

/// `etcdserverpb.WatchResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(int64, tag = "2")]
    pub watch_id: i64,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(bool, tag = "7")]
    pub fragment: bool,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event`; `kind` 0 is a put, 1 a delete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

/// A client of one etcd member over one HTTP/2 connection (cheap to clone; clones share
/// the connection).
#[derive(Clone)]
pub struct EtcdClient {
    grpc: Grpc<Channel>,
}

impl EtcdClient {
    /// Connects to the member whose client URL is `http://addr`.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<EtcdClient> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {addr}"))?;
        Ok(EtcdClient {
            grpc: Grpc::new(channel),
        })
    }

    async fn unary<Q, R>(&mut self, path: &'static str, request: Q) -> anyhow::Result<R>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await?;
        let response = self
            .grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                ProstCodec::<Q, R>::default(),
            )
            .await?;
        Ok(response.into_inner())
    }

    /// `KV/Put`.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<PutResponse> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        self.unary("/etcdserverpb.KV/Put", request).await
    }

    /// `KV/Range` of one key: linearizable unless `serializable`.
    pub async fn get(&mut self, key: &[u8], serializable: bool) -> anyhow::Result<RangeResponse> {
        let request = RangeRequest {
            key: key.to_vec(),
            serializable,
            ..Default::default()
        };
        self.unary("/etcdserverpb.KV/Range", request).await
    }

    /// `Maintenance/Status` of this member.
    pub async fn status(&mut self) -> anyhow::Result<StatusResponse> {
        self.unary("/etcdserverpb.Maintenance/Status", StatusRequest {})
            .await
    }

    /// Opens a `Watch/Watch` stream that creates one watch of `key` per entry of
    /// `count`, and returns its answers.
    pub async fn watch(
        &mut self,
        key: &[u8],
        count: usize,
    ) -> anyhow::Result<tonic::Streaming<WatchResponse>> {
        let create = WatchRequest {
            request_union: Some(WatchRequestUnion::CreateRequest(WatchCreateRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        };
        // The request side stays open (pending) after the creations: closing it would
        // end the stream.
        let requests = futures::StreamExt::chain(
            futures::stream::iter(std::iter::repeat_n(create, count)),
            futures::stream::pending(),
        );
        self.grpc.ready().await?;
        let response = self
            .grpc
            .streaming(
                tonic::Request::new(requests),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                ProstCodec::<WatchRequest, WatchResponse>::default(),
            )
            .await?;
        Ok(response.into_inner())
    }
}

/// The `etcd` binary on PATH.
pub fn etcd_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .context("etcd not found: install Debian's etcd-server (apt-get install etcd-server)")
}

/// `etcd --version`'s first line, e.g. `etcd Version: 3.4.23` → `3.4.23`.
pub fn etcd_version(etcd: &PathBuf) -> String {
    Command::new(etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let first = text.lines().next()?.to_string();
            Some(
                first
                    .strip_prefix("etcd Version:")
                    .map(|v| v.trim().to_string())
                    .unwrap_or(first),
            )
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The client address of an etcd member on `ip`.
pub fn client_addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 2379)
}

/// Starts one etcd member per entry of `ips` (named `etcd-1`, ...), as one cluster,
/// their data under the cluster's directory and their processes stopped with it. Plain
/// HTTP between members and to clients; etcd fsyncs its WAL on every commit.
pub fn start_members(cluster: &mut Cluster, etcd: &PathBuf, ips: &[IpAddr]) -> anyhow::Result<()> {
    let name = |i: usize| format!("etcd-{}", i + 1);
    let initial: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("{}=http://{ip}:2380", name(i)))
        .collect();
    for (i, ip) in ips.iter().enumerate() {
        let mut command = Command::new(etcd);
        let client = format!("http://{}", client_addr(*ip));
        let peer = format!("http://{ip}:2380");
        command
            .arg("--name")
            .arg(name(i))
            .arg("--data-dir")
            .arg(cluster.dir().join(name(i)))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "bench-kv"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        cluster.start_other(&name(i), command)?;
    }
    Ok(())
}

/// Waits until every member answers a linearizable read (so a leader is elected and
/// every member reaches it) and returns the index in `ips` of the leader.
pub async fn wait_ready(ips: &[IpAddr], limit: Duration) -> anyhow::Result<usize> {
    let start = Instant::now();
    let mut last_error = String::new();
    while start.elapsed() < limit {
        match ready_leader(ips).await {
            Ok(Some(leader)) => return Ok(leader),
            Ok(None) => last_error = "no leader yet".into(),
            Err(e) => last_error = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the etcd cluster was not ready after {limit:?}: {last_error}")
}

async fn ready_leader(ips: &[IpAddr]) -> anyhow::Result<Option<usize>> {
    let mut leader = None;
    for (i, ip) in ips.iter().enumerate() {
        let mut client = EtcdClient::connect(client_addr(*ip)).await?;
        client.get(b"bench/ready", false).await?;
        let status = client.status().await?;
        let me = status.header.map(|h| h.member_id).unwrap_or_default();
        if status.leader != 0 && status.leader == me {
            leader = Some(i);
        }
    }
    Ok(leader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_put_request_has_protobufs_layout() {
        let request = PutRequest {
            key: b"a".to_vec(),
            value: b"b".to_vec(),
            ..Default::default()
        };
        // field 1 (key), length-delimited, 1 byte "a"; field 2 (value), 1 byte "b".
        assert_eq!(
            request.encode_to_vec(),
            [0x0a, 0x01, 0x61, 0x12, 0x01, 0x62]
        );
        assert_eq!(
            PutRequest::decode(&[0x0a, 0x01, 0x61, 0x12, 0x01, 0x62][..]).unwrap(),
            request
        );
    }

    #[test]
    fn a_serializable_range_sets_field_7() {
        let request = RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
            ..Default::default()
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 0x01, 0x6b, 0x38, 0x01]);
    }

    #[test]
    fn a_watch_creation_is_field_1_of_the_oneof() {
        let request = WatchRequest {
            request_union: Some(WatchRequestUnion::CreateRequest(WatchCreateRequest {
                key: b"w".to_vec(),
                ..Default::default()
            })),
        };
        // field 1 (create_request), 3 bytes: field 1 (key), 1 byte "w".
        assert_eq!(request.encode_to_vec(), [0x0a, 0x03, 0x0a, 0x01, 0x77]);
    }

    #[test]
    fn messages_round_trip() {
        let response = WatchResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            }),
            watch_id: 5,
            created: true,
            events: vec![Event {
                kind: 0,
                kv: Some(KeyValue {
                    key: b"w".to_vec(),
                    value: b"w7".to_vec(),
                    mod_revision: 9,
                    ..Default::default()
                }),
                prev_kv: None,
            }],
            ..Default::default()
        };
        let bytes = response.encode_to_vec();
        assert_eq!(WatchResponse::decode(&bytes[..]).unwrap(), response);

        let range = RangeResponse {
            header: None,
            kvs: vec![KeyValue {
                key: b"k".to_vec(),
                value: vec![7; 256],
                ..Default::default()
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            RangeResponse::decode(&range.encode_to_vec()[..]).unwrap(),
            range
        );
    }

    #[test]
    fn a_status_answer_with_unknown_fields_decodes() {
        // StatusResponse with leader = 5 (field 4) and dbSizeInUse = 9 (field 9, not
        // declared here: skipped).
        let bytes = [0x20, 0x05, 0x48, 0x09];
        let status = StatusResponse::decode(&bytes[..]).unwrap();
        assert_eq!(status.leader, 5);
    }
}
