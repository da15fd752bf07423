use std::time::Duration;

use events::Received;

use super::*;

/// A local state on its own bus and data dir.
struct Harness {
    local: LocalState,
    bus: Bus,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

fn config(dir: &std::path::Path) -> LocalConfig {
    LocalConfig {
        node: "node-1".into(),
        dc: "dc1".into(),
        data_dir: dir.to_path_buf(),
        ..LocalConfig::default()
    }
}

impl Harness {
    fn start(config: LocalConfig) -> anyhow::Result<Harness> {
        let bus = Bus::new();
        let tracker = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let local = LocalState::start(config, bus.clone(), &tracker, shutdown.clone())?;
        tracker.close();
        Ok(Harness {
            local,
            bus,
            tracker,
            shutdown,
        })
    }

    /// Stops every check; they must end promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .expect("the check tasks end on shutdown");
    }

    fn check(&self, id: &str) -> Option<LocalCheck> {
        self.local
            .snapshot()
            .checks
            .into_iter()
            .find(|c| c.check_id == id)
    }

    /// Waits (at most 10 s) for the check `id` to reach `status`.
    async fn wait_status(&self, id: &str, status: HealthStatus) -> LocalCheck {
        let mut versions = self.local.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(check) = self.check(id).filter(|c| c.status == status) {
                return check;
            }
            let _ = tokio::time::timeout_at(deadline, versions.changed())
                .await
                .unwrap_or_else(|_| panic!("{id} never became {status}: {:?}", self.check(id)));
        }
    }
}

fn ttl_check(id: &str, ttl: Duration) -> CheckDefinition {
    CheckDefinition {
        id: id.into(),
        name: id.into(),
        service_id: String::new(),
        kind: CheckKind::Ttl { ttl },
        interval: Duration::ZERO,
        timeout: check::DEFAULT_TIMEOUT,
        notes: String::new(),
        status: None,
    }
}

fn script_check(id: &str, script: &str) -> CheckDefinition {
    CheckDefinition {
        kind: CheckKind::Script {
            args: vec!["sh".into(), "-c".into(), script.into()],
        },
        interval: Duration::from_millis(100),
        ..ttl_check(id, Duration::ZERO)
    }
}

fn web() -> ServiceRegistration {
    ServiceRegistration::from_json(
        br#"{"Name": "web", "ID": "web-1", "Tags": ["v1"], "Port": 8080,
             "Check": {"TTL": "30s", "Notes": "ping me"}}"#,
    )
    .unwrap()
}

