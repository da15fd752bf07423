//! Coalescing concurrent writes into few log entries.
//!
//! Openraft 0.9 turns every `client_write` into its own log append, and its core waits for
//! each append to be durable before it handles the next (see [`crate::log_store`]). To
//! amortize fsyncs and replication round trips over many writes, writes go through one
//! proposer task: it takes the first waiting write, then every write already queued (up to
//! a count and a byte budget), and proposes them as one [`Request::Batch`] entry. At most
//! `max_in_flight` such entries are outstanding; while they are, new writes queue up and
//! form the next batch. Each command of a batch is applied in order as if proposed alone;
//! all of them get the batch entry's log index.
//!
//! The number of writes admitted at once is capped by a semaphore, because openraft's API
//! channel is unbounded.
//!
//! Openraft answers a proposal only when its entry is applied or truncated here. A leader
//! cut off from the others, or one deposed that learns of its entry only through a
//! snapshot, may never answer; so every proposal has a deadline, after which its slot is
//! released and its writers are told that the outcome is unknown.
//!
//! On the leader, writes that add data are refused before they are proposed while a store
//! is nearly full (see [`StorageMonitor`]): running out of map while applying would stop
//! every server at the same entry, again after each restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResult;
use openraft::{Raft, ServerState};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::{InvalidRequest, WriteError};
use crate::lmdb::StorageMonitor;
use crate::types::{Request, Response, TypeConfig};

/// The result of a committed and applied write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Log index of the entry that carried the write.
    pub index: u64,
    /// What applying the write returned.
    pub response: Response,
}

/// Limits of the proposer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_pending_writes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_batch_len: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) write_timeout: Duration,
}

type Reply = oneshot::Sender<Result<WriteOutcome, WriteError>>;

struct Pending {
    request: Request,
    reply: Reply,
    /// Admission permit, released when the write is answered.
    _admitted: OwnedSemaphorePermit,
}

/// Handle for submitting writes.
pub(crate) struct Proposer {
    queue: Mutex<Option<mpsc::UnboundedSender<Pending>>>,
    admission: Arc<Semaphore>,
}

