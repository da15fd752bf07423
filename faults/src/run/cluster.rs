//! A five-agent cluster in five network namespaces (netlab hosts), one agent
//! per namespace, joined by a full mesh of emulated links.
//!
//! Hosts `n1`..`n5` have the addresses `10.215.0.1`..`10.215.0.5` (only inside
//! their namespaces). `n1`..`n3` run servers (`--bootstrap-expect 3`), `n4` and
//! `n5` client agents. Each agent binds its LAN endpoint on its host's address
//! (port 8301) and its HTTP and DNS endpoints on `127.0.0.1` inside its
//! namespace; the HTTP API is forwarded to the runner's namespace with
//! [`netlab::Host::forward_tcp`], so the runner reaches every agent even when
//! its host is partitioned from the others (the interesting case: a client
//! still talks to an isolated agent).
//!
//! Everything lives in the [`netlab::Lab`]: dropping the cluster kills every
//! agent (SIGKILL to its process group) and deletes the namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Number of hosts (agents).
pub const HOSTS: usize = 5;
/// Number of servers (the first hosts).
pub const SERVERS: usize = 3;

/// The address of host `i` (0-based).
pub fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 215, 0, 1 + i as u8)
}

/// Certificates shared by every scenario of a suite.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Creates a CA and one certificate per node (`n1`..`n5`) in `dir`.
    pub fn create(agent: &Path, dir: &Path) -> anyhow::Result<Pki> {
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new(agent)
                .args(args)
                .output()
                .with_context(|| format!("running {} {args:?}", agent.display()))?;
            if !out.status.success() {
                bail!(
                    "agent {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        let d = dir.display().to_string();
        run(&["tls", "ca", "create", "--dir", &d])?;
        for i in 0..HOSTS {
            let node = node_name(i);
            let role = if i < SERVERS { "--server" } else { "--client" };
            run(&[
                "tls", "cert", "create", role, "--dc", "dc1", "--node", &node, "--out", &node,
                "--dir", &d,
            ])?;
        }
        Ok(Pki {
            dir: dir.to_path_buf(),
        })
    }

    fn args(&self, node: &str) -> Vec<String> {
        let f = |name: String| self.dir.join(name).display().to_string();
        vec![
            "--ca-file".into(),
            f("agent-ca.pem".into()),
            "--cert-file".into(),
            f(format!("{node}.pem")),
            "--key-file".into(),
            f(format!("{node}-key.pem")),
        ]
    }
}

/// The node name of host `i` (0-based): `n1`..`n5`.
pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// One agent of the cluster.
#[derive(Debug)]
pub struct Agent {
    /// Node name (`n1`..).
    pub node: String,
    /// Whether it is a server.
    pub server: bool,
    /// Its LAN endpoint (what `/v1/status/leader` names).
    pub lan: SocketAddr,
    /// Its HTTP API as reachable from the runner (a forward).
    pub http: SocketAddr,
    /// Its log file (appended to across restarts).
    pub log: PathBuf,
    /// The pid of the running process, `None` while stopped.
    pub pid: Option<u32>,
    /// Whether it is SIGSTOPped.
    pub paused: bool,
    args: Vec<String>,
    host: netlab::Host,
}

/// The cluster of one scenario.
pub struct Cluster {
    /// The agents, `n1`..`n5`.
    pub agents: Vec<Agent>,
    /// Links: `links[a][b]` (a < b) joins hosts a and b.
    links: Vec<Vec<Option<netlab::Link>>>,
    agent_bin: PathBuf,
    /// The scenario's directory (data dirs and logs).
    pub dir: PathBuf,
    // Dropped last: kills the agents and deletes the namespaces.
    lab: netlab::Lab,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("agents", &self.agents)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds the lab (hosts and links) and starts the five agents with fresh
    /// data directories under `dir`.
    pub fn start(
        lab: netlab::Lab,
        agent_bin: &Path,
        pki: &Pki,
        dir: &Path,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let mut hosts = Vec::new();
        for i in 0..HOSTS {
            hosts.push(lab.add_host(&node_name(i), &[host_addr(i)])?);
        }
        let mut links: Vec<Vec<Option<netlab::Link>>> = (0..HOSTS)
            .map(|_| (0..HOSTS).map(|_| None).collect())
            .collect();
        for a in 0..HOSTS {
            for b in a + 1..HOSTS {
                links[a][b] = Some(lab.link(&hosts[a], &hosts[b])?);
            }
        }
        let seed = SocketAddr::new(host_addr(0).into(), 8301);
        let mut agents = Vec::new();
        for (i, host) in hosts.into_iter().enumerate() {
            let node = node_name(i);
            let server = i < SERVERS;
            let lan = SocketAddr::new(host_addr(i).into(), 8301);
            let http_inside = SocketAddr::from(([127, 0, 0, 1], 8500));
            let mut args = vec![
                "run".to_string(),
                "--dc".into(),
                "dc1".into(),
                "--node".into(),
                node.clone(),
                "--data-dir".into(),
                dir.join(&node).display().to_string(),
                "--bind".into(),
                lan.to_string(),
                "--http".into(),
                http_inside.to_string(),
                "--dns".into(),
                "127.0.0.1:8600".into(),
            ];
            if server {
                args.extend(["--server".into(), "--bootstrap-expect".into(), "3".into()]);
            }
            if i > 0 {
                args.extend(["--join".into(), seed.to_string()]);
            }
            args.extend(pki.args(&node));
            let http = host.forward_tcp(http_inside)?;
            agents.push(Agent {
                log: dir.join(format!("{node}.log")),
                node,
                server,
                lan,
                http,
                pid: None,
                paused: false,
                args,
                host,
            });
        }
        let mut cluster = Cluster {
            agents,
            links,
            agent_bin: agent_bin.to_path_buf(),
            dir: dir.to_path_buf(),
            lab,
        };
        for i in 0..HOSTS {
            cluster.launch(i)?;
        }
        Ok(cluster)
    }

    /// Starts agent `i`'s process (again) with its original arguments and
    /// data directory.
    pub fn launch(&mut self, i: usize) -> anyhow::Result<()> {
        let agent = &mut self.agents[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&agent.log)?;
        let pid = self.lab.spawn(
            agent
                .host
                .command(&self.agent_bin)
                .args(&agent.args)
                .env("RUST_LOG", "info,openraft=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        agent.pid = Some(pid);
        agent.paused = false;
        Ok(())
    }

    /// Sends `signal` to agent `i`'s process, if it runs.
    pub fn signal(&mut self, i: usize, signal: libc::c_int) {
        if let Some(pid) = self.agents[i].pid {
            // SAFETY: a plain syscall on a pid the lab spawned and has not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
            match signal {
                libc::SIGSTOP => self.agents[i].paused = true,
                libc::SIGCONT => self.agents[i].paused = false,
                _ => {}
            }
        }
    }

    /// `kill -9` of agent `i` (it stays down until [`Cluster::launch`]).
    pub fn kill9(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        self.agents[i].pid = None;
        self.agents[i].paused = false;
    }

    /// SIGTERM to agent `i`, then waits (at most `wait`) for the process to exit.
    /// Returns whether it exited.
    pub async fn terminate(&mut self, i: usize, wait: Duration) -> bool {
        let Some(pid) = self.agents[i].pid else {
            return true;
        };
        self.signal(i, libc::SIGTERM);
        let deadline = Instant::now() + wait;
        let exited = loop {
            // The lab keeps the child unreaped: a zombie counts as exited.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
            if zombie {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !exited {
            self.signal(i, libc::SIGKILL);
        }
        self.agents[i].pid = None;
        exited
    }

    /// The link between hosts `a` and `b`.
    fn link(&self, a: usize, b: usize) -> &netlab::Link {
        let (a, b) = (a.min(b), a.max(b));
        self.links[a][b]
            .as_ref()
            .expect("a link joins every pair of hosts")
    }

    /// Every link, with its two hosts.
    fn all_links(&self) -> impl Iterator<Item = &netlab::Link> {
        self.links.iter().flatten().flatten()
    }

    /// Cuts the link between `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) {
        self.link(a, b).partition();
    }

    /// Cuts every link between a host of `side` and one not in it.
    pub fn split(&self, side: &[usize]) {
        for a in 0..HOSTS {
            for b in a + 1..HOSTS {
                if side.contains(&a) != side.contains(&b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Heals every link and removes delay and loss.
    pub fn heal_all(&self) {
        for link in self.all_links() {
            link.heal();
            link.set_delay(Duration::ZERO);
            link.set_loss(0.0);
        }
    }

    /// Sets delay (one way) and loss on every link.
    pub fn degrade_all(&self, delay: Duration, loss: f64) {
        for link in self.all_links() {
            link.set_delay(delay);
            link.set_loss(loss);
        }
    }

    /// The HTTP base URL of agent `i`.
    pub fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{}", self.agents[i].http, path)
    }

    /// The index of the agent whose LAN address is `addr`.
    pub fn by_lan(&self, addr: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.lan.to_string() == addr)
    }

    /// The leader as most running, unpaused servers name it
    /// (`/v1/status/leader`), if any server names one.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<usize> {
        let mut votes = [0usize; HOSTS];
        for i in 0..SERVERS {
            let a = &self.agents[i];
            if a.pid.is_none() || a.paused {
                continue;
            }
            let Ok(resp) = http.get(self.url(i, "/v1/status/leader")).send().await else {
                continue;
            };
            let Ok(text) = resp.text().await else {
                continue;
            };
            let Ok(addr) = serde_json::from_str::<String>(&text) else {
                continue;
            };
            if let Some(j) = self.by_lan(&addr) {
                votes[j] += 1;
            }
        }
        let (best, n) = votes
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .map(|(i, n)| (i, *n))?;
        (n > 0).then_some(best)
    }

    /// Waits until a leader is elected and every agent accepts a write
    /// (client agents have found the servers), at most `timeout`.
    pub async fn wait_ready(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut ready = [false; HOSTS];
        loop {
            for (i, done) in ready.iter_mut().enumerate() {
                if *done {
                    continue;
                }
                let url = self.url(i, &format!("/v1/kv/faults-ready/{}", self.agents[i].node));
                if let Ok(resp) = http.put(url).body("1").send().await
                    && resp.status().is_success()
                {
                    *done = true;
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = ready
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !**r)
                    .map(|(i, _)| self.agents[i].node.clone())
                    .collect();
                bail!(
                    "the cluster was not ready after {timeout:?} (no write through {}); logs in {}",
                    missing.join(", "),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
