//! A short run of the fault suite (CI): three scenarios of 9 s each with five
//! clients against a five-agent cluster in network namespaces; every history
//! must be linearizable (default and consistent reads) with no lost write.
//!
//! Needs root, `/dev/net/tun` and iproute2 (netlab); otherwise it prints why
//! and passes, unless `NETLAB_REQUIRE=1` is set, which makes it fail instead.
//! The agent binary is built (`cargo build -p agent`, same profile) if needed.

use std::time::Instant;

use faults::run::{Scenario, SuiteConfig, run_suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_fault_suite_is_linearizable_without_lost_writes() {
    if let Err(e) = netlab::available() {
        assert!(
            std::env::var("NETLAB_REQUIRE").as_deref() != Ok("1"),
            "NETLAB_REQUIRE=1 but network namespaces are unavailable: {e}"
        );
        eprintln!("faults short run: skipped ({e})");
        return;
    }
    let started = Instant::now();
    let config = SuiteConfig {
        scenarios: vec![
            Scenario::PartitionLeader,
            Scenario::KillLeader,
            Scenario::PauseLeader,
        ],
        seconds: 9,
        clients: 5,
        netns_prefix: "faultsci".into(),
        ..SuiteConfig::default()
    };
    let suite = match run_suite(config).await {
        Ok(suite) => suite,
        Err(e) => panic!("the suite could not run: {e:#}"),
    };
    eprintln!("{}", suite.last_line());
    eprintln!("faults short run: {:.1} s", started.elapsed().as_secs_f64());
    let details: Vec<String> = suite.scenarios.iter().map(|s| s.line()).collect();
    assert!(suite.passed(), "{}", details.join("\n"));
    assert!(suite.operations() > 0);
}
