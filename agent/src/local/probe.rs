//! One run of an HTTP, TCP or script check: its status and output.

use std::time::Duration;

use events::HealthStatus;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::check::{CheckKind, MAX_OUTPUT, bound_output};
use crate::process::{self, End};

/// What one run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The status it sets.
    pub status: HealthStatus,
    /// Its output, at most [`MAX_OUTPUT`] bytes.
    pub output: String,
}

impl Probe {
    fn new(status: HealthStatus, output: String) -> Probe {
        Probe {
            status,
            output: bound_output(output),
        }
    }
}

/// Runs the check of `kind` once, within `timeout`. `None` when `stop` fired first (a
/// script is then killed with its process group). TTL checks have nothing to run.
pub async fn run(
    http: &reqwest::Client,
    kind: &CheckKind,
    timeout: Duration,
    stop: &CancellationToken,
) -> Option<Probe> {
    match kind {
        CheckKind::Ttl { .. } => None,
        CheckKind::Http { url, method } => {
            stop.run_until_cancelled(http_probe(http, url, method, timeout))
                .await
        }
        CheckKind::Tcp { addr } => stop.run_until_cancelled(tcp_probe(addr, timeout)).await,
        CheckKind::Script { args } => script_probe(args, timeout, stop).await,
    }
}

/// 2xx passing, 429 warning, anything else (or no answer in time) critical.
pub async fn http_probe(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    timeout: Duration,
) -> Probe {
    let verb = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let request = client
        .request(verb, url)
        .timeout(timeout)
        .header(reqwest::header::USER_AGENT, "Consul Health Check")
        .header(reqwest::header::ACCEPT, "text/plain, text/*, */*");
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return Probe::new(
                HealthStatus::Critical,
                format!("{method} {url}: {}", error_chain(&e)),
            );
        }
    };
    let code = response.status();
    let mut body = Vec::new();
    // Only the head of the body is read; the rest is dropped with the connection.
    while body.len() < MAX_OUTPUT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(MAX_OUTPUT - body.len())])
            }
            Ok(None) | Err(_) => break,
        }
    }
    let status = if code.is_success() {
        HealthStatus::Passing
    } else if code == reqwest::StatusCode::TOO_MANY_REQUESTS {
        HealthStatus::Warning
    } else {
        HealthStatus::Critical
    };
    Probe::new(
        status,
        format!(
            "HTTP {method} {url}: {code} Output: {}",
            String::from_utf8_lossy(&body)
        ),
    )
}

/// Passing when a TCP connection to `addr` opens within `timeout`.
pub async fn tcp_probe(addr: &str, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::new(
            HealthStatus::Passing,
            format!("TCP connect {addr}: Success"),
        ),
        Ok(Err(e)) => Probe::new(HealthStatus::Critical, format!("dial tcp {addr}: {e}")),
        Err(_) => Probe::new(
            HealthStatus::Critical,
            format!("dial tcp {addr}: i/o timeout after {timeout:?}"),
        ),
    }
}

/// Exit 0 passing, 1 warning, anything else critical; killed with its process group
/// after `timeout`. The output is stdout then stderr, at most [`MAX_OUTPUT`] bytes.
pub async fn script_probe(
    args: &[String],
    timeout: Duration,
    stop: &CancellationToken,
) -> Option<Probe> {
    let Some((program, rest)) = args.split_first() else {
        return Some(Probe::new(
            HealthStatus::Critical,
            "no command to run".into(),
        ));
    };
    let mut command = Command::new(program);
    command.args(rest);
    let finished = match process::run(command, Vec::new(), timeout, stop).await {
        Ok(finished) => finished,
        Err(e) => {
            return Some(Probe::new(
                HealthStatus::Critical,
                format!("cannot run {program:?}: {e}"),
            ));
        }
    };
    let mut output = String::from_utf8_lossy(finished.stdout.head()).into_owned();
    output.push_str(&String::from_utf8_lossy(finished.stderr.head()));
    let status = match finished.end {
        End::Shutdown => return None,
        End::TimedOut => {
            return Some(Probe::new(
                HealthStatus::Critical,
                format!("Timed out ({timeout:?}) running check"),
            ));
        }
        End::Exited(Err(e)) => {
            return Some(Probe::new(
                HealthStatus::Critical,
                format!("waiting for {program:?}: {e}"),
            ));
        }
        End::Exited(Ok(exit)) => match exit.code() {
            Some(0) => HealthStatus::Passing,
            Some(1) => HealthStatus::Warning,
            _ => HealthStatus::Critical,
        },
    };
    Some(Probe::new(status, output))
}

