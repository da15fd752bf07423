//! A server's side of the WAN: the endpoint and gossip pool that link the servers of
//! every datacenter, so that a request naming another datacenter (`?dc=`) reaches one
//! of its servers (see [`crate::http::forward`]).
//!
//! The WAN endpoint has its own ALPN and admits server certificates only (of any
//! datacenter of the shared CA); its RPC router ([`crate::rpc::WanRpcRouter`]) answers
//! forwarded HTTP requests and nothing else, so Raft never crosses it. Its gossip pool
//! runs foca's WAN timings (5 s probes, 3 s round trips, long suspicion) with members
//! named `<node>.<dc>`.
//!
//! Servers of one datacenter find each other's WAN addresses in the LAN tag
//! [`WAN_TAG`]: each server joins, on the WAN, every live server of its datacenter that
//! its WAN pool lacks ([`flood_joins`], Consul's flood join). So joining one server of
//! a datacenter to the WAN federates all of them.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use events::Bus;
use membership::{Member, MembershipConfig, NodeIdentity, Role};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::gossip::members_file::MembersFile;
use crate::gossip::{Gossip, GossipConfig, standard_tags, wan_name};
use crate::rpc::WanRpcRouter;
use crate::tls::{self, TlsMaterial};
use crate::transport::{DatagramReceiver, Transport, TransportConfig};

/// The LAN tag in which a server publishes its WAN address.
pub const WAN_TAG: &str = "wan";

/// How often a server looks for servers of its datacenter missing from its WAN pool.
pub const FLOOD_EVERY: Duration = Duration::from_secs(5);

/// A server's side of the WAN: its gossip pool and QUIC endpoint.
#[derive(Clone)]
pub struct Wan {
    /// The WAN gossip pool (members named `<node>.<dc>`).
    pub gossip: Gossip,
    /// The WAN endpoint, which carries requests to other datacenters.
    pub transport: Transport,
}

impl Wan {
    /// The datacenters with a server in the WAN pool (servers that left aside), `local`
    /// included, nearest first: by the median of QUIC's round-trip estimates to their
    /// live servers; ours first, those with no estimate yet last, ties by name.
    pub fn datacenters(&self, local: &str) -> Vec<String> {
        let mut rtts: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
        rtts.insert(local.to_string(), Vec::new());
        for member in self.gossip.members().iter() {
            let status = member.state.consul_status();
            if member.role != membership::Role::Server || status == 3 {
                continue;
            }
            let samples = rtts.entry(member.dc.clone()).or_default();
            if status == 1
                && member.dc != local
                && let Some(rtt) = self.transport.rtt(member.addr)
            {
                samples.push(rtt);
            }
        }
        rank_by_rtt(local, rtts)
    }
}

