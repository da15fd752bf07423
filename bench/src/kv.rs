//! `bench kv --against etcd`: the key/value store of 3 agent servers (127.0.0.221-223)
//! against a 3-member etcd cluster (127.0.0.231-233), both on loopback with their data
//! in the same temporary directory, both fsyncing every commit.
//!
//! Each workload runs `--seconds` against one system, then the other, for `--rounds`
//! rounds (agent, etcd, agent, etcd, ...), so that drift of the machine cancels out; the
//! rounds are combined in the report.
//!
//! Clients are spread over the members the same way for both systems: client `c` talks
//! to member `(leader + c) mod 3`, so the single client of the sequential writes talks
//! to the leader and the others are spread evenly (a follower passes a write, or a
//! linearizable read, on to the leader, in both systems). The agent is driven over its
//! HTTP API, one keep-alive HTTP/1.1 connection per client; etcd over its gRPC API,
//! one HTTP/2 connection per 8 clients (etcd's own benchmark tool multiplexes many
//! clients on few connections too).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cluster::{Cluster, agent_binary, progress};
use crate::etcd::{self, EtcdClient};
use crate::stats::{Combined, Latencies, Row, Run, ms, ratio, table};

/// Flags of `bench kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// The system to compare the agent with.
    #[arg(long, value_enum)]
    against: Against,
    /// Length of each workload, per system and round, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of the concurrent workloads.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Size of the written values, in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Rounds of every workload (each runs against both systems).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Watchers of the watch fan-out.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Keep the logs and data (the directory is printed at the end).
    #[arg(long)]
    keep_logs: bool,
}

/// What `bench kv` compares the agent with.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Against {
    /// A 3-member etcd cluster (Debian's etcd-server).
    Etcd,
}

/// The agent servers and the etcd members, one loopback address each (`bench gossip`
/// uses 127.0.1.x).
const AGENT_IPS: [[u8; 4]; 3] = [[127, 0, 0, 221], [127, 0, 0, 222], [127, 0, 0, 223]];
const ETCD_IPS: [[u8; 4]; 3] = [[127, 0, 0, 231], [127, 0, 0, 232], [127, 0, 0, 233]];

/// Bound on starting either cluster.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Writes of each watch fan-out run, one after the other.
const WATCH_WRITES: usize = 20;

/// Bound on one write reaching every watcher, and on the watchers being set up.
const WATCH_LIMIT: Duration = Duration::from_secs(30);

/// Clients of the concurrent workloads per etcd connection.
const ETCD_CLIENTS_PER_CONN: usize = 8;

/// HTTP/2 streams carrying etcd watches, spread over the members.
const ETCD_WATCH_STREAMS: usize = 12;

/// Keys of the watch fan-out.
const WATCH_KEY: &str = "bench/watch";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Agent,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Agent => "agent",
            System::Etcd => "etcd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    /// Agent `?consistent`, etcd's default (linearizable) Range.
    LinearizableRead,
    /// Agent `?stale`, etcd's serializable Range.
    StaleRead,
}

/// One workload of the table.
struct Workload {
    name: String,
    op: Op,
    clients: usize,
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let Against::Etcd = args.against;
    if args.seconds == 0 || args.rounds == 0 {
        bail!("--seconds and --rounds must be at least 1");
    }
    if !(1..=4096).contains(&args.clients) {
        bail!("--clients must be between 1 and 4096");
    }
    if !(1..=consensus::MAX_VALUE_LEN).contains(&args.value_size) {
        bail!(
            "--value-size must be between 1 and {} bytes",
            consensus::MAX_VALUE_LEN
        );
    }
    if !(1..=10_000).contains(&args.watchers) {
        bail!("--watchers must be between 1 and 10000");
    }
    // Before anything is built or started.
    let etcd = etcd::etcd_binary()?;
    let mut cluster = Cluster::new(agent_binary()?)?;
    let result = tokio::select! {
        result = measure(&mut cluster, &etcd, &args) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; agents and etcd stopped")),
    };
    progress("");
    if args.keep_logs {
        eprintln!("logs kept in {}", cluster.keep()?.display());
    } else if result.is_err() {
        eprintln!("(run with --keep-logs to keep the agents' and etcd's logs)");
    }
    result
}

