//! `agent run`: build the components from a [`Config`] and run them until shutdown.
//!
//! Order of start: data dir → node id → mTLS material → LAN QUIC endpoint (with the RPC
//! router) → event handlers → local services and checks → LAN gossip → Raft server,
//! WAN endpoint and WAN gossip (servers) → HTTP API → DNS (answered from the HTTP API) →
//! anti-entropy. Every task is
//! tracked and ends when the shutdown token fires; then the HTTP API drains, gossip saves
//! the member list, Raft stops and the endpoint closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use consensus::{RaftServer, ServerConfig, ServerNode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DataDir, TlsSource};
use crate::dns::{DnsServer, HttpCatalog};
use crate::gossip::members_file::MembersFile;
use crate::gossip::{Gossip, GossipConfig, standard_tags};
use crate::handlers::EventHandlers;
use crate::http::{self, ApiState, SelfInfo};
use crate::local::{LocalConfig, LocalState};
use crate::node_id;
use crate::servers::{self, ServerDuties};

use crate::raft::{QuicRaftTransport, Raft};
use crate::rpc::RpcRouter;
use crate::tls::{self, Role, TlsMaterial};
use crate::transport::{Transport, TransportConfig};
use crate::wan::{self, WanEndpoint};
use events::Bus;
use membership::{MembershipConfig, NodeIdentity};

/// The domain the DNS interface answers for (Consul's).
const DNS_DOMAIN: &str = "consul.";

/// Runs the agent described by `config` until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent = Agent::start(config, shutdown.clone()).await?;
    shutdown.cancelled().await;
    agent.stop().await;
    Ok(())
}

/// A running agent: its components and the tasks that serve them.
pub struct Agent {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    transport: Transport,
    wan_transport: Option<Transport>,
    raft: Option<Raft>,
    http_addr: SocketAddr,
    dns_addr: SocketAddr,
    lan_addr: SocketAddr,
    // Removed when the agent is dropped (a `--dev` agent without `--data-dir`).
    _temporary: Option<tempfile::TempDir>,
}

