//! The scenarios in `examples/` run as their READMEs say, so they cannot rot.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn local_cluster_starts_five_agents_and_stops_them_on_ctrl_c() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/local-cluster/run.sh"
    );
    let mut child = Command::new("bash")
        .arg(script)
        .env("AGENT", support::agent_bin())
        .env("BASE", "41")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    // Read until the members table has been printed and the script waits for Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = Vec::new();
    while !output.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the script did not get ready; output:\n{}",
                    output.join("\n")
                );
            }
        }
    }
    let alive: Vec<&String> = output
        .iter()
        .filter(|l| l.contains(" alive ") && l.contains("dc1"))
        .collect();
    assert_eq!(alive.len(), 5, "output:\n{}", output.join("\n"));
    assert_eq!(alive.iter().filter(|l| l.contains("server")).count(), 3);
    assert_eq!(alive.iter().filter(|l| l.contains("client")).count(), 2);
    // One Raft leader among three servers, and a key written through one client agent
    // is read through the other (both forward to the servers).
    let peers: Vec<&String> = output
        .iter()
        .filter(|l| {
            l.starts_with("server-") && (l.contains(" leader ") || l.contains(" follower "))
        })
        .collect();
    assert_eq!(peers.len(), 3, "output:\n{}", output.join("\n"));
    assert_eq!(peers.iter().filter(|l| l.contains(" leader ")).count(), 1);
    assert!(
        output
            .iter()
            .any(|l| l == "read through client-2: hello from client-1"),
        "output:\n{}",
        output.join("\n")
    );
    // A client agent answers status reads by forwarding them to a server.
    let info = std::process::Command::new(support::agent_bin())
        .args(["info"])
        .env("AGENT_HTTP_ADDR", "127.0.0.44:8500")
        .output()
        .unwrap();
    assert!(info.status.success(), "agent info against a client agent");
    let status = status_leader("127.0.0.44:8500");
    assert!(
        status.starts_with("\"127.0.0.4"),
        "leader via client-1: {status}"
    );

    // Ctrl-C stops the script and every agent it started.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the script did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for last in 41..=45 {
        let addr = format!("127.0.0.{last}:8500");
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "an agent still answers on {addr}"
        );
    }
}

/// `GET /v1/status/leader` with a plain HTTP/1.1 request (this test is synchronous).
fn status_leader(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /v1/status/leader HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn deploy_events_reach_every_host_handler() {
    let (status, output) = run_example("deploy-events", "51", Duration::from_secs(90));
    assert!(status.success(), "output:\n{}", output.join("\n"));
    for host in 1..=4 {
        let want = format!("host-{host}: v42");
        assert!(
            output.contains(&want),
            "{want} missing; output:\n{}",
            output.join("\n")
        );
    }
    assert!(output.iter().any(|l| l.starts_with("Event ID: ")));
    assert!(output.iter().any(|l| l == "every host deployed v42"));
    for last in 51..=54 {
        let addr = format!("127.0.0.{last}:8500");
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "an agent still answers on {addr}"
        );
    }
}

/// A Consul client library from PyPI (py-consul) runs unchanged against an agent.
#[test]
fn python_client_example_passes_with_py_consul() {
    let found = Command::new("python3")
        .args(["-c", "import consul"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("AGENT_TEST_REQUIRE_PY_CONSUL").is_none(),
            "py-consul is required (pip install py-consul)"
        );
        eprintln!("py-consul not found: skipping (pip install py-consul)");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = support::AgentProcess::dev(
        std::net::IpAddr::from([127, 0, 0, 166]),
        &dir.path().join("data"),
        dir.path(),
    );
    runtime.block_on(agent.wait_ready());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python-client/client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(agent.http.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("py-consul: all steps passed"),
        "stdout:\n{stdout}\nstderr:\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log_text()
    );
}

/// Two federated datacenters: a key and an event sent through dc1's client agent with
/// `?dc=dc2` / `--dc dc2` land in dc2 only.
#[test]
fn two_datacenters_answer_requests_for_each_other() {
    let started = Instant::now();
    let (status, output) = run_example("two-datacenters", "71", Duration::from_secs(120));
    let all = output.join("\n");
    eprintln!("two-datacenters ran for {:?}", started.elapsed());
    assert!(status.success(), "output:\n{all}");
    for want in [
        "datacenters: [\"dc1\",\"dc2\"]",
        "write to dc2 via dc1 client: true",
        "dc2 via dc1 client: blue",
        "dc2 on its own server: blue",
        "dc1 has app/color: no (HTTP 404)",
        "deploy events in dc2: 1",
        "deploy events in dc1: 0",
        "Stopped.",
    ] {
        assert!(
            output.iter().any(|l| l == want),
            "{want} missing; output:\n{all}"
        );
    }
    // The WAN pool as `agent members --wan` prints it: the four servers, alive.
    let wan: Vec<(&str, &str)> = output
        .iter()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() >= 5 && fields[2] == "alive" && fields[3] == "server")
                .then(|| (fields[0], fields[4]))
        })
        .collect();
    assert_eq!(
        wan,
        [
            ("s1.dc1", "dc1"),
            ("s2.dc1", "dc1"),
            ("s3.dc1", "dc1"),
            ("t1.dc2", "dc2")
        ],
        "output:\n{all}"
    );
    assert!(output.iter().any(|l| l.starts_with("Event ID: ")), "{all}");
    for last in 71..=75 {
        let addr = format!("127.0.0.{last}:8500");
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "an agent still answers on {addr}"
        );
    }
}

/// Runs `examples/<name>/run.sh` (without `KEEP`) with the built agent on 127.0.0.<base>
/// onwards until it exits, stopping it (its trap stops its agents) if it runs longer than
/// `limit`. Returns its exit status and its output lines.
fn run_example(name: &str, base: &str, limit: Duration) -> (std::process::ExitStatus, Vec<String>) {
    let script = format!("{}/../examples/{name}/run.sh", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("bash")
        .arg(script)
        .env("AGENT", support::agent_bin())
        .env("BASE", base)
        .env_remove("KEEP")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            panic!("examples/{name}/run.sh did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, reader.join().unwrap())
}
