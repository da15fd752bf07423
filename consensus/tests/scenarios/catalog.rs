//! The catalog on a running server: writes through Raft, reads, blocking queries woken
//! only by what they read, the change feed, and a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use consensus::{
    CatalogChange, CatalogScope, CheckEntry, CheckStatus, NodeRegistration, Request, Response,
    ServiceEntry,
};

use crate::util::{open_single, start_single};

fn registration(node: &str, service: &str, status: CheckStatus) -> Request {
    Request::CatalogSync(NodeRegistration {
        node: node.into(),
        id: String::new(),
        address: "10.0.0.1".into(),
        meta: BTreeMap::new(),
        services: vec![ServiceEntry {
            service: service.into(),
            port: 8080,
            ..ServiceEntry::default()
        }],
        checks: vec![CheckEntry {
            check_id: format!("{service}-check"),
            name: "check".into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: service.into(),
            kind: "ttl".into(),
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_change_wakes_the_watchers_of_its_service_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_router, server) = start_single(dir.path()).await;
    let catalog = server.catalog();
    let mut feed = catalog.changes();
    let outcome = server
        .write(registration("n1", "web", CheckStatus::Passing))
        .await
        .unwrap();
    assert!(matches!(outcome.response, Response::Catalog(o) if o.services == 1));
    server
        .write(registration("n2", "db", CheckStatus::Passing))
        .await
        .unwrap();

    let (healthy, web_index) = catalog.service_health("web", &[], true).unwrap();
    assert_eq!(healthy.len(), 1);
    let (_, db_index) = catalog.service_health("db", &[], true).unwrap();
    let web = {
        let catalog = catalog.clone();
        tokio::spawn(async move {
            catalog
                .wait(
                    CatalogScope::Service("web".into()),
                    web_index,
                    Duration::from_secs(30),
                )
                .await
        })
    };
    let db = {
        let catalog = catalog.clone();
        tokio::spawn(async move {
            catalog
                .wait(
                    CatalogScope::Service("db".into()),
                    db_index,
                    Duration::from_secs(30),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Re-syncing identical state wakes nobody.
    server
        .write(registration("n1", "web", CheckStatus::Passing))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!web.is_finished());

    let failed = server
        .write(registration("n1", "web", CheckStatus::Critical))
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), web)
        .await
        .expect("the web watcher was not woken")
        .unwrap()
        .unwrap();
    assert_eq!(woke, failed.index);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!db.is_finished(), "a change to web woke the db watcher");
    db.abort();
    let (healthy, _) = catalog.service_health("web", &[], true).unwrap();
    assert!(healthy.is_empty());

    let seen: Vec<CatalogChange> = std::iter::from_fn(|| feed.try_recv().ok()).collect();
    assert!(seen.contains(&CatalogChange::CheckStatus {
        node: "n1".into(),
        check_id: "web-check".into(),
        service_id: "web".into(),
        status: CheckStatus::Critical,
        modify_index: failed.index,
    }));

    // The catalog survives a restart.
    server.shutdown().await.unwrap();
    drop(server);
    let (_router, server) = open_single(dir.path()).await;
    let (nodes, _) = server.catalog().nodes().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, vec!["n1", "n2"]);
    server.shutdown().await.unwrap();
}