/// An error and its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn script_exit_codes_map_to_statuses() {
        let stop = CancellationToken::new();
        let second = Duration::from_secs(5);
        for (script, status) in [
            ("echo fine", HealthStatus::Passing),
            ("echo meh >&2; exit 1", HealthStatus::Warning),
            ("exit 2", HealthStatus::Critical),
            ("kill -9 $$", HealthStatus::Critical),
        ] {
            let probe = script_probe(&args(&["sh", "-c", script]), second, &stop)
                .await
                .unwrap();
            assert_eq!(probe.status, status, "{script}");
        }
        let probe = script_probe(
            &args(&["sh", "-c", "echo out; echo err >&2"]),
            second,
            &stop,
        )
        .await
        .unwrap();
        assert_eq!(probe.output, "out\nerr\n");
        let probe = script_probe(&args(&["/nonexistent/program"]), second, &stop)
            .await
            .unwrap();
        assert_eq!(probe.status, HealthStatus::Critical);
        assert!(probe.output.contains("cannot run"), "{}", probe.output);
    }

    #[tokio::test]
    async fn a_script_output_is_bounded_and_a_slow_one_times_out() {
        let stop = CancellationToken::new();
        let probe = script_probe(
            &args(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' y"]),
            Duration::from_secs(5),
            &stop,
        )
        .await
        .unwrap();
        assert_eq!(probe.output.len(), MAX_OUTPUT);
        let started = std::time::Instant::now();
        let probe = script_probe(&args(&["sleep", "30"]), Duration::from_millis(200), &stop)
            .await
            .unwrap();
        assert_eq!(probe.status, HealthStatus::Critical);
        assert!(probe.output.starts_with("Timed out"), "{}", probe.output);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn http_checks_read_the_status_code() {
        use axum::http::StatusCode;
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "all good" }))
            .route(
                "/busy",
                get(|| async { (StatusCode::TOO_MANY_REQUESTS, "slow down") }),
            )
            .route(
                "/down",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let second = Duration::from_secs(5);
        let url = |path: &str| format!("http://{addr}{path}");
        let ok = http_probe(&client, &url("/ok"), "GET", second).await;
        assert_eq!(ok.status, HealthStatus::Passing);
        assert!(
            ok.output.ends_with("200 OK Output: all good"),
            "{}",
            ok.output
        );
        let busy = http_probe(&client, &url("/busy"), "GET", second).await;
        assert_eq!(busy.status, HealthStatus::Warning);
        let down = http_probe(&client, &url("/down"), "GET", second).await;
        assert_eq!(down.status, HealthStatus::Critical);
        let wrong_method = http_probe(&client, &url("/ok"), "POST", second).await;
        assert_eq!(wrong_method.status, HealthStatus::Critical);
        let slow = http_probe(&client, &url("/slow"), "GET", Duration::from_millis(200)).await;
        assert_eq!(slow.status, HealthStatus::Critical);
        server.abort();
    }

    #[tokio::test]
    async fn tcp_checks_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let second = Duration::from_secs(5);
        let open = tcp_probe(&addr.to_string(), second).await;
        assert_eq!(open.status, HealthStatus::Passing, "{}", open.output);
        drop(listener);
        let closed = tcp_probe(&addr.to_string(), second).await;
        assert_eq!(closed.status, HealthStatus::Critical, "{}", closed.output);
    }
}
