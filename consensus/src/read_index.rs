//! Merging concurrent linearizable reads into few leadership confirmations.
//!
//! Openraft's `ensure_linearizable` costs one heartbeat round to a quorum per call. The
//! [`ReadIndexBatcher`] runs at most one round at a time: a caller queues itself for the
//! *next* round and, if no round is running, starts a driver task. The driver takes every
//! queued caller, runs one round for all of them, answers them, and repeats while callers
//! are queued. A caller arriving while a round is in flight waits for the next one, so
//! every caller's round starts after its call: the read index it gets covers every write
//! acknowledged before the call, which is what linearizability needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use openraft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::oneshot;

use crate::error::ReadError;
use crate::types::{NodeId, ServerNode, TypeConfig};

/// The outcome of one round, copied to each caller.
#[derive(Debug, Clone)]
enum RoundError {
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader_node: Option<ServerNode>,
    },
    Unavailable(String),
    Fatal(String),
}

impl From<RoundError> for ReadError {
    fn from(e: RoundError) -> Self {
        match e {
            RoundError::ForwardToLeader {
                leader_id,
                leader_node,
            } => ReadError::ForwardToLeader {
                leader_id,
                leader_node,
            },
            RoundError::Unavailable(s) => ReadError::Unavailable(s),
            RoundError::Fatal(s) => ReadError::Fatal(s),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), RoundError>>;

#[derive(Default)]
struct Queue {
    /// A driver task is running.
    driving: bool,
    /// Callers waiting for the next round.
    next: Vec<Waiter>,
}

/// Runs one confirmation round.
type Round = dyn Fn() -> BoxFuture<'static, Result<(), RoundError>> + Send + Sync;

/// Runs leadership confirmation rounds for concurrent callers.
pub(crate) struct ReadIndexBatcher {
    round: Box<Round>,
    queue: Mutex<Queue>,
    rounds: AtomicU64,
}

impl ReadIndexBatcher {
    pub(crate) fn new(raft: Raft<TypeConfig>) -> Arc<Self> {
        Self::with_round(Box::new(move || {
            let raft = raft.clone();
            Box::pin(async move { round(&raft).await })
        }))
    }

    fn with_round(round: Box<Round>) -> Arc<Self> {
        Arc::new(ReadIndexBatcher {
            round,
            queue: Mutex::new(Queue::default()),
            rounds: AtomicU64::new(0),
        })
    }

    /// Rounds run so far.
    pub(crate) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a round that starts after this call to confirm leadership and for the
    /// local state machine to apply up to that round's read index.
    pub(crate) async fn ensure_linearizable(self: &Arc<Self>) -> Result<(), ReadError> {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut queue = self.lock();
            queue.next.push(tx);
            !std::mem::replace(&mut queue.driving, true)
        };
        if start_driver {
            tokio::spawn(self.clone().drive());
        }
        match rx.await {
            Ok(result) => result.map_err(ReadError::from),
            Err(_) => Err(ReadError::Closed),
        }
    }

    async fn drive(self: Arc<Self>) {
        loop {
            let batch = {
                let mut queue = self.lock();
                if queue.next.is_empty() {
                    queue.driving = false;
                    return;
                }
                std::mem::take(&mut queue.next)
            };
            self.rounds.fetch_add(1, Ordering::Relaxed);
            let result = (self.round)().await;
            for waiter in batch {
                // A caller that gave up is gone; nothing to do.
                let _ = waiter.send(result.clone());
            }
        }
    }
}

/// Attempts of one round when a quorum did not answer in time: openraft waits one
/// heartbeat interval for the answers, which a busy follower can miss.
const ROUND_ATTEMPTS: usize = 2;

async fn round(raft: &Raft<TypeConfig>) -> Result<(), RoundError> {
    let mut attempt = 1;
    loop {
        match confirm(raft).await {
            Err(RoundError::Unavailable(_)) if attempt < ROUND_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

async fn confirm(raft: &Raft<TypeConfig>) -> Result<(), RoundError> {
    match raft.ensure_linearizable().await {
        Ok(_) => Ok(()),
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(RoundError::ForwardToLeader {
                leader_id: f.leader_id,
                leader_node: f.leader_node,
            })
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Err(RoundError::Unavailable(e.to_string()))
        }
        Err(RaftError::Fatal(f)) => Err(RoundError::Fatal(f.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// A batcher whose rounds each wait for one permit of `gate`, and record how many
    /// callers had called when the round started.
    fn gated(
        gate: Arc<Semaphore>,
        calls: Arc<AtomicU64>,
        starts: Arc<Mutex<Vec<u64>>>,
    ) -> Arc<ReadIndexBatcher> {
        ReadIndexBatcher::with_round(Box::new(move || {
            let (gate, calls, starts) = (gate.clone(), calls.clone(), starts.clone());
            Box::pin(async move {
                starts.lock().unwrap().push(calls.load(Ordering::SeqCst));
                gate.acquire().await.unwrap().forget();
                Ok(())
            })
        }))
    }

    #[tokio::test]
    async fn callers_during_a_round_wait_for_the_next_one() {
        let gate = Arc::new(Semaphore::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let batcher = gated(gate.clone(), calls.clone(), starts.clone());

        let call = |batcher: &Arc<ReadIndexBatcher>| {
            let (b, calls) = (batcher.clone(), calls.clone());
            tokio::spawn(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                b.ensure_linearizable().await
            })
        };
        let first = call(&batcher);
        // The first round is running (blocked on the gate) with one caller.
        while starts.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let late: Vec<_> = (0..50).map(|_| call(&batcher)).collect();
        while calls.load(Ordering::SeqCst) < 51 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(late.iter().all(|t| !t.is_finished()));

        // Releasing the first round answers only its caller.
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            late.iter().all(|t| !t.is_finished()),
            "a late caller was answered by a round that started before its call"
        );
        // One more round answers all fifty late callers.
        gate.add_permits(1);
        for t in late {
            t.await.unwrap().unwrap();
        }
        assert_eq!(batcher.rounds(), 2);
        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts.len(), 2);
        assert_eq!(
            starts[1], 51,
            "the second round started after every late call"
        );
    }

    #[tokio::test]
    async fn a_failed_round_fails_its_callers_only() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = fail.clone();
        let batcher = ReadIndexBatcher::with_round(Box::new(move || {
            let failing = f.load(Ordering::SeqCst);
            Box::pin(async move {
                if failing {
                    Err(RoundError::Unavailable("no quorum".into()))
                } else {
                    Ok(())
                }
            })
        }));
        assert!(matches!(
            batcher.ensure_linearizable().await,
            Err(ReadError::Unavailable(_))
        ));
        fail.store(false, Ordering::SeqCst);
        batcher.ensure_linearizable().await.unwrap();
        assert_eq!(batcher.rounds(), 2);
    }
}
