//! The leader keeps the catalog's nodes in step with gossip (Consul's leader
//! reconcile): every member of the datacenter has a `serfHealth` check, passing while
//! gossip finds it alive, critical once gossip marks it failed; a member that left is
//! removed from the catalog with its services and checks, and so is a catalog node that
//! gossip no longer knows at all (after a grace period, so that a new leader first
//! learns the members).
//!
//! Only differences are written, so a steady cluster costs no Raft writes.

use std::collections::HashMap;
use std::time::Duration;

use consensus::{CheckState, CheckStatus, Request, SERF_HEALTH_CHECK_ID};
use membership::{Member, MemberState};

use crate::raft::Raft;

/// How long a leader waits before it removes catalog nodes that gossip does not know.
pub const UNKNOWN_NODE_GRACE: Duration = Duration::from_secs(60);

const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// What the catalog should hold for one member: its serfHealth status and output, or
/// nothing (it left).
fn desired(state: MemberState) -> Option<(CheckStatus, &'static str)> {
    match state {
        MemberState::Alive | MemberState::Suspect | MemberState::Leaving => {
            Some((CheckStatus::Passing, ALIVE_OUTPUT))
        }
        MemberState::Failed => Some((CheckStatus::Critical, FAILED_OUTPUT)),
        MemberState::Left => None,
    }
}

/// The writes that bring the catalog in step with `members` of datacenter `dc`.
/// `current` maps each catalog node to its serfHealth (status, output), if it has one;
/// `forget_unknown` allows removing catalog nodes that gossip does not know.
pub fn plan(
    members: &[Member],
    dc: &str,
    current: &HashMap<String, Option<(CheckStatus, String)>>,
    forget_unknown: bool,
) -> Vec<Request> {
    let mut writes = Vec::new();
    let mut known = std::collections::HashSet::new();
    for member in members.iter().filter(|m| m.dc == dc) {
        known.insert(member.name.as_str());
        let now = current.get(&member.name);
        match desired(member.state) {
            Some((status, output)) => {
                let same = now
                    .and_then(|c| c.as_ref())
                    .is_some_and(|(s, o)| *s == status && o == output);
                if !same {
                    writes.push(Request::CatalogSetNodeHealth {
                        node: member.name.clone(),
                        address: member.addr.ip().to_string(),
                        status,
                        output: output.to_string(),
                    });
                }
            }
            None => {
                if now.is_some() {
                    writes.push(Request::CatalogDeregisterNode {
                        node: member.name.clone(),
                    });
                }
            }
        }
    }
    if forget_unknown {
        let mut unknown: Vec<&String> = current
            .keys()
            .filter(|node| !known.contains(node.as_str()))
            .collect();
        unknown.sort();
        for node in unknown {
            writes.push(Request::CatalogDeregisterNode { node: node.clone() });
        }
    }
    writes
}

/// Every catalog node with its serfHealth (status, output), if it has one.
fn serf_health(
    raft: &Raft,
) -> Result<HashMap<String, Option<(CheckStatus, String)>>, consensus::ReadError> {
    let catalog = raft.catalog();
    let mut current: HashMap<String, Option<(CheckStatus, String)>> = catalog
        .nodes()?
        .0
        .into_iter()
        .map(|node| (node.node, None))
        .collect();
    for check in catalog.checks_in_state(CheckState::Any)?.0 {
        if check.check_id == SERF_HEALTH_CHECK_ID
            && let Some(slot) = current.get_mut(&check.node)
        {
            *slot = Some((check.status, check.output));
        }
    }
    Ok(current)
}

/// One reconcile pass of the leader.
pub async fn step(raft: &Raft, members: &[Member], dc: &str, forget_unknown: bool) {
    let current = match serf_health(raft) {
        Ok(current) => current,
        Err(e) => {
            tracing::warn!("reading the catalog's nodes: {e}");
            return;
        }
    };
    for write in plan(members, dc, &current, forget_unknown) {
        let what = format!("{write:?}");
        match raft.write(write).await {
            Ok(_) => tracing::debug!("catalog reconciled: {what}"),
            Err(e) => {
                tracing::warn!("reconciling the catalog ({what}): {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn member(name: &str, dc: &str, state: MemberState) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.9:8301".parse().unwrap(),
            generation: 1,
            role: membership::Role::Client,
            dc: dc.into(),
            tags: BTreeMap::new(),
            state,
        }
    }

    fn names(writes: &[Request]) -> Vec<String> {
        writes
            .iter()
            .map(|w| match w {
                Request::CatalogSetNodeHealth { node, status, .. } => {
                    format!("{node}:{}", status.as_str())
                }
                Request::CatalogDeregisterNode { node } => format!("{node}:gone"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_differences_are_written() {
        let members = vec![
            member("a", "dc1", MemberState::Alive),
            member("b", "dc1", MemberState::Failed),
            member("c", "dc1", MemberState::Suspect),
            member("d", "dc1", MemberState::Left),
            member("e", "dc2", MemberState::Alive),
        ];
        let mut current = HashMap::new();
        current.insert(
            "a".to_string(),
            Some((CheckStatus::Passing, ALIVE_OUTPUT.to_string())),
        );
        current.insert(
            "b".to_string(),
            Some((CheckStatus::Passing, ALIVE_OUTPUT.to_string())),
        );
        current.insert("d".to_string(), None);
        let writes = plan(&members, "dc1", &current, false);
        assert_eq!(names(&writes), ["b:critical", "c:passing", "d:gone"]);
        // The address of a new node is its gossip address.
        assert!(matches!(
            &writes[1],
            Request::CatalogSetNodeHealth { address, .. } if address == "127.0.0.9"
        ));
    }

    #[test]
    fn unknown_nodes_are_forgotten_only_when_allowed() {
        let members = vec![member("a", "dc1", MemberState::Alive)];
        let mut current = HashMap::new();
        current.insert(
            "a".to_string(),
            Some((CheckStatus::Passing, ALIVE_OUTPUT.to_string())),
        );
        current.insert("ghost".to_string(), None);
        assert!(plan(&members, "dc1", &current, false).is_empty());
        assert_eq!(
            names(&plan(&members, "dc1", &current, true)),
            ["ghost:gone"]
        );
    }
}
