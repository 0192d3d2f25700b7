//! Group commit of submits: every `CreateJobs` call (behind `SubmitJob`, `SubmitJobs` and
//! uploads) hands its jobs to one task, which commits whatever calls are waiting in one
//! transaction and answers each after the commit. There is no timer: while one commit is
//! under way the next group gathers, so an idle scheduler commits a lone call at once and a
//! busy one commits many calls per fsync.

use std::collections::VecDeque;

use mediamesh_server::metrics::Histogram;
use mediamesh_store::{Store, Submit, Submitted};
use tokio::sync::{mpsc, oneshot};

/// Calls committed together, at most.
const GROUP: usize = 128;
/// Jobs committed together, at most: a group closes early once it has this many.
const GROUP_JOBS: usize = 5_000;

type Reply = oneshot::Sender<mediamesh_store::Result<Submitted>>;

/// A cheap-to-clone handle on the submit task.
#[derive(Clone)]
pub struct Submitter {
    calls: mpsc::Sender<(Submit, Reply)>,
}

impl Submitter {
    /// Starts the task; it ends when every handle is dropped. `group_sizes` is told how many
    /// calls each commit carried.
    pub fn spawn(store: Store, group_sizes: Option<Histogram>) -> Self {
        let (calls, queue) = mpsc::channel(GROUP * 8);
        tokio::spawn(commit_groups(store, queue, group_sizes));
        Self { calls }
    }

    /// Stores the call's jobs (all or none) once they are committed, or says which quota
    /// refused them.
    pub async fn submit(&self, submit: Submit) -> mediamesh_store::Result<Submitted> {
        let (reply, answer) = oneshot::channel();
        if self.calls.send((submit, reply)).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> mediamesh_store::Error {
    mediamesh_store::Error::Database(sqlx::Error::PoolClosed)
}

async fn commit_groups(store: Store, mut queue: mpsc::Receiver<(Submit, Reply)>, group_sizes: Option<Histogram>) {
    let mut waiting: VecDeque<(Submit, Reply)> = VecDeque::with_capacity(GROUP);
    let mut submits: Vec<Submit> = Vec::with_capacity(GROUP);
    let mut replies: Vec<Reply> = Vec::with_capacity(GROUP);
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(call) => waiting.push_back(call),
                None => return,
            }
        }
        // Whatever has arrived (during the last commit, say) joins this group.
        while waiting.len() < GROUP
            && let Ok(call) = queue.try_recv()
        {
            waiting.push_back(call);
        }
        // Calls in order until the group is full; a call larger than a group goes alone.
        let mut jobs = 0;
        while let Some((submit, _)) = waiting.front() {
            let n = submit.jobs.len();
            if !submits.is_empty() && jobs + n > GROUP_JOBS {
                break;
            }
            jobs += n;
            if let Some((submit, reply)) = waiting.pop_front() {
                submits.push(submit);
                replies.push(reply);
            }
        }
        if let Some(sizes) = &group_sizes {
            sizes.observe(&[], submits.len() as f64);
        }
        commit(&store, &submits, &mut replies).await;
        submits.clear();
    }
}

/// Commits a group and answers its calls. When the group fails as a whole (one call names a
/// dependency that does not exist, a deadlock), each call is tried alone, so that one bad
/// call fails only itself.
async fn commit(store: &Store, submits: &[Submit], replies: &mut Vec<Reply>) {
    match store.submit(submits).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.drain(..).zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) if submits.len() == 1 => {
            if let Some(reply) = replies.pop() {
                let _ = reply.send(Err(err));
            }
        }
        Err(err) => {
            tracing::debug!(error = %err, calls = submits.len(), "group commit failed; committing its calls one by one");
            for (submit, reply) in submits.iter().zip(replies.drain(..)) {
                let outcome = store
                    .submit(std::slice::from_ref(submit))
                    .await
                    .and_then(|mut outcomes| outcomes.pop().ok_or_else(stopped));
                let _ = reply.send(outcome);
            }
        }
    }
}