impl Proposer {
    /// Starts the proposer task for `raft`, refusing writes that add data while
    /// `storage` reports a full store.
    pub(crate) fn start(
        raft: Raft<TypeConfig>,
        limits: Limits,
        storage: Arc<StorageMonitor>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, limits, storage));
        Proposer {
            queue: Mutex::new(Some(tx)),
            admission: Arc::new(Semaphore::new(limits.max_pending_writes.max(1))),
        }
    }

    /// Validates, proposes and waits for `request` to be committed and applied.
    pub(crate) async fn write(&self, request: Request) -> Result<WriteOutcome, WriteError> {
        if matches!(request, Request::Batch(_)) {
            return Err(InvalidRequest::BatchNotAllowed.into());
        }
        request.validate()?;
        let admitted = self
            .admission
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| shutting_down())?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request,
            reply,
            _admitted: admitted,
        };
        {
            let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queue.as_ref().ok_or_else(shutting_down)?;
            queue.send(pending).map_err(|_| shutting_down())?;
        }
        answer.await.unwrap_or_else(|_| {
            Err(WriteError::Indeterminate(
                "the server stopped before the write completed".into(),
            ))
        })
    }

    /// Refuses new writes. Queued writes are still proposed.
    pub(crate) fn close(&self) {
        self.admission.close();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn shutting_down() -> WriteError {
    WriteError::Unavailable("the server is shutting down".into())
}

async fn run(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    limits: Limits,
    storage: Arc<StorageMonitor>,
) {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    while let Some(first) = queue.recv().await {
        // Wait for a proposal slot first: writes arriving meanwhile join this batch.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = first.request.approx_size();
        let mut batch = vec![first];
        while batch.len() < limits.max_batch_len && bytes < limits.max_batch_bytes {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.request.approx_size();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let batch = refuse_if_full(&raft, &storage, batch);
        if batch.is_empty() {
            continue;
        }
        propose(&raft, batch, slot, limits.write_timeout).await;
    }
}

/// On the leader, answers the writes that add data with [`WriteError::StorageFull`] when a
/// store is nearly full, and returns the others.
fn refuse_if_full(
    raft: &Raft<TypeConfig>,
    storage: &StorageMonitor,
    batch: Vec<Pending>,
) -> Vec<Pending> {
    if !batch.iter().any(|p| p.request.adds_data()) {
        return batch;
    }
    // A follower leaves the answer to openraft (it forwards to the leader).
    if raft.metrics().borrow().state != ServerState::Leader {
        return batch;
    }
    let Some(reason) = storage.full() else {
        return batch;
    };
    tracing::warn!(%reason, "refusing writes: storage nearly full");
    let (refused, kept): (Vec<_>, Vec<_>) = batch.into_iter().partition(|p| p.request.adds_data());
    for p in refused {
        let _ = p.reply.send(Err(WriteError::StorageFull(reason.clone())));
    }
    kept
}

/// Proposes one batch and spawns the wait for its result, which releases `slot` when the
/// result arrives or `timeout` passes.
async fn propose(
    raft: &Raft<TypeConfig>,
    batch: Vec<Pending>,
    slot: OwnedSemaphorePermit,
    timeout: Duration,
) {
    let mut requests = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        requests.push(p.request);
        replies.push((p.reply, p._admitted));
    }
    let payload = match <[Request; 1]>::try_from(requests) {
        Ok([only]) => only,
        Err(requests) => Request::Batch(requests),
    };
    match raft.client_write_ff(payload).await {
        Ok(result) => {
            tokio::spawn(async move {
                let result = tokio::time::timeout(timeout, result).await;
                drop(slot);
                answer(result.map_err(|_| timeout), replies);
            });
        }
        Err(fatal) => {
            let err = WriteError::Fatal(fatal.to_string());
            for (reply, _) in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

type Replies = Vec<(Reply, OwnedSemaphorePermit)>;

/// What openraft answered for one proposal, or the timeout that passed first.
type ProposalResult =
    Result<Result<ClientWriteResult<TypeConfig>, oneshot::error::RecvError>, Duration>;

fn answer(result: ProposalResult, replies: Replies) {
    let n = replies.len();
    let outcomes: Vec<Result<WriteOutcome, WriteError>> = match result {
        Ok(Ok(Ok(written))) => {
            let index = written.log_id.index;
            match written.data {
                Response::Batch(responses) if n > 1 && responses.len() == n => responses
                    .into_iter()
                    .map(|response| Ok(WriteOutcome { index, response }))
                    .collect(),
                response if n > 1 => {
                    let got = match &response {
                        Response::Batch(responses) => format!("{} responses", responses.len()),
                        other => format!("{other:?}"),
                    };
                    vec![
                        Err(WriteError::Indeterminate(format!(
                            "a batch of {n} writes at index {index} was answered with {got}"
                        )));
                        n
                    ]
                }
                response => vec![Ok(WriteOutcome { index, response })],
            }
        }
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => vec![
            Err(WriteError::ForwardToLeader {
                leader_id: f.leader_id,
                leader_node: f.leader_node,
            });
            n
        ],
        Ok(Ok(Err(ClientWriteError::ChangeMembershipError(e)))) => {
            vec![Err(WriteError::Unavailable(e.to_string())); n]
        }
        Ok(Err(_)) => vec![
            Err(WriteError::Indeterminate(
                "raft stopped before the write completed".into()
            ));
            n
        ],
        Err(timeout) => vec![
            Err(WriteError::Indeterminate(format!(
                "no result within {timeout:?}; the write may still be applied"
            )));
            n
        ],
    };
    for ((reply, _admitted), outcome) in replies.into_iter().zip(outcomes) {
        // The writer may have given up waiting; nothing to do then.
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::ClientWriteResponse;
    use openraft::testing::log_id;

    use super::*;

    type Answers = Vec<oneshot::Receiver<Result<WriteOutcome, WriteError>>>;

    fn replies(n: usize) -> (Replies, Answers) {
        let permits = Arc::new(Semaphore::new(n));
        (0..n)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                ((tx, permits.clone().try_acquire_owned().unwrap()), rx)
            })
            .unzip()
    }

    fn written(data: Response) -> ProposalResult {
        Ok(Ok(Ok(ClientWriteResponse {
            log_id: log_id(1, 1, 7),
            data,
            membership: None,
        })))
    }

    async fn outcomes(result: ProposalResult, n: usize) -> Vec<Result<WriteOutcome, WriteError>> {
        let (replies, answers) = replies(n);
        answer(result, replies);
        let mut out = Vec::new();
        for a in answers {
            out.push(a.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn batch_responses_go_to_their_writers() {
        let got = outcomes(
            written(Response::Batch(vec![
                Response::Bool(true),
                Response::Bool(false),
            ])),
            2,
        )
        .await;
        let responses: Vec<_> = got.into_iter().map(|o| o.unwrap()).collect();
        assert_eq!(
            responses,
            vec![
                WriteOutcome {
                    index: 7,
                    response: Response::Bool(true)
                },
                WriteOutcome {
                    index: 7,
                    response: Response::Bool(false)
                },
            ]
        );
        let single = outcomes(written(Response::Bool(true)), 1).await;
        assert_eq!(single[0].as_ref().unwrap().response, Response::Bool(true));
    }

    #[tokio::test]
    async fn unexpected_batch_answers_are_errors_for_every_writer() {
        for data in [
            Response::Bool(true),
            Response::Rejected("no".into()),
            Response::Batch(vec![Response::Bool(true)]),
        ] {
            for outcome in outcomes(written(data.clone()), 3).await {
                assert!(
                    matches!(outcome, Err(WriteError::Indeterminate(_))),
                    "{data:?}: {outcome:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn lost_proposals_have_an_unknown_outcome() {
        let (tx, rx) = oneshot::channel::<ClientWriteResult<TypeConfig>>();
        drop(tx);
        let stopped = rx.await.unwrap_err();
        for result in [Ok(Err(stopped)), Err(Duration::from_secs(30))] {
            for outcome in outcomes(result, 2).await {
                assert!(
                    matches!(outcome, Err(WriteError::Indeterminate(_))),
                    "{outcome:?}"
                );
            }
        }
    }
}
