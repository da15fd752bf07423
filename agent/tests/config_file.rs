//! Process tests of `agent run --config FILE`: settings taken from TOML and JSON files,
//! and bad files refused before the agent starts.

// Setup helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use support::{AgentProcess, free_port, free_udp_port};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// `agent run <args>` on fresh ports of `ip`, logging into `log_dir`.
fn start(ip: IpAddr, args: &[String], log_dir: &Path) -> AgentProcess {
    let http = SocketAddr::new(ip, free_port(ip));
    let lan = SocketAddr::new(ip, free_udp_port(ip));
    AgentProcess::start(args, http, lan, log_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_toml_and_json_files() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let toml = conf.join("agent.toml");
    std::fs::write(
        &toml,
        r#"
            node = "from-config-file"
            dc = "west"
            data_dir = "data"

            [[services]]
            name = "web"
            port = 8080
        "#,
    )
    .unwrap();
    let json = conf.join("later.json");
    std::fs::write(
        &json,
        r#"{"dc": "east", "services": [{"Name": "db", "Port": 5432}]}"#,
    )
    .unwrap();

    let args = [
        "--dev".to_string(),
        "--config".to_string(),
        toml.display().to_string(),
        "--config".to_string(),
        json.display().to_string(),
    ];
    let mut agent = start(ip(27), &args, dir.path());
    agent.wait_http().await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let me: serde_json::Value = support::get_json(&client, agent.url("/v1/agent/self")).await;
    assert_eq!(me["Config"]["NodeName"], "from-config-file", "{me}");
    assert_eq!(
        me["Config"]["Datacenter"], "east",
        "the later file wins: {me}"
    );
    // `data_dir = "data"` is relative to the file's directory.
    let node_id = std::fs::read_to_string(conf.join("data").join("node-id")).unwrap();
    assert_eq!(me["Config"]["NodeID"], node_id.trim(), "{me}");
}

#[test]
fn bad_config_files_stop_agent_run_with_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cases = [
        (
            write("unknown.toml", "node = \"a\"\ncolour = \"blue\"\n"),
            "unknown field `colour`",
        ),
        (
            write("syntax.json", "{\n  \"node\": \"a\",\n}"),
            "line 3 column 1",
        ),
        (write("type.toml", "bootstrap_expect = \"three\""), "line 1"),
        (
            write(
                "dup.toml",
                "[[services]]\nname = \"web\"\n[[services]]\nName = \"web\"",
            ),
            "service id \"web\" is defined twice",
        ),
        (write("bad.yaml", "node: a"), "must end in .toml or .json"),
        (dir.path().join("missing.toml"), "cannot read it"),
    ];
    for (i, (file, expected)) in cases.into_iter().enumerate() {
        let args = [
            "--dev".to_string(),
            "--config".to_string(),
            file.display().to_string(),
        ];
        let log_dir = dir.path().join(format!("log-{i}"));
        std::fs::create_dir(&log_dir).unwrap();
        let mut agent = start(ip(28), &args, &log_dir);
        let code = agent.wait_exit(Duration::from_secs(20));
        let log = agent.log_text();
        assert_eq!(
            code,
            Some(2),
            "{}: exit {code:?}, log:\n{log}",
            file.display()
        );
        assert!(
            log.contains(&file.display().to_string()) && log.contains(expected),
            "{}: the error does not name the file and say {expected:?}:\n{log}",
            file.display()
        );
    }
}