impl Agent {
    /// Starts every component of the agent described by `config`. The agent runs until
    /// `shutdown` is cancelled; then [`Agent::stop`] finishes the shutdown.
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Agent> {
        let (data_dir, temporary) = prepare_data_dir(&config.data_dir)?;
        let node_id = node_id::load_or_create(&data_dir)?;
        let tls = load_tls(&config)?;

        let tracker = TaskTracker::new();
        let router = Arc::new(RpcRouter::new(config.dc.clone()));
        let (transport, datagrams) = Transport::bind(
            TransportConfig::new(config.bind, tls::ALPN_LAN),
            &tls,
            router.clone(),
            shutdown.child_token(),
        )
        .with_context(|| format!("binding the LAN endpoint on {}", config.bind))?;
        let lan_addr = transport.local_addr();
        // With port 0 the advertised port is the one the system picked.
        let advertise = if config.advertise.port() == 0 {
            SocketAddr::new(config.advertise.ip(), lan_addr.port())
        } else {
            config.advertise
        };

        let bus = Bus::new();
        // Subscribed before gossip starts, so the first member events are handled.
        EventHandlers::new(
            config.event_handlers.clone(),
            config.event_handler_timeout,
            config.node.clone(),
        )
        .spawn(&bus, &tracker, shutdown.clone());
        let local = LocalState::start(
            LocalConfig {
                node: config.node.clone(),
                dc: config.dc.clone(),
                data_dir: data_dir.clone(),
                services: config.services.clone(),
                checks: config.checks.clone(),
                enable_script_checks: config.enable_script_checks,
            },
            bus.clone(),
            &tracker,
            shutdown.clone(),
        )
        .context("starting the local services and checks")?;
        // A server's WAN endpoint is bound first: its address goes into the LAN tags.
        let wan_endpoint = if config.server {
            Some(WanEndpoint::bind(&config, &tls, shutdown.child_token())?)
        } else {
            None
        };
        let generation = next_generation(&data_dir)?;
        let gossip = start_gossip(
            &config,
            &data_dir,
            node_id,
            generation,
            advertise,
            wan_endpoint.as_ref().map(|wan| wan.advertise),
            transport.clone(),
            datagrams,
            bus.clone(),
            local.service_tags(),
            &tracker,
            shutdown.clone(),
        )?;

        let raft = if config.server {
            let node = ServerNode {
                name: config.node.clone(),
                addr: advertise.to_string(),
            };
            let raft = start_raft(
                &config,
                &data_dir,
                node_id::raft_id(&node_id),
                node,
                &transport,
            )
            .await?;
            router.set_raft(raft.clone());
            tracker.spawn(crate::raft::publish_kv_changes(
                raft.kv().changes(),
                bus.clone(),
                shutdown.clone(),
            ));
            tracker.spawn(crate::raft::publish_health_changes(
                raft.catalog().changes(),
                config.node.clone(),
                bus.clone(),
                shutdown.clone(),
            ));
            // The other servers of the Raft configuration gossip on the same addresses:
            // rejoin through them too, in case the saved member list was empty.
            let raft_config = raft.membership();
            let raft_peers: Vec<SocketAddr> = raft_config
                .voters
                .iter()
                .chain(raft_config.learners.iter())
                .filter(|(id, _)| **id != raft.id())
                .filter_map(|(_, node)| node.addr.parse().ok())
                .collect();
            gossip.join_in_background(raft_peers, &tracker, shutdown.clone());
            let duties = ServerDuties {
                dc: config.dc.clone(),
                // A single expected server bootstraps at once, in `start_raft`.
                bootstrap_expect: config.bootstrap_expect.filter(|n| *n > 1),
                dead_server_cleanup: config.dead_server_cleanup,
                min_voters: config.bootstrap_expect.unwrap_or(1) as usize,
            };
            tracker.spawn(servers::run(
                duties,
                raft.clone(),
                gossip.clone(),
                transport.clone(),
                shutdown.clone(),
            ));
            Some(raft)
        } else {
            None
        };
        let (wan, wan_router) = match wan_endpoint {
            Some(endpoint) => {
                let router = endpoint.router.clone();
                let wan = endpoint.start_gossip(
                    &config,
                    &data_dir,
                    node_id,
                    generation,
                    bus.clone(),
                    &tracker,
                    shutdown.clone(),
                )?;
                tracker.spawn(wan::flood_joins(
                    gossip.clone(),
                    wan.clone(),
                    config.dc.clone(),
                    shutdown.clone(),
                ));
                (Some(wan), Some(router))
            }
            None => (None, None),
        };

        let listener = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("binding the HTTP API on {}", config.http))?;
        let http_addr = listener.local_addr()?;
        let state = ApiState::new(
            SelfInfo {
                node: config.node.clone(),
                dc: config.dc.clone(),
                node_id: node_id.to_string(),
                server: config.server,
                advertise,
            },
            raft.clone(),
            gossip.clone(),
            wan.clone(),
            bus.clone(),
            transport.clone(),
            local.clone(),
            shutdown.clone(),
        );
        let router_http = http::router(state);
        router.set_http(router_http.clone());
        if let Some(wan_router) = &wan_router {
            wan_router.set_http(router_http.clone());
        }
        let dns_addr = DnsServer::spawn(
            config.dns,
            DNS_DOMAIN,
            &config.dc,
            Arc::new(HttpCatalog::new(router_http.clone(), config.dc.clone())),
            &tracker,
            shutdown.clone(),
        )
        .with_context(|| format!("starting DNS on {}", config.dns))?;
        tracker.spawn(crate::anti_entropy::run(
            crate::anti_entropy::NodeFacts {
                node: config.node.clone(),
                id: node_id.to_string(),
                address: advertise.ip().to_string(),
            },
            local,
            router_http.clone(),
            shutdown.clone(),
        ));
        let http_shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = http::serve(listener, router_http, http_shutdown).await {
                tracing::warn!("HTTP API stopped with an error: {e}");
            }
        });
        tracker.close();

        tracing::info!(
            node = %config.node,
            dc = %config.dc,
            node_id = %node_id,
            server = config.server,
            lan = %lan_addr,
            wan = ?wan.as_ref().map(|wan| wan.transport.local_addr()),
            http = %http_addr,
            dns = %dns_addr,
            data_dir = %data_dir.display(),
            "agent running"
        );
        Ok(Agent {
            shutdown,
            tracker,
            transport,
            wan_transport: wan.map(|wan| wan.transport),
            raft,
            http_addr,
            dns_addr,
            lan_addr,
            _temporary: temporary,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the DNS interface listens (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// Where the LAN QUIC endpoint listens.
    pub fn lan_addr(&self) -> SocketAddr {
        self.lan_addr
    }

    /// Cancels the shutdown token (if it was not already) and waits until every
    /// component has stopped: the HTTP API drains, Raft stops, the endpoint closes.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tracing::info!("shutting down");
        self.tracker.wait().await;
        if let Some(raft) = self.raft
            && let Err(e) = raft.shutdown().await
        {
            tracing::warn!("stopping Raft: {e}");
        }
        self.transport.shutdown().await;
        if let Some(wan) = self.wan_transport {
            wan.shutdown().await;
        }
        tracing::info!("agent stopped");
    }
}

/// The gossip generation of this start: one above the last start's in either pool,
/// saved before gossip begins, so that this start supersedes every earlier one.
fn next_generation(data_dir: &Path) -> anyhow::Result<u64> {
    let mut saved = MembersFile::load(data_dir)?;
    let wan = MembersFile::load_from(&MembersFile::wan_path(data_dir))?;
    saved.generation = saved.generation.max(wan.generation) + 1;
    saved
        .save(data_dir)
        .context("saving the gossip generation")?;
    Ok(saved.generation)
}

/// Starts LAN gossip with this start's `generation`, joining `--join` and the members
/// saved before a restart.
#[allow(clippy::too_many_arguments)]
fn start_gossip(
    config: &Config,
    data_dir: &Path,
    node_id: uuid::Uuid,
    generation: u64,
    advertise: SocketAddr,
    wan_advertise: Option<SocketAddr>,
    transport: Transport,
    datagrams: crate::transport::DatagramReceiver,
    bus: Bus,
    services: tokio::sync::watch::Receiver<crate::local::ServiceTags>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<Gossip> {
    let saved = MembersFile::load(data_dir)?;
    let role = if config.server {
        membership::Role::Server
    } else {
        membership::Role::Client
    };
    let mut membership = MembershipConfig::lan(&config.dc, role);
    let mut tags = BTreeMap::new();
    if let Some(addr) = wan_advertise {
        tags.insert(wan::WAN_TAG.to_string(), addr.to_string());
    }
    membership.tags = standard_tags(&role.to_string(), &config.dc, &node_id, &tags);
    let mut join = config.join.clone();
    join.extend(saved.peers.iter().filter(|addr| **addr != advertise));
    join.dedup();
    let gossip_config = GossipConfig {
        me: NodeIdentity {
            name: config.node.clone(),
            addr: advertise,
            generation,
        },
        membership,
        join,
        members_file: MembersFile::path(data_dir),
        seed: uuid::Uuid::new_v4().as_u64_pair().0,
        event_ltime: saved.event_ltime,
        event_size_limit: config.event_size_limit,
        services,
    };
    Gossip::spawn(gossip_config, transport, datagrams, bus, tracker, shutdown)
        .context("starting gossip")
}

/// Creates the data dir (or a temporary one, removed when the guard drops).
fn prepare_data_dir(dir: &DataDir) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        DataDir::Persistent(path) => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating the data dir {}", path.display()))?;
            Ok((path.clone(), None))
        }
        DataDir::Temporary => {
            let temp = tempfile::Builder::new()
                .prefix("agent-dev-")
                .tempdir()
                .context("creating a temporary data dir")?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// Loads or makes the mTLS material and checks that it fits this agent.
fn load_tls(config: &Config) -> anyhow::Result<TlsMaterial> {
    let material = match &config.tls {
        TlsSource::Generated => tls::dev_material(&config.dc, &config.node)
            .context("making the development CA and certificate")?,
        TlsSource::Files { ca, cert, key } => {
            TlsMaterial::load(ca, cert, key).context("loading the TLS files")?
        }
    };
    let me = material.identity();
    if me.dc != config.dc {
        bail!(
            "the certificate is for datacenter {:?} but the agent runs in {:?}",
            me.dc,
            config.dc
        );
    }
    if me.node != config.node {
        bail!(
            "the certificate is for node {:?} but the agent is named {:?} (set --node)",
            me.node,
            config.node
        );
    }
    if config.server && me.role != Role::Server {
        bail!("a server needs a server certificate (agent tls cert create --server)");
    }
    Ok(material)
}

/// Opens the Raft server and bootstraps it when this agent alone is expected.
async fn start_raft(
    config: &Config,
    data_dir: &Path,
    id: u64,
    node: ServerNode,
    transport: &Transport,
) -> anyhow::Result<Raft> {
    let mut server_config = ServerConfig::new(id, node.clone(), data_dir.join("raft"));
    server_config.raft.snapshot_policy =
        openraft::SnapshotPolicy::LogsSinceLast(config.raft_snapshot_threshold);
    server_config.raft.max_in_snapshot_log_to_keep = config.raft_trailing_logs;
    server_config.raft.replication_lag_threshold = config.raft_trailing_logs.max(1);
    let raft = RaftServer::open(
        server_config,
        QuicRaftTransport::new(transport.clone(), config.dc.clone()),
    )
    .await
    .context("opening the Raft state")?;
    // A single expected server bootstraps at once; more are found through gossip (see
    // `servers`).
    if config.bootstrap_expect == Some(1) {
        raft.initialize(BTreeMap::from([(id, node)]))
            .await
            .context("bootstrapping the single-server cluster")?;
    }
    Ok(raft)
}