/// Where each system's members listen, the leader first.
struct Targets {
    agent: Vec<SocketAddr>,
    etcd: Vec<SocketAddr>,
}

async fn measure(cluster: &mut Cluster, etcd_bin: &PathBuf, args: &KvArgs) -> anyhow::Result<()> {
    let agent_ips: Vec<IpAddr> = AGENT_IPS.iter().map(|ip| IpAddr::from(*ip)).collect();
    let etcd_ips: Vec<IpAddr> = ETCD_IPS.iter().map(|ip| IpAddr::from(*ip)).collect();

    progress("starting 3 agent servers and 3 etcd members...");
    let mut seed = None;
    for (i, ip) in agent_ips.iter().enumerate() {
        cluster.start_server(&format!("server-{}", i + 1), *ip, seed, 3)?;
        seed = seed.or(Some(cluster.agents[0].lan));
    }
    etcd::start_members(cluster, etcd_bin, &etcd_ips)?;

    let agent_leader = wait_agent_leader(cluster, START_LIMIT).await?;
    progress("waiting for the etcd cluster...");
    let etcd_leader = etcd::wait_ready(&etcd_ips, START_LIMIT).await?;
    let leader_first = |addrs: Vec<SocketAddr>, leader: usize| {
        let n = addrs.len();
        (0..n).map(|i| addrs[(leader + i) % n]).collect::<Vec<_>>()
    };
    let targets = Targets {
        agent: leader_first(
            cluster.agents.iter().map(|a| a.http).collect(),
            agent_leader,
        ),
        etcd: leader_first(
            etcd_ips.iter().map(|ip| etcd::client_addr(*ip)).collect(),
            etcd_leader,
        ),
    };

    let c = args.clients;
    let workloads = [
        Workload {
            name: "sequential writes, 1 client".into(),
            op: Op::Write,
            clients: 1,
        },
        Workload {
            name: format!("concurrent writes, {c} clients"),
            op: Op::Write,
            clients: c,
        },
        Workload {
            name: format!("linearizable reads, {c} clients"),
            op: Op::LinearizableRead,
            clients: c,
        },
        Workload {
            name: format!("stale reads, {c} clients"),
            op: Op::StaleRead,
            clients: c,
        },
    ];
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let length = Duration::from_secs(args.seconds);
    let steps = workloads.len() + 1;
    let mut rows = Vec::new();
    let mut write_ratio = None;
    for (w, workload) in workloads.iter().enumerate() {
        let mut results = [Combined::default(), Combined::default()];
        for round in 0..args.rounds {
            for (s, system) in [System::Agent, System::Etcd].into_iter().enumerate() {
                progress(&format!(
                    "[{}/{steps}] {}: round {}/{}, {} ({} s)...",
                    w + 1,
                    workload.name,
                    round + 1,
                    args.rounds,
                    system.name(),
                    args.seconds
                ));
                let run = run_load(&targets, system, workload, length, &value).await?;
                results[s].runs.push(run);
            }
        }
        let [agent, etcd] = &results;
        let throughput = ratio(agent.ops_per_s(), etcd.ops_per_s());
        if workload.op == Op::Write && workload.clients == c {
            write_ratio = throughput;
        }
        for (system, combined) in [("agent", agent), ("etcd", etcd)] {
            let latencies = combined.latencies();
            let mut rounds = combined.per_round();
            if combined.errors() > 0 {
                rounds.push_str(&format!(" ({} errors)", combined.errors()));
            }
            rows.push(Row {
                workload: workload.name.clone(),
                system: system.into(),
                ops_per_s: Some(combined.ops_per_s()),
                p50_us: latencies.quantile_us(0.5),
                p99_us: latencies.quantile_us(0.99),
                p999_us: latencies.quantile_us(0.999),
                rounds,
                ratio: match (system, throughput) {
                    ("agent", Some(r)) => format!("{r:.2}× ops/s"),
                    _ => String::new(),
                },
            });
        }
    }

    // Watch fan-out.
    let mut fanout = [Latencies::default(), Latencies::default()];
    let name = format!("watch fan-out, {} watchers", args.watchers);
    for round in 0..args.rounds {
        for (s, system) in [System::Agent, System::Etcd].into_iter().enumerate() {
            let label = format!(
                "[{steps}/{steps}] {name}: round {}/{}, {}",
                round + 1,
                args.rounds,
                system.name()
            );
            let times = watch_fanout(&targets, system, args.watchers, &label).await?;
            for t in times {
                fanout[s].record(t);
            }
        }
    }
    let median_ratio = ratio(
        fanout[0].quantile_us(0.5) as f64,
        fanout[1].quantile_us(0.5) as f64,
    );
    for (s, system) in ["agent", "etcd"].into_iter().enumerate() {
        rows.push(Row {
            workload: name.clone(),
            system: system.into(),
            ops_per_s: None,
            p50_us: fanout[s].quantile_us(0.5),
            p99_us: fanout[s].quantile_us(0.99),
            p999_us: fanout[s].max_us(),
            rounds: format!("{} writes", fanout[s].count()),
            ratio: match (system, median_ratio) {
                ("agent", Some(r)) => format!("{r:.2}× p50 latency"),
                _ => String::new(),
            },
        });
    }
    progress("");

    println!(
        "bench kv --against etcd: 3 agent servers (127.0.0.221-223) vs 3 etcd members \
         (127.0.0.231-233), data of both in {}",
        cluster.dir().display()
    );
    println!("machine: {}", machine());
    println!(
        "agent: {} (HTTP/1.1 API, one keep-alive connection per client; mTLS over QUIC between servers)",
        cluster.agent_version()
    );
    println!(
        "etcd: {} (gRPC API, one HTTP/2 connection per {ETCD_CLIENTS_PER_CONN} clients; plain HTTP between members)",
        etcd::etcd_version(etcd_bin)
    );
    println!(
        "each workload: {} rounds x {} s per system, alternating agent, etcd; {}-byte values; \
         client c talks to member (leader + c) mod 3; both fsync every commit",
        args.rounds, args.seconds, args.value_size
    );
    println!(
        "watch fan-out: {} writes per round, time from sending a write until all watchers \
         have seen it (agent: ?stale blocking queries, etcd: watches over \
         {ETCD_WATCH_STREAMS} streams); its p99.9 column is the maximum",
        WATCH_WRITES
    );
    println!();
    print!("{}", table(&rows));
    println!();
    match write_ratio {
        Some(r) => println!("agent/etcd concurrent write throughput ratio: {r:.2}"),
        None => bail!("etcd completed no concurrent write"),
    }
    Ok(())
}

