//! The faults, one per scenario. Each driver applies its fault (repeatedly,
//! where the scenario says so) until the end of the fault window; the runner
//! then heals everything (links healed, delay and loss removed, paused agents
//! continued, stopped agents restarted from their data directories).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use super::cluster::{Cluster, HOSTS, SERVERS};

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Every link of the leader's host is cut (the leader is isolated; its
    /// clients still reach it). Re-applied to the then-current leader after
    /// each half of the fault window.
    PartitionLeader,
    /// A random 3/2 split of the five hosts (links across cut), a new split
    /// for each half of the fault window.
    MajorityMinority,
    /// Hosts split {a, b} {c} {d, e}: a, b ↔ d, e cut, c (the bridge) still
    /// linked to everyone. c is drawn uniformly from the five hosts, so it is
    /// sometimes a server, sometimes a client agent; the others are shuffled.
    Bridge,
    /// `kill -9` of a random server, restart from its data directory 3 s
    /// later, repeated while the fault window lasts.
    KillServer,
    /// `kill -9` of the current leader every ~T/6 (at least 4 s), restarted
    /// 2 s later each time.
    KillLeader,
    /// SIGSTOP of the leader for 4 s (several election timeouts: a new leader
    /// is elected and takes writes while the old one is frozen), then
    /// SIGCONT, 2 s pause, repeated. A resumed old leader must not answer a
    /// default-mode read with its stale state.
    PauseLeader,
    /// 20 ms one-way delay and 10 % packet loss on every link.
    LossDelay,
    /// Graceful restarts (SIGTERM, wait for exit, restart from the data
    /// directory at once) of the servers one after the other, under load.
    RestartMidWrite,
}

impl Scenario {
    /// Every scenario, in the order `--all` runs them.
    pub const ALL: [Scenario; 8] = [
        Scenario::PartitionLeader,
        Scenario::MajorityMinority,
        Scenario::Bridge,
        Scenario::KillServer,
        Scenario::KillLeader,
        Scenario::PauseLeader,
        Scenario::LossDelay,
        Scenario::RestartMidWrite,
    ];

    /// The scenario's name (for `--scenario`).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PartitionLeader => "partition-leader",
            Scenario::MajorityMinority => "majority-minority",
            Scenario::Bridge => "bridge",
            Scenario::KillServer => "kill-server",
            Scenario::KillLeader => "kill-leader",
            Scenario::PauseLeader => "pause-leader",
            Scenario::LossDelay => "loss-delay",
            Scenario::RestartMidWrite => "restart-mid-write",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?}; one of: {}", names.join(", "))
            })
    }
}

fn random(n: usize) -> usize {
    (rand::random::<u64>() % n as u64) as usize
}

fn shuffled_hosts() -> Vec<usize> {
    let mut hosts: Vec<usize> = (0..HOSTS).collect();
    for i in (1..hosts.len()).rev() {
        hosts.swap(i, random(i + 1));
    }
    hosts
}

/// Sleeps `d`, but not past `end`; `false` when `end` is reached.
async fn pause(d: Duration, end: Instant) -> bool {
    let until = (Instant::now() + d).min(end);
    sleep_until(until).await;
    Instant::now() < end
}