fn health_events(subscription: &mut events::Subscription) -> Vec<(String, HealthStatus)> {
    let mut seen = Vec::new();
    while let Some(Received::Event(event)) = subscription.try_recv() {
        if let Event::Health { check, status, .. } = event {
            seen.push((check, status));
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn a_ttl_check_is_set_from_outside_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.checks = vec![ttl_check("mem", Duration::from_secs(10))];
    let h = Harness::start(config).unwrap();
    let mut bus = h.bus.subscribe();
    let mut versions = h.local.subscribe();
    let first = *versions.borrow_and_update();
    assert_eq!(h.check("mem").unwrap().status, HealthStatus::Critical);

    h.local
        .update_ttl("mem", HealthStatus::Passing, "all fine")
        .unwrap();
    let check = h.check("mem").unwrap();
    assert_eq!(
        (check.status, check.output.as_str()),
        (HealthStatus::Passing, "all fine")
    );
    assert_eq!(check.kind, "ttl");
    assert!(*versions.borrow_and_update() > first);

    // Refreshed within the TTL, it holds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.local
        .update_ttl("mem", HealthStatus::Passing, "all fine")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(h.check("mem").unwrap().status, HealthStatus::Passing);

    // Not refreshed, it expires.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let check = h.check("mem").unwrap();
    assert_eq!(
        (check.status, check.output.as_str()),
        (HealthStatus::Critical, "TTL expired")
    );
    assert_eq!(
        health_events(&mut bus),
        [
            ("mem".to_string(), HealthStatus::Passing),
            ("mem".to_string(), HealthStatus::Critical)
        ]
    );

    let e = h
        .local
        .update_ttl("nope", HealthStatus::Passing, "")
        .unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(
        e.to_string(),
        "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name."
    );
    h.stop().await;
}

#[tokio::test]
async fn services_and_their_checks_register_and_deregister_together() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(config(dir.path())).unwrap();
    let mut bus = h.bus.subscribe();
    let tags = h.local.service_tags();
    h.local.register_service(web(), false).await.unwrap();
    assert_eq!(
        *tags.borrow().clone(),
        [("web".to_string(), vec!["v1".to_string()])]
    );

    let snapshot = h.local.snapshot();
    assert_eq!(snapshot.node, "node-1");
    assert_eq!(snapshot.services.len(), 1);
    let check = &snapshot.checks[0];
    assert_eq!(check.check_id, "service:web-1");
    assert_eq!(check.service_name, "web");
    assert_eq!(check.service_tags, ["v1"]);
    assert_eq!(check.notes, "ping me");
    assert_eq!(
        health_events(&mut bus),
        [("service:web-1".to_string(), HealthStatus::Critical)]
    );

    // A check of the node, and one naming a service that is not there.
    let mut node_check = ttl_check("node-ttl", Duration::from_secs(30));
    h.local.register_check(node_check.clone()).await.unwrap();
    node_check.service_id = "db".into();
    let e = h.local.register_check(node_check).await.unwrap_err();
    assert!(
        matches!(e, LocalError::NoSuchService(_)) && e.is_bad_request(),
        "{e}"
    );

    // pass/warn/fail apply to TTL checks only.
    let mut http = CheckDefinition::from_json(
        br#"{"Name": "h", "HTTP": "http://127.0.0.1:1/", "Interval": "1h", "ServiceID": "web-1"}"#,
    )
    .unwrap();
    h.local.register_check(http.clone()).await.unwrap();
    let e = h
        .local
        .update_ttl("h", HealthStatus::Passing, "")
        .unwrap_err();
    assert!(matches!(e, LocalError::NotTtl(_)), "{e}");

    // Replacing the service's checks drops those not named again.
    http.id = "h2".into();
    let mut again = web();
    again.checks.clear();
    h.local.register_service(again, true).await.unwrap();
    let ids: Vec<String> = h
        .local
        .snapshot()
        .checks
        .into_iter()
        .map(|c| c.check_id)
        .collect();
    assert_eq!(ids, ["node-ttl"]);

    h.local.register_service(web(), false).await.unwrap();
    h.local.deregister_service("web-1").await.unwrap();
    let snapshot = h.local.snapshot();
    assert!(snapshot.services.is_empty());
    assert_eq!(snapshot.checks.len(), 1);
    assert!(tags.borrow().is_empty());
    assert!(
        h.local
            .deregister_service("web-1")
            .await
            .unwrap_err()
            .is_not_found()
    );
    h.local.deregister_check("node-ttl").await.unwrap();
    assert!(
        h.local
            .deregister_check("node-ttl")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(h.local.inner.tasks.len(), 0, "every check task ended");
    h.stop().await;
}

#[tokio::test]
async fn script_checks_run_until_deregistered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.enable_script_checks = true;
    config.checks = vec![script_check("warns", "echo careful; exit 1")];
    let h = Harness::start(config).unwrap();
    let check = h.wait_status("warns", HealthStatus::Warning).await;
    assert_eq!(check.output, "careful\n");
    assert_eq!(check.kind, "script");

    h.local
        .register_check(script_check("passes", "echo ok"))
        .await
        .unwrap();
    h.wait_status("passes", HealthStatus::Passing).await;
    // Replaced: the new definition's task takes over.
    h.local
        .register_check(script_check("passes", "exit 7"))
        .await
        .unwrap();
    h.wait_status("passes", HealthStatus::Critical).await;
    h.local.deregister_check("passes").await.unwrap();
    h.local.deregister_check("warns").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !h.local.inner.tasks.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "check tasks still run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.stop().await;
}

#[tokio::test]
async fn script_checks_from_the_api_need_enabling() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(config(dir.path())).unwrap();
    let e = h
        .local
        .register_check(script_check("s", "true"))
        .await
        .unwrap_err();
    assert!(matches!(e, LocalError::ScriptsDisabled), "{e}");
    let mut service = web();
    service.checks = vec![script_check("s", "true")];
    assert!(matches!(
        h.local.register_service(service, false).await,
        Err(LocalError::ScriptsDisabled)
    ));
    assert!(
        h.local.snapshot().services.is_empty(),
        "nothing half registered"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_stops_running_checks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.checks = vec![
        script_check("slow", "sleep 30"),
        ttl_check("ttl", Duration::from_secs(3600)),
    ];
    let h = Harness::start(config).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let local = h.local.clone();
    h.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        local
            .register_check(ttl_check("late", Duration::from_secs(1)))
            .await,
        Err(LocalError::ShuttingDown)
    ));
}