/// Waits until every server names the same leader and a write through each server is
/// applied; returns the index of the leader in `cluster.agents`.
async fn wait_agent_leader(cluster: &Cluster, limit: Duration) -> anyhow::Result<usize> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < limit {
        progress(&format!(
            "waiting for the agent servers to elect a leader ({:.1} s): {last}",
            start.elapsed().as_secs_f64()
        ));
        match agent_leader(&http, cluster).await {
            Ok(leader) => return Ok(leader),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs: Vec<String> = cluster
        .agents
        .iter()
        .map(|a| a.log.display().to_string())
        .collect();
    bail!(
        "the agent servers had no leader after {limit:?} ({last}); see {}",
        logs.join(", ")
    )
}

async fn agent_leader(http: &reqwest::Client, cluster: &Cluster) -> anyhow::Result<usize> {
    let mut leaders = Vec::new();
    for agent in &cluster.agents {
        let leader: String = http
            .get(format!("http://{}/v1/status/leader", agent.http))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        leaders.push(leader);
    }
    let first = leaders[0].clone();
    if first.is_empty() || leaders.iter().any(|l| *l != first) {
        bail!("servers name leaders {leaders:?}");
    }
    let leader_ip: IpAddr = first
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .with_context(|| format!("leader address {first:?}"))?;
    let index = cluster
        .agents
        .iter()
        .position(|a| a.http.ip() == leader_ip)
        .with_context(|| format!("the leader {first} is none of the servers"))?;
    for agent in &cluster.agents {
        http.put(format!("http://{}/v1/kv/bench/ready", agent.http))
            .body("ready")
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(index)
}

/// The key written or read by client `c` in its `i`th operation: 16 keys per client.
fn key(c: usize, i: u64) -> String {
    format!("bench/key/{c}/{}", i % 16)
}

/// A connection of one client.
enum Conn {
    Agent { http: reqwest::Client, base: String },
    Etcd(EtcdClient),
}

impl Conn {
    /// One keep-alive HTTP/1.1 connection per agent client; etcd clients share a
    /// connection per [`ETCD_CLIENTS_PER_CONN`]. Client `c` talks to member `c mod 3`
    /// of `targets` (the leader first).
    async fn open(targets: &Targets, system: System, clients: usize) -> anyhow::Result<Vec<Conn>> {
        match system {
            System::Agent => (0..clients)
                .map(|c| {
                    Ok(Conn::Agent {
                        http: agent_http(1)?,
                        base: format!("http://{}", targets.agent[c % targets.agent.len()]),
                    })
                })
                .collect(),
            System::Etcd => {
                let members = targets.etcd.len();
                let conns =
                    (members * clients.div_ceil(members * ETCD_CLIENTS_PER_CONN)).min(clients);
                let mut channels = Vec::with_capacity(conns);
                for j in 0..conns {
                    channels.push(EtcdClient::connect(targets.etcd[j % members]).await?);
                }
                Ok((0..clients)
                    .map(|c| Conn::Etcd(channels[c % conns].clone()))
                    .collect())
            }
        }
    }

    async fn op(&mut self, op: Op, key: &str, value: &Bytes) -> anyhow::Result<()> {
        match self {
            Conn::Agent { http, base } => {
                let response = match op {
                    Op::Write => http.put(format!("{base}/v1/kv/{key}")).body(value.clone()),
                    Op::LinearizableRead => http.get(format!("{base}/v1/kv/{key}?consistent")),
                    Op::StaleRead => http.get(format!("{base}/v1/kv/{key}?stale")),
                }
                .send()
                .await?
                .error_for_status()?;
                let body = response.bytes().await?;
                if op == Op::Write && &body[..] != b"true" {
                    bail!(
                        "the write was not applied: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            Conn::Etcd(client) => match op {
                Op::Write => {
                    client.put(key.as_bytes(), value).await?;
                }
                Op::LinearizableRead | Op::StaleRead => {
                    let range = client.get(key.as_bytes(), op == Op::StaleRead).await?;
                    if range.kvs.is_empty() {
                        bail!("{key} not found");
                    }
                }
            },
        }
        Ok(())
    }
}

/// A client of the agent's HTTP API keeping up to `connections` idle connections.
fn agent_http(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(90))
        .build()?)
}

/// Runs `workload` against `system` for `length`: each client first does one operation
/// that is not measured (it opens the connection), then all start together and each
/// does one operation after the other until `length` has passed.
async fn run_load(
    targets: &Targets,
    system: System,
    workload: &Workload,
    length: Duration,
    value: &Bytes,
) -> anyhow::Result<Run> {
    let conns = Conn::open(targets, system, workload.clients).await?;
    let start = Arc::new(tokio::sync::Barrier::new(workload.clients + 1));
    let mut clients = JoinSet::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let start = start.clone();
        let value = value.clone();
        let op = workload.op;
        clients.spawn(async move {
            let mut run = Run::default();
            let mut first_error = None;
            if let Err(e) = conn.op(op, &key(c, 0), &value).await {
                first_error = Some(e);
            }
            start.wait().await;
            let deadline = Instant::now() + length;
            let mut i = 1u64;
            loop {
                let began = Instant::now();
                if began >= deadline {
                    break;
                }
                match conn.op(op, &key(c, i), &value).await {
                    Ok(()) => {
                        run.ops += 1;
                        run.latencies.record(began.elapsed());
                    }
                    Err(e) => {
                        run.errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
                i += 1;
            }
            (run, first_error)
        });
    }
    start.wait().await;
    let started = Instant::now();
    let mut total = Run::default();
    let mut first_error = None;
    while let Some(joined) = clients.join_next().await {
        let (run, error) = joined?;
        total.ops += run.ops;
        total.errors += run.errors;
        total.latencies.merge(&run.latencies);
        if first_error.is_none() {
            first_error = error;
        }
    }
    total.elapsed = started.elapsed();
    if total.ops == 0 {
        let error = first_error.map(|e| format!("{e:#}")).unwrap_or_default();
        bail!("{}: no operation succeeded: {error}", system.name());
    }
    if let Some(e) = first_error {
        eprintln!(
            "\n{}: {} of {} operations failed, the first with: {e:#}",
            system.name(),
            total.errors,
            total.errors + total.ops
        );
    }
    Ok(total)
}

/// Sets up `watchers` watchers of [`WATCH_KEY`] spread over the members, then writes it
/// [`WATCH_WRITES`] times from a client of the leader, each time waiting until every
/// watcher has seen the new value; returns for each write the time from sending it
/// until the last watcher saw it.
async fn watch_fanout(
    targets: &Targets,
    system: System,
    watchers: usize,
    label: &str,
) -> anyhow::Result<Vec<Duration>> {
    let mut writer = Conn::open(targets, system, 1)
        .await?
        .pop()
        .context("no connection")?;
    writer
        .op(Op::Write, WATCH_KEY, &Bytes::from_static(b"w0"))
        .await?;

    let ready = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (seen, mut sightings) = mpsc::unbounded_channel::<(u64, Instant)>();
    let mut tasks = JoinSet::new();
    match system {
        System::Agent => {
            // One HTTP client (connection pool) per server; each blocking query holds a
            // connection of its own.
            let pools: Vec<reqwest::Client> = targets
                .agent
                .iter()
                .map(|_| agent_http(watchers))
                .collect::<anyhow::Result<_>>()?;
            for w in 0..watchers {
                let server = w % targets.agent.len();
                tasks.spawn(agent_watcher(
                    pools[server].clone(),
                    targets.agent[server],
                    ready.clone(),
                    errors.clone(),
                    seen.clone(),
                ));
            }
        }
        System::Etcd => {
            let mut clients = Vec::new();
            for addr in &targets.etcd {
                clients.push(EtcdClient::connect(*addr).await?);
            }
            let streams = ETCD_WATCH_STREAMS.min(watchers);
            for s in 0..streams {
                let count = watchers / streams + usize::from(s < watchers % streams);
                tasks.spawn(etcd_watchers(
                    clients[s % clients.len()].clone(),
                    count,
                    ready.clone(),
                    errors.clone(),
                    seen.clone(),
                ));
            }
        }
    }
    drop(seen);

    let setup = Instant::now();
    while ready.load(Ordering::Relaxed) < watchers {
        progress(&format!(
            "{label}: {}/{watchers} watchers set up",
            ready.load(Ordering::Relaxed)
        ));
        if setup.elapsed() > WATCH_LIMIT {
            bail!(
                "{}: only {}/{watchers} watchers set up after {WATCH_LIMIT:?} ({} errors)",
                system.name(),
                ready.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each agent watcher sends its blocking query right after its first answer; give
    // them (and etcd's) time to be waiting before the first write.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut times = Vec::with_capacity(WATCH_WRITES);
    for n in 1..=WATCH_WRITES as u64 {
        let sent = Instant::now();
        writer
            .op(Op::Write, WATCH_KEY, &Bytes::from(format!("w{n}")))
            .await?;
        let mut count = 0;
        let mut last = sent;
        while count < watchers {
            let remaining = WATCH_LIMIT.saturating_sub(sent.elapsed());
            match tokio::time::timeout(remaining, sightings.recv()).await {
                Ok(Some((m, at))) if m == n => {
                    count += 1;
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("{}: every watcher stopped", system.name()),
                Err(_) => bail!(
                    "{}: write {n} reached {count}/{watchers} watchers in {WATCH_LIMIT:?} ({} errors)",
                    system.name(),
                    errors.load(Ordering::Relaxed)
                ),
            }
        }
        let took = last.duration_since(sent);
        times.push(took);
        progress(&format!(
            "{label}: write {n}/{WATCH_WRITES} seen by all {watchers} watchers in {}",
            ms(took.as_micros() as u64)
        ));
        // Let the watchers ask again before the next write.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tasks.abort_all();
    Ok(times)
}

/// The `n` of a watched value `w<n>`.
fn watched_number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix('w')?
        .parse()
        .ok()
}

/// One agent watcher: `?stale` blocking queries of [`WATCH_KEY`] (answered by the server
/// it asks, like an etcd watch), reporting each new value it sees.
async fn agent_watcher(
    http: reqwest::Client,
    server: SocketAddr,
    ready: Arc<AtomicUsize>,
    errors: Arc<AtomicU64>,
    seen: mpsc::UnboundedSender<(u64, Instant)>,
) {
    let mut index = 0u64;
    let mut last = None;
    loop {
        let url = format!("http://{server}/v1/kv/{WATCH_KEY}?stale&raw&index={index}&wait=60s");
        let answer = async {
            let response = http.get(url).send().await?.error_for_status()?;
            let new_index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .context("no X-Consul-Index")?;
            let body = response.bytes().await?;
            anyhow::Ok((new_index, body))
        }
        .await;
        match answer {
            Ok((new_index, body)) => {
                let at = Instant::now();
                if index == 0 {
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                // An index that goes back means the server's state was reset: start over.
                index = if new_index < index { 0 } else { new_index };
                let n = watched_number(&body);
                if n.is_some() && n != last {
                    last = n;
                    if let Some(n) = n
                        && seen.send((n, at)).is_err()
                    {
                        return;
                    }
                }
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `count` etcd watches of [`WATCH_KEY`] on one gRPC stream, reporting each value every
/// watch sees.
async fn etcd_watchers(
    mut client: EtcdClient,
    count: usize,
    ready: Arc<AtomicUsize>,
    errors: Arc<AtomicU64>,
    seen: mpsc::UnboundedSender<(u64, Instant)>,
) {
    let mut stream = match client.watch(WATCH_KEY.as_bytes(), count).await {
        Ok(stream) => stream,
        Err(_) => {
            errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                let at = Instant::now();
                if response.created {
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                if response.canceled {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                for event in &response.events {
                    let n = event.kv.as_ref().and_then(|kv| watched_number(&kv.value));
                    if let Some(n) = n
                        && seen.send((n, at)).is_err()
                    {
                        return;
                    }
                }
            }
            Ok(None) | Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// `2 cores, AMD EPYC 7B13` from /proc/cpuinfo.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    describe_cpus(&cpuinfo)
}

fn describe_cpus(cpuinfo: &str) -> String {
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_described() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: x\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(describe_cpus(cpuinfo), "2 cores, AMD EPYC 7B13");
        assert_eq!(describe_cpus(""), "0 cores, unknown CPU");
    }

    #[test]
    fn watched_values_carry_their_number() {
        assert_eq!(watched_number(b"w0"), Some(0));
        assert_eq!(watched_number(b"w17"), Some(17));
        assert_eq!(watched_number(b"ready"), None);
        assert_eq!(watched_number(b"w"), None);
    }

    #[test]
    fn each_client_has_its_keys() {
        assert_eq!(key(3, 0), "bench/key/3/0");
        assert_eq!(key(3, 17), "bench/key/3/1");
    }
}