/// Orders datacenters as [`Wan::datacenters`] says, from their round-trip samples.
fn rank_by_rtt(local: &str, rtts: BTreeMap<String, Vec<Duration>>) -> Vec<String> {
    let mut ranked: Vec<(bool, Duration, String)> = rtts
        .into_iter()
        .map(|(dc, mut samples)| {
            samples.sort();
            let median = samples.get(samples.len() / 2).copied();
            (dc != local, median.unwrap_or(Duration::MAX), dc)
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|(_, _, dc)| dc).collect()
}

/// A server's WAN endpoint, bound but not yet gossiping.
pub struct WanEndpoint {
    /// The endpoint.
    pub transport: Transport,
    datagrams: DatagramReceiver,
    /// Its RPC router, which needs the HTTP API attached once that exists.
    pub router: Arc<WanRpcRouter>,
    /// The address other datacenters reach it at.
    pub advertise: SocketAddr,
}

impl WanEndpoint {
    /// Binds `--wan-bind` with the WAN ALPN (server certificates only).
    pub fn bind(
        config: &Config,
        tls: &TlsMaterial,
        shutdown: CancellationToken,
    ) -> anyhow::Result<WanEndpoint> {
        let router = Arc::new(WanRpcRouter::new(config.dc.clone()));
        let (transport, datagrams) = Transport::bind(
            TransportConfig::new(config.wan_bind, tls::ALPN_WAN),
            tls,
            router.clone(),
            shutdown,
        )
        .with_context(|| format!("binding the WAN endpoint on {}", config.wan_bind))?;
        // With port 0 the advertised port is the one the system picked.
        let advertise = if config.advertise_wan.port() == 0 {
            SocketAddr::new(config.advertise_wan.ip(), transport.local_addr().port())
        } else {
            config.advertise_wan
        };
        Ok(WanEndpoint {
            transport,
            datagrams,
            router,
            advertise,
        })
    }

    /// Starts WAN gossip as `<node>.<dc>` with this start's `generation`, joining
    /// `--join-wan` and the WAN members saved before a restart.
    #[allow(clippy::too_many_arguments)]
    pub fn start_gossip(
        self,
        config: &Config,
        data_dir: &Path,
        node_id: uuid::Uuid,
        generation: u64,
        bus: Bus,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Wan> {
        let members_file = MembersFile::wan_path(data_dir);
        let saved = MembersFile::load_from(&members_file)?;
        let mut membership = MembershipConfig::wan(&config.dc, Role::Server);
        membership.tags = standard_tags("server", &config.dc, &node_id, &BTreeMap::new());
        let mut join = config.join_wan.clone();
        join.extend(saved.peers.iter().filter(|addr| **addr != self.advertise));
        join.dedup();
        let gossip_config = GossipConfig {
            me: NodeIdentity {
                name: wan_name(&config.node, &config.dc),
                addr: self.advertise,
                generation,
            },
            membership,
            join,
            members_file,
            seed: uuid::Uuid::new_v4().as_u64_pair().1,
            event_ltime: 0,
            event_size_limit: config.event_size_limit,
            // No user events on the WAN pool, so no filters to match.
            services: tokio::sync::watch::channel(Default::default()).1,
        };
        let gossip = Gossip::spawn(
            gossip_config,
            self.transport.clone(),
            self.datagrams,
            bus,
            tracker,
            shutdown,
        )
        .context("starting WAN gossip")?;
        Ok(Wan {
            gossip,
            transport: self.transport,
        })
    }
}

/// Joins, on the WAN, the servers of datacenter `dc` that the LAN pool knows and the WAN
/// pool lacks: whenever the LAN members change, and at least every [`FLOOD_EVERY`], until
/// `shutdown`.
pub async fn flood_joins(lan: Gossip, wan: Wan, dc: String, shutdown: CancellationToken) {
    loop {
        let view = lan.member_view();
        for addr in missing_from_wan(&view.members, &wan.gossip.members(), &dc) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                joined = wan.gossip.join(addr) => match joined {
                    Ok(()) => tracing::info!(%addr, "joined a server of our datacenter on the WAN"),
                    Err(e) => tracing::debug!(%addr, "WAN flood join failed: {e}"),
                },
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lan.wait_members(view.index, FLOOD_EVERY) => {}
        }
    }
}

/// The WAN addresses of the live servers of `dc` in `lan` that are not live in `wan`.
fn missing_from_wan(lan: &[Member], wan: &[Member], dc: &str) -> Vec<SocketAddr> {
    let present: HashSet<&str> = wan
        .iter()
        .filter(|m| m.state.consul_status() == 1)
        .map(|m| m.name.as_str())
        .collect();
    lan.iter()
        .filter(|m| m.role == Role::Server && m.dc == dc && m.state.consul_status() == 1)
        .filter(|m| !present.contains(wan_name(&m.name, dc).as_str()))
        .filter_map(|m| m.tags.get(WAN_TAG)?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership::MemberState;

    #[test]
    fn datacenters_rank_ours_first_then_by_median_rtt() {
        let ms = Duration::from_millis;
        let rtts = BTreeMap::from([
            ("dc1".to_string(), vec![]),
            ("far".to_string(), vec![ms(90), ms(80), ms(400)]),
            ("near".to_string(), vec![ms(900), ms(10), ms(12)]),
            ("unknown".to_string(), vec![]),
            ("alpha".to_string(), vec![]),
        ]);
        // Median of near: 12 ms; of far: 90 ms; no samples: last, by name.
        assert_eq!(
            rank_by_rtt("dc1", rtts),
            ["dc1", "near", "far", "alpha", "unknown"]
        );
    }

    fn member(name: &str, dc: &str, role: Role, state: MemberState, wan: Option<&str>) -> Member {
        let mut tags = BTreeMap::new();
        if let Some(addr) = wan {
            tags.insert(WAN_TAG.to_string(), addr.to_string());
        }
        Member {
            name: name.to_string(),
            addr: "127.0.0.1:8301".parse().unwrap(),
            generation: 1,
            dc: dc.to_string(),
            role,
            tags,
            state,
        }
    }

    #[test]
    fn flood_joins_the_live_servers_of_our_dc_missing_from_the_wan() {
        let alive = MemberState::Alive;
        let lan = [
            member("s1", "dc1", Role::Server, alive, Some("10.0.0.1:8302")),
            member("s2", "dc1", Role::Server, alive, Some("10.0.0.2:8302")),
            member("s3", "dc1", Role::Server, alive, Some("10.0.0.3:8302")),
            member(
                "s4",
                "dc1",
                Role::Server,
                MemberState::Failed,
                Some("10.0.0.4:8302"),
            ),
            member("c1", "dc1", Role::Client, alive, Some("10.0.0.5:8302")),
            member("s5", "dc1", Role::Server, alive, None),
            member("s6", "dc1", Role::Server, alive, Some("not an address")),
        ];
        let wan = [
            member("s1.dc1", "dc1", Role::Server, alive, None),
            member("s2.dc1", "dc1", Role::Server, MemberState::Failed, None),
            member("s3.dc2", "dc2", Role::Server, alive, None),
        ];
        // s2 is failed on the WAN and s3 of dc1 is absent (s3.dc2 is another server).
        assert_eq!(
            missing_from_wan(&lan, &wan, "dc1"),
            [
                "10.0.0.2:8302".parse::<SocketAddr>().unwrap(),
                "10.0.0.3:8302".parse().unwrap()
            ]
        );
    }
}
