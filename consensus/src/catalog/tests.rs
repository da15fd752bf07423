//! Tests of the catalog's rules on in-memory tables.

use std::collections::BTreeMap;

use super::tables::mem::MemCatalog;
use super::*;
use crate::types::{Request, Response};
use crate::watch::Changes;

fn service(id: &str, name: &str, tags: &[&str]) -> ServiceEntry {
    ServiceEntry {
        id: id.into(),
        service: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: String::new(),
        port: 80,
        meta: BTreeMap::new(),
    }
}

fn check(id: &str, service_id: &str, status: CheckStatus) -> CheckEntry {
    CheckEntry {
        check_id: id.into(),
        name: format!("check {id}"),
        status,
        notes: String::new(),
        output: String::new(),
        service_id: service_id.into(),
        kind: "ttl".into(),
    }
}

fn sync(node: &str, services: Vec<ServiceEntry>, checks: Vec<CheckEntry>) -> Request {
    Request::CatalogSync(NodeRegistration {
        node: node.into(),
        id: String::new(),
        address: format!("10.0.0.{}", node.len()),
        meta: BTreeMap::new(),
        services,
        checks,
    })
}

fn health(node: &str, status: CheckStatus) -> Request {
    Request::CatalogSetNodeHealth {
        node: node.into(),
        address: "10.1.1.1".into(),
        status,
        output: "Agent alive and reachable".into(),
    }
}

fn run_with(t: &mut MemCatalog, index: u64, r: &Request) -> (Response, Changes) {
    let mut changes = Changes::default();
    let response = apply(t, index, r, &mut changes).unwrap();
    (response, changes)
}

fn run(t: &mut MemCatalog, index: u64, r: Request) -> Response {
    run_with(t, index, &r).0
}

fn ids(checks: &[HealthCheck]) -> Vec<&str> {
    checks.iter().map(|c| c.check_id.as_str()).collect()
}

fn index(t: &MemCatalog, scope: CatalogScope) -> u64 {
    query::index_for(t, &scope).unwrap()
}

