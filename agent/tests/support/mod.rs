//! Helpers shared by the agent's process tests: start the built binary on a loopback
//! address of its own, wait for it, talk to it, kill it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `agent` binary built for these tests.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent")
}

/// A TCP port that is free on `ip` right now.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port that is free on `ip` right now.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent process started by a test; killed when dropped.
pub struct AgentProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub lan: SocketAddr,
    /// The DNS interface (UDP and TCP).
    pub dns: SocketAddr,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `agent run --dev` on `ip` with `data_dir`, logging to a file in `log_dir`.
    pub fn dev(ip: IpAddr, data_dir: &Path, log_dir: &Path) -> AgentProcess {
        let http = SocketAddr::new(ip, free_port(ip));
        let lan = SocketAddr::new(ip, free_udp_port(ip));
        Self::dev_on(http, lan, data_dir, log_dir)
    }

    /// Starts `agent run --dev` on the given addresses.
    pub fn dev_on(
        http: SocketAddr,
        lan: SocketAddr,
        data_dir: &Path,
        log_dir: &Path,
    ) -> AgentProcess {
        let mut args: Vec<String> = ["--dev", "--node", "dev-node", "--data-dir"]
            .map(String::from)
            .to_vec();
        args.push(data_dir.display().to_string());
        Self::start(&args, http, lan, log_dir)
    }

    /// Starts `agent run <args>` with `--bind lan --http http` and a DNS port of its own
    /// on the same address.
    pub fn start(
        args: &[String],
        http: SocketAddr,
        lan: SocketAddr,
        log_dir: &Path,
    ) -> AgentProcess {
        let log = log_dir.join(format!("agent-{}.log", http.port()));
        let dns = SocketAddr::new(http.ip(), free_udp_port(http.ip()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .arg("--bind")
            .arg(lan.to_string())
            .arg("--http")
            .arg(http.to_string())
            .arg("--dns")
            .arg(dns.to_string())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        AgentProcess {
            child,
            http,
            lan,
            dns,
            log,
        }
    }

    /// The base URL of the HTTP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Waits (at most 30 s) until the agent has a Raft leader.
    pub async fn wait_ready(&mut self) {
        self.wait_until("a Raft leader", "/v1/status/leader", |status, body| {
            status.is_success() && body.len() > 2
        })
        .await;
    }

    /// Waits (at most 30 s) until the HTTP API answers.
    pub async fn wait_http(&mut self) {
        self.wait_until("the HTTP API", "/v1/agent/self", |status, _| {
            status.is_success()
        })
        .await;
    }

    /// Polls `GET path` until `ready(status, body)` holds, failing after 30 s or as soon
    /// as the agent exits, with its log.
    async fn wait_until(
        &mut self,
        what: &str,
        path: &str,
        ready: impl Fn(reqwest::StatusCode, &str) -> bool,
    ) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "agent exited early with {status}; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok(response) = client.get(self.url(path)).send().await {
                let status = response.status();
                if let Ok(body) = response.text().await
                    && ready(status, &body)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after 30 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/v1/agent/members` as (name, status) pairs; empty if the agent does not answer.
    pub async fn members(&self) -> Vec<(String, u8)> {
        let Ok(client) = agent::client::ApiClient::new(&self.http.to_string()) else {
            return Vec::new();
        };
        client
            .members(false)
            .await
            .map(|members| members.into_iter().map(|m| (m.name, m.status)).collect())
            .unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most `limit`) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `agent <args>` against this agent's HTTP API.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_stdin(&self.http.to_string(), args, None)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An agent's fixed addresses and `agent run` arguments, so it can be restarted as
/// itself. Its data lives in `<dir>/<node>`.
pub struct NodeSpec {
    pub http: SocketAddr,
    pub lan: SocketAddr,
    /// The WAN endpoint (servers).
    pub wan: Option<SocketAddr>,
    pub args: Vec<String>,
}

impl NodeSpec {
    /// A server of datacenter `dc1` expecting three servers, on `ip`, joining `join`.
    pub fn server(pki: &Pki, ip: IpAddr, node: &str, join: Option<SocketAddr>, dir: &Path) -> Self {
        Self::server_in(pki, "dc1", 3, ip, node, join, dir)
    }

    /// A server of datacenter `dc` expecting `expect` servers, on `ip` (its WAN endpoint
    /// too), joining `join`.
    pub fn server_in(
        pki: &Pki,
        dc: &str,
        expect: u32,
        ip: IpAddr,
        node: &str,
        join: Option<SocketAddr>,
        dir: &Path,
    ) -> Self {
        let mut spec = Self::new(pki, agent::tls::Role::Server, dc, ip, node, join, dir);
        let wan = SocketAddr::new(ip, free_udp_port(ip));
        spec.args.extend([
            "--server".into(),
            "--bootstrap-expect".into(),
            expect.to_string(),
            "--wan-bind".into(),
            wan.to_string(),
        ]);
        spec.wan = Some(wan);
        spec
    }

    /// A client agent of datacenter `dc1` on `ip`, joining `join`.
    pub fn client(pki: &Pki, ip: IpAddr, node: &str, join: Option<SocketAddr>, dir: &Path) -> Self {
        Self::new(pki, agent::tls::Role::Client, "dc1", ip, node, join, dir)
    }

    /// Adds `--join-wan addr`.
    pub fn join_wan(mut self, addr: SocketAddr) -> Self {
        self.args.extend(["--join-wan".into(), addr.to_string()]);
        self
    }

    fn new(
        pki: &Pki,
        role: agent::tls::Role,
        dc: &str,
        ip: IpAddr,
        node: &str,
        join: Option<SocketAddr>,
        dir: &Path,
    ) -> Self {
        let mut args = pki.files(role, dc, node);
        args.extend(["--dc".into(), dc.into(), "--node".into(), node.into()]);
        args.push("--data-dir".into());
        args.push(dir.join(node).display().to_string());
        if let Some(seed) = join {
            args.extend(["--join".into(), seed.to_string()]);
        }
        NodeSpec {
            http: SocketAddr::new(ip, free_port(ip)),
            lan: SocketAddr::new(ip, free_udp_port(ip)),
            wan: None,
            args,
        }
    }

    /// Starts the agent, logging into `dir`.
    pub fn start(&self, dir: &Path) -> AgentProcess {
        AgentProcess::start(&self.args, self.http, self.lan, dir)
    }
}

/// Polls `check` every 100 ms until it holds, failing after `limit` with `what`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `agent <args>` with `AGENT_HTTP_ADDR=http_addr` and optional stdin.
pub fn cli_with_stdin(http_addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(agent_bin())
        .args(args)
        .env("AGENT_HTTP_ADDR", http_addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Bound of every in-process test.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `test`, failing it if it takes longer than [`TEST_TIMEOUT`].
pub async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out");
}

/// A CA in a temporary directory that issues node certificates.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A fresh CA.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        agent::tls::create_ca(dir.path(), agent::tls::CA_DAYS).unwrap();
        Self { dir }
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join(agent::tls::CA_CERT_FILE)
    }

    /// A certificate of datacenter dc1 from this CA.
    pub fn issue(&self, role: agent::tls::Role, node: &str) -> agent::tls::TlsMaterial {
        self.issue_in(role, "dc1", node)
    }

    /// A certificate of datacenter `dc` from this CA.
    pub fn issue_in(
        &self,
        role: agent::tls::Role,
        dc: &str,
        node: &str,
    ) -> agent::tls::TlsMaterial {
        self.issue_trusting(role, dc, node, &self.ca_file())
    }

    /// Certificate files of datacenter `dc` from this CA: `--ca-file`, `--cert-file` and
    /// `--key-file` arguments for `agent run`.
    pub fn files(&self, role: agent::tls::Role, dc: &str, node: &str) -> Vec<String> {
        let request = agent::tls::CertRequest::new(role, dc, node, format!("{node}.{dc}"));
        let files = agent::tls::create_cert(self.dir.path(), &request).unwrap();
        vec![
            "--ca-file".into(),
            self.ca_file().display().to_string(),
            "--cert-file".into(),
            files.cert.display().to_string(),
            "--key-file".into(),
            files.key.display().to_string(),
        ]
    }

    /// The `agent run` arguments of certificate files issued before by [`Pki::files`].
    pub fn existing_files(&self, dc: &str, node: &str) -> Vec<String> {
        let file = |suffix: &str| {
            self.dir
                .path()
                .join(format!("{node}.{dc}{suffix}"))
                .display()
                .to_string()
        };
        vec![
            "--ca-file".into(),
            self.ca_file().display().to_string(),
            "--cert-file".into(),
            file(".pem"),
            "--key-file".into(),
            file("-key.pem"),
        ]
    }

    /// A certificate from this CA, loaded with the roots in `ca_file`.
    pub fn issue_trusting(
        &self,
        role: agent::tls::Role,
        dc: &str,
        node: &str,
        ca_file: &Path,
    ) -> agent::tls::TlsMaterial {
        let request = agent::tls::CertRequest::new(role, dc, node, format!("{node}.{dc}"));
        let files = agent::tls::create_cert(self.dir.path(), &request).unwrap();
        agent::tls::TlsMaterial::load(ca_file, &files.cert, &files.key).unwrap()
    }
}

/// `GET url`, decoded from JSON.
pub async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: String) -> T {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// `PUT url` with `body`; the answer's text.
pub async fn put_text(
    client: &reqwest::Client,
    url: String,
    body: impl Into<reqwest::Body>,
) -> String {
    client
        .put(url)
        .body(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Whether `dig` can be run. CI installs it and sets `AGENT_TEST_REQUIRE_DIG`, so there
/// its absence fails the test instead of skipping the DNS checks.
pub fn have_dig() -> bool {
    let found = Command::new("dig")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("AGENT_TEST_REQUIRE_DIG").is_none(),
            "dig is required (apt-get install dnsutils)"
        );
        eprintln!("dig not found: skipping the DNS checks (apt-get install dnsutils)");
    }
    found
}

/// `dig @server -p port name type +short`, one answer per line.
pub fn dig(server: SocketAddr, name: &str, kind: &str) -> Vec<String> {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, kind])
        .args(["+short", "+time=2", "+tries=1"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}
