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

use std::sync::{Arc, Mutex};

use openraft::Raft;
use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResult;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::{InvalidRequest, WriteError};
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
    /// Starts the proposer task for `raft`.
    pub(crate) fn start(raft: Raft<TypeConfig>, limits: Limits) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, limits));
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
            Err(WriteError::Unavailable(
                "the server stopped before the write completed; its outcome is unknown".into(),
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

async fn run(raft: Raft<TypeConfig>, mut queue: mpsc::UnboundedReceiver<Pending>, limits: Limits) {
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
        propose(&raft, batch, slot).await;
    }
}

/// Proposes one batch and spawns the wait for its result, which releases `slot`.
async fn propose(raft: &Raft<TypeConfig>, batch: Vec<Pending>, slot: OwnedSemaphorePermit) {
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
                let result = result.await;
                drop(slot);
                answer(result, replies);
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

fn answer(
    result: Result<ClientWriteResult<TypeConfig>, oneshot::error::RecvError>,
    replies: Replies,
) {
    let outcomes: Vec<Result<WriteOutcome, WriteError>> = match result {
        Ok(Ok(written)) => {
            let index = written.log_id.index;
            match written.data {
                Response::Batch(responses) if replies.len() > 1 => {
                    if responses.len() == replies.len() {
                        responses
                            .into_iter()
                            .map(|response| Ok(WriteOutcome { index, response }))
                            .collect()
                    } else {
                        vec![
                            Err(WriteError::Fatal(format!(
                                "a batch of {} writes was answered with {} responses",
                                replies.len(),
                                responses.len()
                            )));
                            replies.len()
                        ]
                    }
                }
                response => vec![Ok(WriteOutcome { index, response }); replies.len()],
            }
        }
        Ok(Err(ClientWriteError::ForwardToLeader(f))) => vec![
            Err(WriteError::ForwardToLeader {
                leader_id: f.leader_id,
                leader_node: f.leader_node,
            });
            replies.len()
        ],
        Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
            vec![Err(WriteError::Unavailable(e.to_string())); replies.len()]
        }
        Err(_) => vec![
            Err(WriteError::Unavailable(
                "raft stopped before the write completed; its outcome is unknown".into()
            ));
            replies.len()
        ],
    };
    for ((reply, _admitted), outcome) in replies.into_iter().zip(outcomes) {
        // The writer may have given up waiting; nothing to do then.
        let _ = reply.send(outcome);
    }
}