#[test]
fn sync_replaces_services_and_checks_but_keeps_serf_health() {
    let mut t = MemCatalog::default();
    run(&mut t, 2, health("n1", CheckStatus::Passing));
    let r = run(
        &mut t,
        3,
        sync(
            "n1",
            vec![service("web1", "web", &["v1"]), service("", "db", &[])],
            vec![
                check("web-alive", "web1", CheckStatus::Passing),
                check("disk", "", CheckStatus::Warning),
            ],
        ),
    );
    assert_eq!(
        r,
        Response::Catalog(CatalogOutcome {
            nodes: 1,
            services: 2,
            checks: 2
        })
    );
    let (node, _) = (query::node_services(&t, "n1").unwrap().unwrap(), ());
    let names: Vec<(&str, &str)> = node
        .services
        .iter()
        .map(|s| (s.id.as_str(), s.service.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![("db", "db"), ("web1", "web")],
        "id defaults to the name"
    );
    assert_eq!(
        node.node.address, "10.0.0.2",
        "the sync updates the address"
    );
    assert_eq!(node.node.create_index, 2);

    // The second sync drops db and the disk check, keeps serfHealth.
    run(
        &mut t,
        4,
        sync(
            "n1",
            vec![service("web1", "web", &["v1"])],
            vec![check("web-alive", "web1", CheckStatus::Passing)],
        ),
    );
    let checks = query::node_checks(&t, "n1").unwrap();
    assert_eq!(ids(&checks), vec![SERF_HEALTH_CHECK_ID, "web-alive"]);
    assert_eq!(checks[1].service_name, "web");
    assert_eq!(checks[1].service_tags, vec!["v1".to_string()]);
    let node = query::node_services(&t, "n1").unwrap().unwrap();
    assert_eq!(node.services.len(), 1);
    assert!(query::service_nodes(&t, "db", &[]).unwrap().is_empty());
    // db is gone: its index falls back to the services table's, which rose.
    assert_eq!(index(&t, CatalogScope::Service("db".into())), 4);
    assert_eq!(index(&t, CatalogScope::Services), 4);
}

#[test]
fn an_identical_sync_changes_no_index_and_wakes_nobody() {
    let mut t = MemCatalog::default();
    let request = sync(
        "n1",
        vec![service("web1", "web", &["v1"])],
        vec![check("c", "web1", CheckStatus::Passing)],
    );
    run(&mut t, 5, request.clone());
    let before = t.clone();
    let (response, changes) = run_with(&mut t, 9, &request);
    assert_eq!(response, Response::Catalog(CatalogOutcome::default()));
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(t, before);
    let instance = &query::service_nodes(&t, "web", &[]).unwrap()[0];
    assert_eq!(instance.service.modify_index, 5);

    // Same for an unchanged node health.
    run(&mut t, 10, health("n1", CheckStatus::Passing));
    let before = t.clone();
    let (_, changes) = run_with(&mut t, 11, &health("n1", CheckStatus::Passing));
    assert!(changes.is_empty());
    assert_eq!(t, before);
}

#[test]
fn indexes_follow_what_each_read_covers() {
    let mut t = MemCatalog::default();
    run(
        &mut t,
        3,
        sync("a", vec![service("web", "web", &[])], vec![]),
    );
    run(&mut t, 4, sync("b", vec![service("db", "db", &[])], vec![]));
    assert_eq!(index(&t, CatalogScope::Service("web".into())), 3);
    assert_eq!(index(&t, CatalogScope::Service("db".into())), 4);
    assert_eq!(index(&t, CatalogScope::Node("a".into())), 3);
    assert_eq!(index(&t, CatalogScope::Nodes), 4);
    // A node check of "a" changes what health reads of web return, not of db.
    let (_, changes) = run_with(&mut t, 7, &health("a", CheckStatus::Critical));
    assert_eq!(index(&t, CatalogScope::Service("web".into())), 7);
    assert_eq!(index(&t, CatalogScope::Service("db".into())), 4);
    assert_eq!(index(&t, CatalogScope::Checks), 7);
    assert_eq!(index(&t, CatalogScope::Services), 4);
    assert_eq!(
        index(&t, CatalogScope::Nodes),
        4,
        "the node existed already"
    );
    assert!(
        changes
            .catalog
            .contains(&CatalogScope::Service("web".into()))
    );
    assert!(
        !changes
            .catalog
            .contains(&CatalogScope::Service("db".into()))
    );
    assert_eq!(
        changes.catalog_feed,
        vec![CatalogChange::CheckStatus {
            node: "a".into(),
            check_id: SERF_HEALTH_CHECK_ID.into(),
            service_id: String::new(),
            status: CheckStatus::Critical,
            modify_index: 7,
        }]
    );
    // Only the output changes: an index rises, but no status change is reported.
    let mut changed = health("a", CheckStatus::Critical);
    if let Request::CatalogSetNodeHealth { output, .. } = &mut changed {
        *output = "gone".into();
    }
    let (_, changes) = run_with(&mut t, 8, &changed);
    assert!(changes.catalog_feed.is_empty());
    assert_eq!(index(&t, CatalogScope::Node("a".into())), 8);
    // Unknown names report their table's index, never 0.
    assert_eq!(index(&t, CatalogScope::Node("zz".into())), 4);
    assert_eq!(
        query::index_for(&MemCatalog::default(), &CatalogScope::Checks).unwrap(),
        1
    );
}

#[test]
fn passing_filter_counts_node_and_service_checks() {
    let mut t = MemCatalog::default();
    run(
        &mut t,
        2,
        sync(
            "a",
            vec![service("web", "web", &["Primary"])],
            vec![check("web-ok", "web", CheckStatus::Passing)],
        ),
    );
    run(
        &mut t,
        3,
        sync(
            "b",
            vec![service("web", "web", &["backup"])],
            vec![check("web-bad", "web", CheckStatus::Critical)],
        ),
    );
    run(
        &mut t,
        4,
        sync(
            "c",
            vec![service("web", "web", &[]), service("db", "db", &[])],
            vec![
                check("web-ok", "web", CheckStatus::Passing),
                check("db-bad", "db", CheckStatus::Critical),
            ],
        ),
    );
    let nodes =
        |v: Vec<ServiceHealth>| -> Vec<String> { v.into_iter().map(|h| h.node.node).collect() };
    let all = query::service_health(&t, "web", &[], false).unwrap();
    assert_eq!(all.len(), 3);
    // c's db check does not belong to web.
    assert_eq!(ids(&all[2].checks), vec!["web-ok"]);
    assert_eq!(
        nodes(query::service_health(&t, "web", &[], true).unwrap()),
        vec!["a", "c"]
    );
    // A failing node check excludes every instance on the node.
    run(&mut t, 5, health("a", CheckStatus::Warning));
    assert_eq!(
        nodes(query::service_health(&t, "web", &[], true).unwrap()),
        vec!["c"]
    );
    let a = &query::service_health(&t, "web", &[], false).unwrap()[0];
    assert_eq!(ids(&a.checks), vec![SERF_HEALTH_CHECK_ID, "web-ok"]);
    // Tags match case-insensitively; names exactly.
    assert_eq!(
        nodes(query::service_health(&t, "web", &["primary"], false).unwrap()),
        vec!["a"]
    );
    assert_eq!(
        query::service_nodes(&t, "web", &["backup"]).unwrap().len(),
        1
    );
    assert!(query::service_nodes(&t, "Web", &[]).unwrap().is_empty());
    assert!(
        query::service_nodes(&t, "web", &["nope"])
            .unwrap()
            .is_empty()
    );
    let tags = query::services(&t).unwrap();
    assert_eq!(
        tags["web"],
        vec!["Primary".to_string(), "backup".to_string()]
    );
    assert_eq!(tags["db"], Vec::<String>::new());
    assert_eq!(
        ids(&query::service_checks(&t, "web").unwrap()),
        vec!["web-ok", "web-bad", "web-ok"]
    );
    let critical = query::checks_in_state(&t, CheckState::Is(CheckStatus::Critical)).unwrap();
    assert_eq!(ids(&critical), vec!["web-bad", "db-bad"]);
    assert_eq!(critical[1].service_name, "db");
    assert_eq!(
        query::checks_in_state(&t, CheckState::Any).unwrap().len(),
        5
    );
}

#[test]
fn deregistering_a_node_removes_everything_it_had() {
    let mut t = MemCatalog::default();
    run(&mut t, 2, health("a", CheckStatus::Passing));
    run(
        &mut t,
        3,
        sync(
            "a",
            vec![service("web", "web", &[])],
            vec![check("web-ok", "web", CheckStatus::Passing)],
        ),
    );
    run(
        &mut t,
        4,
        sync("b", vec![service("web", "web", &[])], vec![]),
    );
    let (r, changes) = run_with(
        &mut t,
        9,
        &Request::CatalogDeregisterNode { node: "a".into() },
    );
    assert_eq!(
        r,
        Response::Catalog(CatalogOutcome {
            nodes: 1,
            services: 1,
            checks: 2
        })
    );
    assert_eq!(
        changes.catalog_feed.last(),
        Some(&CatalogChange::NodeDeregistered { node: "a".into() })
    );
    assert!(query::node_services(&t, "a").unwrap().is_none());
    assert!(query::node_checks(&t, "a").unwrap().is_empty());
    assert_eq!(query::nodes(&t).unwrap().len(), 1);
    let web = query::service_nodes(&t, "web", &[]).unwrap();
    assert_eq!(web.len(), 1);
    assert_eq!(index(&t, CatalogScope::Service("web".into())), 9);
    assert_eq!(index(&t, CatalogScope::Node("a".into())), 9);
    // Nothing of "a" is left in any table.
    for rows in t.tables.values() {
        assert!(
            rows.keys()
                .all(|k| !k.starts_with("a\0") && k != "a" && k != "n:a")
        );
    }
    // Deregistering a missing node changes nothing.
    let before = t.clone();
    run(
        &mut t,
        10,
        Request::CatalogDeregisterNode { node: "a".into() },
    );
    assert_eq!(t, before);
}

#[test]
fn register_adds_and_deregister_removes_one_thing() {
    let mut t = MemCatalog::default();
    let register = |service: Option<ServiceEntry>, checks: Vec<CheckEntry>| {
        Request::CatalogRegister(CatalogRegistration {
            node: "ext".into(),
            id: String::new(),
            address: "192.0.2.1".into(),
            meta: BTreeMap::new(),
            service,
            checks,
        })
    };
    run(&mut t, 2, register(Some(service("a", "api", &[])), vec![]));
    run(
        &mut t,
        3,
        register(
            Some(service("b", "api", &[])),
            vec![check("b-ok", "b", CheckStatus::Passing)],
        ),
    );
    // A check may name a service registered earlier.
    run(
        &mut t,
        4,
        register(None, vec![check("a-ok", "a", CheckStatus::Passing)]),
    );
    assert_eq!(query::service_nodes(&t, "api", &[]).unwrap().len(), 2);
    // ... but not one the node does not have.
    let r = run(
        &mut t,
        5,
        register(None, vec![check("x", "zz", CheckStatus::Passing)]),
    );
    assert!(
        matches!(r, Response::Rejected(ref m) if m.contains("Unknown service")),
        "{r:?}"
    );

    let deregister =
        |service_id: Option<&str>, check_id: Option<&str>| Request::CatalogDeregister {
            node: "ext".into(),
            service_id: service_id.map(str::to_owned),
            check_id: check_id.map(str::to_owned),
        };
    run(&mut t, 6, deregister(Some("b"), None));
    assert_eq!(ids(&query::node_checks(&t, "ext").unwrap()), vec!["a-ok"]);
    run(&mut t, 7, deregister(None, Some("a-ok")));
    assert!(query::node_checks(&t, "ext").unwrap().is_empty());
    assert_eq!(query::service_nodes(&t, "api", &[]).unwrap().len(), 1);
    run(&mut t, 8, deregister(None, None));
    assert!(query::nodes(&t).unwrap().is_empty());
}

#[test]
fn invalid_commands_are_rejected_and_change_nothing() {
    let mut t = MemCatalog::default();
    let mut reg = NodeRegistration {
        node: "n".into(),
        address: "10.0.0.1".into(),
        ..NodeRegistration::default()
    };
    let cases: Vec<(NodeRegistration, &str)> = vec![
        (
            NodeRegistration {
                address: String::new(),
                ..reg.clone()
            },
            "node address",
        ),
        (
            NodeRegistration {
                node: "x".repeat(MAX_CATALOG_NAME_LEN + 1),
                ..reg.clone()
            },
            "node name",
        ),
        (
            NodeRegistration {
                checks: vec![check(SERF_HEALTH_CHECK_ID, "", CheckStatus::Passing)],
                ..reg.clone()
            },
            "reserved",
        ),
        (
            NodeRegistration {
                services: vec![service("", "", &[])],
                ..reg.clone()
            },
            "service name",
        ),
        (
            NodeRegistration {
                services: vec![service("a", "web", &[]), service("a", "db", &[])],
                ..reg.clone()
            },
            "duplicate service",
        ),
        (
            NodeRegistration {
                checks: vec![check("c", "nope", CheckStatus::Passing)],
                ..reg.clone()
            },
            "Unknown service",
        ),
        (
            NodeRegistration {
                services: vec![service("a", "web", &vec!["t"; MAX_TAGS + 1])],
                ..reg.clone()
            },
            "too many tags",
        ),
        (
            NodeRegistration {
                node: "a\0b".into(),
                ..reg.clone()
            },
            "NUL",
        ),
    ];
    for (bad, why) in cases {
        let request = Request::CatalogSync(bad);
        let err = request.validate().unwrap_err();
        assert!(err.to_string().contains(why), "{err} should mention {why}");
        assert!(matches!(run(&mut t, 1, request), Response::Rejected(_)));
        assert_eq!(t, MemCatalog::default());
    }
    // Long output is truncated, not refused.
    let mut long = check("c", "", CheckStatus::Passing);
    long.output = "é".repeat(MAX_CHECK_OUTPUT);
    reg.checks.push(long);
    run(&mut t, 2, Request::CatalogSync(reg));
    let stored = &query::node_checks(&t, "n").unwrap()[0];
    assert!(stored.output.len() <= MAX_CHECK_OUTPUT && stored.output.len() > MAX_CHECK_OUTPUT - 2);
    assert!(
        Request::CatalogDeregisterNode {
            node: String::new()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn catalog_commands_encode_after_the_kv_ones() {
    let bytes =
        postcard::to_allocvec(&Request::CatalogDeregisterNode { node: "n".into() }).unwrap();
    assert_eq!(bytes, [10, 1, b'n']);
    let bytes = postcard::to_allocvec(&Response::Catalog(CatalogOutcome::default())).unwrap();
    assert_eq!(bytes[0], 6);
    let sync = sync("n", vec![service("a", "web", &["x"])], vec![]);
    let bytes = postcard::to_allocvec(&sync).unwrap();
    assert_eq!(bytes[0], 8);
    assert_eq!(postcard::from_bytes::<Request>(&bytes).unwrap(), sync);
}

#[test]
fn check_state_parses_consul_spellings() {
    assert_eq!(CheckState::parse("any"), Some(CheckState::Any));
    assert_eq!(
        CheckState::parse("critical"),
        Some(CheckState::Is(CheckStatus::Critical))
    );
    assert_eq!(CheckState::parse("Critical"), None);
    assert_eq!(CheckState::parse("unknown"), None);
}
