//! Agent processes for a benchmark (and any other program it compares them with, such
//! as etcd): certificates, start, kill, and clean-up.
//!
//! Every process started here is killed when the [`Cluster`] is dropped, and a Ctrl-C
//! handler drops it too, so nothing outlives the benchmark.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// The agent binary, found (or built) as the fault suite finds it.
pub use faults::run::agent_binary;

/// One agent process.
pub struct AgentProc {
    /// Node name.
    pub node: String,
    /// HTTP API address.
    pub http: SocketAddr,
    /// LAN gossip address.
    pub lan: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
    /// A client of its HTTP API.
    pub api: agent::client::ApiClient,
    child: Option<Child>,
}

impl AgentProc {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}

/// A set of agents sharing a CA in a temporary directory.
pub struct Cluster {
    agent: PathBuf,
    /// The agents, in start order.
    pub agents: Vec<AgentProc>,
    /// Other processes sharing the directory (the etcd members of `bench kv`), stopped
    /// with the agents.
    others: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A cluster with a fresh CA and no agents yet.
    pub fn new(agent: PathBuf) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("bench-").tempdir()?;
        let out = Command::new(&agent)
            .args(["tls", "ca", "create", "--dir"])
            .arg(dir.path().join("certs"))
            .output()?;
        if !out.status.success() {
            bail!(
                "agent tls ca create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Cluster {
            agent,
            agents: Vec::new(),
            others: Vec::new(),
            dir,
        })
    }

    /// The temporary directory holding the certificates, logs and data.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts a client agent named `node` on `ip`, joining `join` if given.
    pub fn start_client(
        &mut self,
        node: &str,
        ip: IpAddr,
        join: Option<SocketAddr>,
    ) -> anyhow::Result<()> {
        self.start(node, ip, join, None)
    }

    /// Starts a server agent named `node` on `ip` that waits for `expect` servers before
    /// electing a leader, joining `join` if given.
    pub fn start_server(
        &mut self,
        node: &str,
        ip: IpAddr,
        join: Option<SocketAddr>,
        expect: u32,
    ) -> anyhow::Result<()> {
        self.start(node, ip, join, Some(expect))
    }

    /// Starts an agent: a server expecting `expect` servers, or a client if `None`. Its
    /// endpoints are the agent's default ports on `ip`.
    fn start(
        &mut self,
        node: &str,
        ip: IpAddr,
        join: Option<SocketAddr>,
        expect: Option<u32>,
    ) -> anyhow::Result<()> {
        let certs = self.dir.path().join("certs");
        let role = if expect.is_some() {
            "--server"
        } else {
            "--client"
        };
        let out = Command::new(&self.agent)
            .args(["tls", "cert", "create", role, "--dc", "dc1", "--node", node])
            .args(["--out", node, "--dir"])
            .arg(&certs)
            .output()?;
        if !out.status.success() {
            bail!(
                "agent tls cert create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let http = SocketAddr::new(ip, 8500);
        let lan = SocketAddr::new(ip, 8301);
        let log = self.dir.path().join(format!("{node}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(&self.agent);
        command
            .args(["run", "--node", node, "--data-dir"])
            .arg(self.dir.path().join(node))
            .arg("--bind")
            .arg(lan.to_string())
            .arg("--http")
            .arg(http.to_string())
            .arg("--dns")
            .arg(SocketAddr::new(ip, 8600).to_string())
            .arg("--ca-file")
            .arg(certs.join("agent-ca.pem"))
            .arg("--cert-file")
            .arg(certs.join(format!("{node}.pem")))
            .arg("--key-file")
            .arg(certs.join(format!("{node}-key.pem")))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(expect) = expect {
            command
                .arg("--server")
                .arg("--bootstrap-expect")
                .arg(expect.to_string());
        }
        if let Some(seed) = join {
            command.arg("--join").arg(seed.to_string());
        }
        let child = command.spawn().context("starting an agent")?;
        self.agents.push(AgentProc {
            node: node.to_string(),
            http,
            lan,
            log,
            api: agent::client::ApiClient::new(&http.to_string())?,
            child: Some(child),
        });
        Ok(())
    }

    /// Starts another program (an etcd member) whose output goes to `<dir>/<name>.log`,
    /// stopped like the agents; returns the log's path.
    pub fn start_other(&mut self, name: &str, mut command: Command) -> anyhow::Result<PathBuf> {
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.others.push(child);
        Ok(log)
    }

    /// SIGKILL and reap every process.
    fn kill_all(&mut self) {
        for agent in &mut self.agents {
            agent.kill9();
        }
        for mut child in self.others.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The agent's version, from `agent --version` (`agent 0.1.0` → `0.1.0`).
    pub fn agent_version(&self) -> String {
        Command::new(&self.agent)
            .arg("--version")
            .output()
            .ok()
            .map(|out| {
                let text = String::from_utf8_lossy(&out.stdout);
                let text = text.trim();
                text.strip_prefix("agent ").unwrap_or(text).to_string()
            })
            .unwrap_or_else(|| "unknown".into())
    }
}

impl Cluster {
    /// Stops every agent and keeps the directory (logs, data) instead of removing it.
    pub fn keep(&mut self) -> anyhow::Result<PathBuf> {
        self.kill_all();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::Builder::new().prefix("bench-").tempdir()?,
        );
        Ok(dir.keep())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Replaces the progress line on stderr (an empty text clears it).
pub fn progress(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(err, "\r\x1b[2K{text}");
    let _ = err.flush();
}