#[tokio::test]
async fn api_registrations_survive_a_restart_and_config_wins() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(config(dir.path())).unwrap();
    h.local.register_service(web(), false).await.unwrap();
    let mut db = web();
    db.service.id = "db".into();
    db.service.service = "db".into();
    db.checks.clear();
    h.local.register_service(db, false).await.unwrap();
    h.local
        .register_check(ttl_check("node-ttl", Duration::from_secs(30)))
        .await
        .unwrap();
    h.local
        .update_ttl("node-ttl", HealthStatus::Passing, "up")
        .unwrap();
    let before = h.local.snapshot();
    h.stop().await;

    // The same definitions come back; statuses start over.
    let h = Harness::start(config(dir.path())).unwrap();
    let after = h.local.snapshot();
    assert_eq!(after.services, before.services);
    let ids = |s: &LocalSnapshot| {
        s.checks
            .iter()
            .map(|c| c.check_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(h.check("node-ttl").unwrap().status, HealthStatus::Critical);
    h.stop().await;

    // A config file's definition of the same id wins over the saved one.
    let mut config = config(dir.path());
    let mut from_file = web().service;
    from_file.port = 9090;
    config.services = vec![from_file.clone()];
    let h = Harness::start(config).unwrap();
    let services = h.local.snapshot().services;
    assert_eq!(services.len(), 2);
    assert!(services.contains(&from_file));
    // Saved again, the file no longer holds the service the config defines, but keeps
    // the checks registered with it.
    h.local.deregister_service("db").await.unwrap();
    let saved = store::load(&dir.path().join(store::FILE)).unwrap();
    assert!(saved.services.is_empty(), "{saved:?}");
    assert_eq!(saved.checks.len(), 2, "{saved:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_corrupt_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(store::FILE),
        "{\"Version\": 1, \"Services\": [",
    )
    .unwrap();
    let e = Harness::start(config(dir.path())).err().unwrap();
    let text = format!("{e:#}");
    assert!(
        text.contains("local.json") && text.contains("not a valid"),
        "{text}"
    );
    std::fs::write(
        dir.path().join(store::FILE),
        r#"{"Version": 1, "Checks": [{"Name": "x"}]}"#,
    )
    .unwrap();
    assert!(Harness::start(config(dir.path())).is_err());
}

#[tokio::test]
async fn checks_are_bounded_in_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.checks = (0..MAX_CHECKS)
        .map(|i| ttl_check(&format!("c{i}"), Duration::from_secs(3600)))
        .collect();
    let h = Harness::start(config.clone()).unwrap();
    let e = h
        .local
        .register_check(ttl_check("one-more", Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(e.is_bad_request(), "{e}");
    assert_eq!(
        e.to_string(),
        format!("this agent holds at most {MAX_CHECKS} checks")
    );
    // Replacing one is no new check.
    h.local
        .register_check(ttl_check("c0", Duration::from_secs(60)))
        .await
        .unwrap();
    h.stop().await;

    config
        .checks
        .push(ttl_check("one-more", Duration::from_secs(1)));
    assert!(Harness::start(config).is_err());
}