/// Applies `scenario`'s fault until `end`; returns a log of what it did.
pub async fn drive(
    scenario: Scenario,
    cluster: &mut Cluster,
    http: &reqwest::Client,
    end: Instant,
    seconds: u64,
) -> anyhow::Result<Vec<String>> {
    let mut log = Vec::new();
    let window = end.saturating_duration_since(Instant::now());
    let half = (window / 2).max(Duration::from_secs(3));
    let name = |c: &Cluster, i: usize| c.agents[i].node.clone();
    match scenario {
        Scenario::PartitionLeader => loop {
            let Some(leader) = cluster.leader(http).await else {
                log.push("no leader known; waiting".into());
                if !pause(Duration::from_millis(500), end).await {
                    break;
                }
                continue;
            };
            log.push(format!("isolating leader {}", name(cluster, leader)));
            cluster.split(&[leader]);
            if !pause(half, end).await {
                break;
            }
            cluster.heal_all();
            if !pause(Duration::from_secs(1), end).await {
                break;
            }
        },
        Scenario::MajorityMinority => loop {
            let hosts = shuffled_hosts();
            let minority = &hosts[..2];
            log.push(format!(
                "split: minority {} | majority {}",
                minority
                    .iter()
                    .map(|i| name(cluster, *i))
                    .collect::<Vec<_>>()
                    .join(","),
                hosts[2..]
                    .iter()
                    .map(|i| name(cluster, *i))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            cluster.split(minority);
            if !pause(half, end).await {
                break;
            }
            cluster.heal_all();
            if !pause(Duration::from_secs(1), end).await {
                break;
            }
        },
        Scenario::Bridge => loop {
            let hosts = shuffled_hosts();
            let (left, bridge, right) = (&hosts[..2], hosts[2], &hosts[3..]);
            log.push(format!(
                "bridge {}: {},{} | {},{}",
                name(cluster, bridge),
                name(cluster, left[0]),
                name(cluster, left[1]),
                name(cluster, right[0]),
                name(cluster, right[1]),
            ));
            for a in left {
                for b in right {
                    cluster.cut(*a, *b);
                }
            }
            if !pause(half, end).await {
                break;
            }
            cluster.heal_all();
            if !pause(Duration::from_secs(1), end).await {
                break;
            }
        },
        Scenario::KillServer => loop {
            let i = random(SERVERS);
            log.push(format!("kill -9 {}", name(cluster, i)));
            cluster.kill9(i);
            let more = pause(Duration::from_secs(3), end).await;
            log.push(format!("restart {}", name(cluster, i)));
            cluster.launch(i)?;
            if !more || !pause(Duration::from_secs(2), end).await {
                break;
            }
        },
        Scenario::KillLeader => {
            let period = Duration::from_secs((seconds / 6).max(4));
            loop {
                let started = Instant::now();
                let Some(leader) = cluster.leader(http).await else {
                    log.push("no leader known; waiting".into());
                    if !pause(Duration::from_millis(500), end).await {
                        break;
                    }
                    continue;
                };
                log.push(format!("kill -9 leader {}", name(cluster, leader)));
                cluster.kill9(leader);
                let more = pause(Duration::from_secs(2), end).await;
                log.push(format!("restart {}", name(cluster, leader)));
                cluster.launch(leader)?;
                if !more || !pause(period.saturating_sub(started.elapsed()), end).await {
                    break;
                }
            }
        }
        Scenario::PauseLeader => loop {
            let Some(leader) = cluster.leader(http).await else {
                log.push("no leader known; waiting".into());
                if !pause(Duration::from_millis(500), end).await {
                    break;
                }
                continue;
            };
            log.push(format!("SIGSTOP leader {}", name(cluster, leader)));
            cluster.signal(leader, libc::SIGSTOP);
            let more = pause(Duration::from_secs(4), end).await;
            log.push(format!("SIGCONT {}", name(cluster, leader)));
            cluster.signal(leader, libc::SIGCONT);
            if !more || !pause(Duration::from_secs(2), end).await {
                break;
            }
        },
        Scenario::LossDelay => {
            log.push("all links: 20 ms one-way delay, 10% loss".into());
            cluster.degrade_all(Duration::from_millis(20), 0.10);
            sleep_until(end).await;
        }
        Scenario::RestartMidWrite => {
            let mut i = 0;
            while Instant::now() < end {
                let exited = cluster.terminate(i, Duration::from_secs(10)).await;
                log.push(format!(
                    "restart {} ({})",
                    name(cluster, i),
                    if exited {
                        "exited on SIGTERM"
                    } else {
                        "did not exit in 10 s: SIGKILL"
                    }
                ));
                cluster.launch(i)?;
                // Let it rejoin before the next one goes down.
                sleep(Duration::from_secs(2)).await;
                i = (i + 1) % SERVERS;
            }
        }
    }
    Ok(log)
}

/// Undoes every fault: links healed and undegraded, paused agents continued,
/// stopped agents restarted.
pub fn heal(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.heal_all();
    for i in 0..HOSTS {
        if cluster.agents[i].paused {
            cluster.signal(i, libc::SIGCONT);
        }
        if cluster.agents[i].pid.is_none() {
            cluster.launch(i)?;
        }
    }
    Ok(())
}
