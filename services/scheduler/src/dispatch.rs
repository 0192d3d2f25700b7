//! The dispatcher: holds every job that can run, in memory, and sends each into JetStream as
//! soon as it is due and its queue and tenant have room. Nothing is polled and nothing is
//! written to dispatch a job: submits hand it their committed rows, the applier tells it what
//! its reports changed (starts, outcomes, retries, dependents released), and it sends attempt
//! `n + 1` of a row at attempt `n`; the worker's start report is what moves the row on.
//!
//! Order: tenants in turn (the one with the fewest jobs in flight in the queue goes first),
//! then the highest effective priority (one level more per `priority_aging_secs` waited since
//! the job became due), then the oldest. Caps count what this dispatcher has in flight: per
//! queue (`max_in_flight`, and `prefetch` sent but not started), per tenant and queue
//! (`max_in_flight_per_tenant`) and per tenant (its running-jobs quota).
//!
//! PostgreSQL is read to recover: at start (every job waiting or running), when memory could
//! not hold the backlog, and for dispatches that went quiet. A message still unstarted after
//! [`RECORD_AFTER`] has its dispatch recorded in the row (attempt, stream sequence), so that a
//! dispatcher starting later knows it is out there; one found gone from the stream after
//! `redispatch_after` is sent again (same attempt, same message id). `aggregate` jobs are not
//! sent anywhere: the dispatcher runs them itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use mediamesh_bus::{Bus, JobMessage};
use mediamesh_core::{JobState, Queue};
use mediamesh_store::{CompletedTransition, DueJob, JobRow, Store};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::SchedulerConfig;
use crate::metrics::SchedulerMetrics;

/// Jobs sent in one round, at most (their publishes are pipelined).
const BATCH: usize = 256;
/// Jobs held in memory, at most; past it the rest wait in PostgreSQL until there is room.
const MAX_HELD: usize = 200_000;
/// Rows read per query when recovering.
const PAGE: i64 = 5_000;
/// A dispatch still unstarted after this long is recorded in its row.
pub const RECORD_AFTER: Duration = Duration::from_secs(1);
/// How often dispatches older than this are checked against PostgreSQL (outcomes applied by
/// another scheduler, notes lost with a restart of this task).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// After a publish fails, the next try waits this long.
const PUBLISH_BACKOFF: Duration = Duration::from_millis(250);

/// What the dispatcher is told.
enum Note {
    /// Committed jobs (rows a submit stored), with their tenant's running-jobs limit when the
    /// submit carried one (0: none).
    Submitted {
        jobs: Vec<DueJob>,
        limit: Option<(String, u32)>,
    },
    /// Transitions applied: (job, new state, attempt); and jobs to read again (retried,
    /// released by their dependencies).
    Changed {
        events: Vec<(Uuid, JobState, i32)>,
        reread: Vec<Uuid>,
    },
}

/// A cheap-to-clone handle on the dispatcher task.
#[derive(Clone)]
pub struct Dispatcher {
    notes: mpsc::UnboundedSender<Note>,
    inbox: Arc<Mutex<mpsc::UnboundedReceiver<Note>>>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Dispatcher {
    pub fn new() -> Self {
        let (notes, inbox) = mpsc::unbounded_channel();
        Self {
            notes,
            inbox: Arc::new(Mutex::new(inbox)),
        }
    }

    /// Jobs a submit committed (the new ones).
    pub fn submitted(&self, rows: &[&JobRow], running_limit: Option<(&str, u64)>) {
        let jobs: Vec<DueJob> = rows.iter().filter_map(|row| DueJob::from_submitted(row)).collect();
        let limit = running_limit.map(|(tenant, n)| (tenant.to_owned(), u32::try_from(n).unwrap_or(u32::MAX)));
        if !jobs.is_empty() || limit.is_some() {
            let _ = self.notes.send(Note::Submitted { jobs, limit });
        }
    }

    /// Transitions committed by the applier, the API or an aggregate.
    pub fn changed<'a>(&self, transitions: impl IntoIterator<Item = &'a CompletedTransition>) {
        let mut events = Vec::new();
        let mut reread = Vec::new();
        for transition in transitions {
            for event in transition.events() {
                if let Ok(state) = JobState::parse(&event.state) {
                    events.push((event.job_id, state, event.attempt));
                    // A retry waits for its backoff (SCHEDULED) or runs again (QUEUED).
                    if matches!(state, JobState::Scheduled | JobState::Queued) {
                        reread.push(event.job_id);
                    }
                }
            }
            reread.extend_from_slice(&transition.released);
        }
        if !events.is_empty() || !reread.is_empty() {
            let _ = self.notes.send(Note::Changed { events, reread });
        }
    }

    /// Jobs to read again from PostgreSQL (retried by filter).
    pub fn reread(&self, ids: Vec<Uuid>) {
        if !ids.is_empty() {
            let _ = self.notes.send(Note::Changed {
                events: Vec::new(),
                reread: ids,
            });
        }
    }
}

/// Where a held job stands.
enum Phase {
    /// Not due before its `run_at`.
    Timer,
    /// Due, waiting for room.
    Ready,
    /// Sent (attempt `attempt`), not ended.
    Out(Out),
}

struct Out {
    attempt: i32,
    /// The stream sequence of its message, once stored.
    seq: Option<u64>,
    /// When it was sent, or last found waiting in the stream.
    since: Instant,
    started: bool,
    /// Whether its row records the dispatch.
    recorded: bool,
}

struct Held {
    job: DueJob,
    /// The attempt the next send carries.
    next: i32,
    phase: Phase,
}

/// One tenant's due jobs of a queue: per priority level, oldest first.
type TenantReady = BTreeMap<i16, BTreeSet<(DateTime<Utc>, Uuid)>>;

/// One queue's due jobs and what it has in flight.
#[derive(Default)]
struct QueueState {
    in_flight: u32,
    unstarted: u32,
    tenant_in_flight: HashMap<String, u32>,
    /// Per tenant, per priority level, the due jobs oldest first.
    ready: BTreeMap<String, TenantReady>,
}

struct Limits {
    max_in_flight: u32,
    prefetch: u32,
    per_tenant: u32,
    aging_secs: f64,
    redispatch_after: Duration,
}

struct Core {
    held: HashMap<Uuid, Held>,
    timers: BTreeSet<(DateTime<Utc>, Uuid)>,
    queues: HashMap<String, QueueState>,
    tenant_in_flight: HashMap<String, u32>,
    tenant_limits: HashMap<String, u32>,
    limits: Limits,
    /// Whether PostgreSQL holds due jobs that memory had no room for.
    overflow: bool,
}

impl Core {
    fn new(limits: Limits) -> Self {
        Self {
            held: HashMap::new(),
            timers: BTreeSet::new(),
            queues: HashMap::new(),
            tenant_in_flight: HashMap::new(),
            tenant_limits: HashMap::new(),
            limits,
            overflow: false,
        }
    }

    /// Takes a row in: as due, waiting for its time, or already out (recorded or started).
    /// A job already held stays as it is, unless the row shows its attempt has ended.
    fn hold(&mut self, job: DueJob, now: DateTime<Utc>) {
        if let Some(held) = self.held.get(&job.id) {
            match &held.phase {
                Phase::Out(out) => {
                    let ended = matches!(job.state.as_str(), "QUEUED" | "SCHEDULED")
                        && job.dispatched_at.is_none()
                        && job.attempt >= out.attempt;
                    // A redelivered message runs as a later attempt than the one sent.
                    if job.state == "RUNNING" && job.attempt >= out.attempt {
                        self.started(job.id, out.attempt);
                        return;
                    }
                    if !ended {
                        return;
                    }
                    self.release(job.id);
                }
                Phase::Timer | Phase::Ready => return,
            }
        }
        if self.held.len() >= MAX_HELD {
            self.overflow = true;
            return;
        }
        let aggregate = job.queue == Queue::Scheduler.as_str();
        let id = job.id;
        let recorded = job.dispatched_at.filter(|_| !aggregate);
        if (job.state == "RUNNING" && !aggregate) || recorded.is_some() {
            // Running, or a recorded dispatch: out there (unstarted since it was recorded).
            let started = job.state == "RUNNING";
            let age = recorded.and_then(|at| (now - at).to_std().ok()).unwrap_or_default();
            let out = Out {
                attempt: job.attempt,
                seq: job.dispatch_seq.and_then(|s| u64::try_from(s).ok()),
                since: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
                started,
                recorded: true,
            };
            self.count_out(&job, !started);
            let next = job.attempt;
            self.held.insert(
                id,
                Held {
                    job,
                    next,
                    phase: Phase::Out(out),
                },
            );
            return;
        }
        // Waiting: the next attempt goes out when due (an aggregate interrupted while running
        // runs again as the next attempt too).
        let next = job.attempt + 1;
        let run_at = job.run_at;
        if run_at > now {
            self.timers.insert((run_at, id));
            self.held.insert(
                id,
                Held {
                    job,
                    next,
                    phase: Phase::Timer,
                },
            );
        } else {
            self.enqueue(&job);
            self.held.insert(
                id,
                Held {
                    job,
                    next,
                    phase: Phase::Ready,
                },
            );
        }
    }

    fn enqueue(&mut self, job: &DueJob) {
        self.queues
            .entry(job.queue.clone())
            .or_default()
            .ready
            .entry(job.tenant.clone())
            .or_default()
            .entry(job.priority)
            .or_default()
            .insert((job.run_at, job.id));
    }

    fn dequeue(&mut self, job: &DueJob) {
        let Some(queue) = self.queues.get_mut(&job.queue) else {
            return;
        };
        let Some(levels) = queue.ready.get_mut(&job.tenant) else {
            return;
        };
        if let Some(level) = levels.get_mut(&job.priority) {
            level.remove(&(job.run_at, job.id));
            if level.is_empty() {
                levels.remove(&job.priority);
            }
        }
        if levels.is_empty() {
            queue.ready.remove(&job.tenant);
        }
    }

    fn count_out(&mut self, job: &DueJob, unstarted: bool) {
        let queue = self.queues.entry(job.queue.clone()).or_default();
        queue.in_flight += 1;
        if unstarted {
            queue.unstarted += 1;
        }
        *queue.tenant_in_flight.entry(job.tenant.clone()).or_default() += 1;
        *self.tenant_in_flight.entry(job.tenant.clone()).or_default() += 1;
    }

    fn uncount_out(&mut self, job: &DueJob, unstarted: bool) {
        if let Some(queue) = self.queues.get_mut(&job.queue) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if unstarted {
                queue.unstarted = queue.unstarted.saturating_sub(1);
            }
            if let Some(n) = queue.tenant_in_flight.get_mut(&job.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    queue.tenant_in_flight.remove(&job.tenant);
                }
            }
        }
        if let Some(n) = self.tenant_in_flight.get_mut(&job.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.tenant_in_flight.remove(&job.tenant);
            }
        }
    }

    /// Forgets a job, whatever its phase, giving back its slot.
    fn release(&mut self, id: Uuid) -> Option<Held> {
        let held = self.held.remove(&id)?;
        match &held.phase {
            Phase::Timer => {
                self.timers.remove(&(held.job.run_at, id));
            }
            Phase::Ready => self.dequeue(&held.job),
            Phase::Out(out) => self.uncount_out(&held.job, !out.started),
        }
        Some(held)
    }

    fn started(&mut self, id: Uuid, attempt: i32) {
        let Some(held) = self.held.get_mut(&id) else { return };
        let Phase::Out(out) = &mut held.phase else { return };
        // A redelivered message starts as a later attempt than the one sent.
        if attempt < out.attempt || out.started {
            return;
        }
        out.started = true;
        if let Some(queue) = self.queues.get_mut(&held.job.queue) {
            queue.unstarted = queue.unstarted.saturating_sub(1);
        }
    }

    /// A transition the store committed.
    fn apply(&mut self, id: Uuid, state: JobState, attempt: i32) {
        match state {
            JobState::Running => self.started(id, attempt),
            JobState::Queued => {}
            // Ended, or failed and waiting to be retried (re-read with its new run_at).
            JobState::Scheduled | JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                let ours = match self.held.get(&id).map(|h| &h.phase) {
                    Some(Phase::Out(out)) => out.attempt <= attempt,
                    Some(_) => state.is_terminal(),
                    None => false,
                };
                if ours {
                    self.release(id);
                }
            }
        }
    }

    /// Moves jobs whose time has come from the timers to the queues.
    fn due_timers(&mut self, now: DateTime<Utc>) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(held) = self.held.get_mut(&id) else { continue };
            held.phase = Phase::Ready;
            let job = held.job.clone();
            self.enqueue(&job);
        }
    }

    /// Picks the next jobs of `queue` to send within its caps, marks them out, and returns
    /// them with the attempt each carries.
    fn pick(&mut self, queue_name: &str, max: usize, now: DateTime<Utc>) -> Vec<(DueJob, i32)> {
        let mut picked = Vec::new();
        while picked.len() < max {
            let Some(queue) = self.queues.get(queue_name) else {
                break;
            };
            if !self.queue_has_room(queue_name, queue) {
                break;
            }
            // The tenant with the fewest in flight that has room; among equals, the one whose
            // best job has the highest effective priority, then the oldest.
            let mut best: Option<(u32, f64, DateTime<Utc>, Uuid)> = None;
            for (tenant, levels) in &queue.ready {
                if !self.tenant_has_room(queue_name, queue, tenant) {
                    continue;
                }
                let in_queue = queue.tenant_in_flight.get(tenant).copied().unwrap_or(0);
                let Some((effective, run_at, id)) = levels
                    .iter()
                    .filter_map(|(level, jobs)| {
                        let &(run_at, id) = jobs.first()?;
                        let waited = (now - run_at).num_milliseconds().max(0) as f64 / 1000.0;
                        let aging = if self.limits.aging_secs > 0.0 {
                            (waited / self.limits.aging_secs).floor()
                        } else {
                            0.0
                        };
                        Some((f64::from(*level) + aging, run_at, id))
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
                else {
                    continue;
                };
                let better = match &best {
                    None => true,
                    Some((n, e, at, _)) => {
                        in_queue < *n || (in_queue == *n && (effective > *e || (effective == *e && run_at < *at)))
                    }
                };
                if better {
                    best = Some((in_queue, effective, run_at, id));
                }
            }
            let Some((_, _, _, id)) = best else { break };
            let Some(job) = self.held.get(&id).map(|h| h.job.clone()) else {
                break;
            };
            self.dequeue(&job);
            let Some(held) = self.held.get_mut(&id) else { break };
            let attempt = held.next;
            held.phase = Phase::Out(Out {
                attempt,
                seq: None,
                since: Instant::now(),
                started: false,
                recorded: false,
            });
            self.count_out(&job, true);
            picked.push((job, attempt));
        }
        picked
    }

    /// A send that failed: the job is due again, its slot given back.
    fn unsend(&mut self, id: Uuid) {
        let Some(held) = self.held.get(&id) else { return };
        if !matches!(held.phase, Phase::Out(_)) {
            return;
        }
        let job = held.job.clone();
        self.uncount_out(&job, true);
        self.enqueue(&job);
        if let Some(held) = self.held.get_mut(&id) {
            held.phase = Phase::Ready;
        }
    }

    fn sent(&mut self, id: Uuid, attempt: i32, seq: u64) {
        if let Some(Held {
            phase: Phase::Out(out), ..
        }) = self.held.get_mut(&id)
            && out.attempt == attempt
        {
            out.seq = Some(seq);
        }
    }

    /// Dispatches out longer than `age` (to check against PostgreSQL).
    fn out_older_than(&self, age: Duration) -> Vec<Uuid> {
        self.held
            .iter()
            .filter_map(|(id, h)| match &h.phase {
                Phase::Out(out) if out.since.elapsed() >= age => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Unstarted, unrecorded dispatches older than `age`, as (job, attempt, sequence).
    fn to_record(&self, age: Duration) -> Vec<(Uuid, i32, i64)> {
        self.held
            .iter()
            .filter_map(|(id, h)| match &h.phase {
                Phase::Out(out) if !out.started && !out.recorded && out.since.elapsed() >= age => {
                    let seq = i64::try_from(out.seq?).ok()?;
                    Some((*id, out.attempt, seq))
                }
                _ => None,
            })
            .collect()
    }

    fn mark_recorded(&mut self, ids: &[(Uuid, i32, i64)]) {
        for (id, attempt, _) in ids {
            if let Some(Held {
                phase: Phase::Out(out), ..
            }) = self.held.get_mut(id)
                && out.attempt == *attempt
            {
                out.recorded = true;
            }
        }
    }
}

pub async fn run(
    store: Store,
    bus: Bus,
    dispatcher: Dispatcher,
    config: SchedulerConfig,
    worker_id: String,
    shutdown: CancellationToken,
    metrics: SchedulerMetrics,
) {
    let mut inbox = dispatcher.inbox.lock().await;
    let mut core = Core::new(Limits {
        max_in_flight: config.max_in_flight.max(1),
        prefetch: config.prefetch.max(1),
        per_tenant: config.max_in_flight_per_tenant,
        aging_secs: config.priority_aging_secs as f64,
        redispatch_after: Duration::from_secs(config.redispatch_after_secs.max(1)),
    });
    // Recover: every job waiting or running, and the tenants' limits.
    loop {
        match recover(&store, &mut core).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, "dispatcher cannot read the backlog yet; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    tracing::info!(
        held = core.held.len(),
        overflow = core.overflow,
        "dispatcher recovered its backlog"
    );
    let mut last_record = Instant::now();
    let mut last_reconcile = Instant::now();
    let mut publish_blocked_until: Option<Instant> = None;
    let mut rereads: Vec<(Instant, Uuid)> = Vec::new();
    loop {
        // Everything told so far, in order.
        let mut to_read: Vec<Uuid> = Vec::new();
        let now = Utc::now();
        while let Ok(note) = inbox.try_recv() {
            take_note(&mut core, note, now, &mut to_read);
        }
        let due_rereads: Vec<Uuid> = {
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = rereads.drain(..).partition(|(at, _)| *at <= now);
            rereads = later;
            due.into_iter().map(|(_, id)| id).collect()
        };
        to_read.extend(due_rereads);
        if !to_read.is_empty() {
            to_read.sort_unstable();
            to_read.dedup();
            match store.due_jobs_by_id(&to_read).await {
                Ok(rows) => {
                    let now = Utc::now();
                    for row in rows {
                        core.hold(row, now);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read jobs to dispatch; trying again");
                    let at = Instant::now() + PUBLISH_BACKOFF;
                    rereads.extend(to_read.into_iter().map(|id| (at, id)));
                }
            }
        }
        let now = Utc::now();
        core.due_timers(now);

        // Send what has room.
        if publish_blocked_until.is_none_or(|until| Instant::now() >= until) {
            publish_blocked_until = None;
            let mut picked = Vec::new();
            for queue in [Queue::Media, Queue::Inference] {
                picked.extend(core.pick(queue.as_str(), BATCH, now));
            }
            if !picked.is_empty() {
                for (job, _) in &picked {
                    let waited = (now - job.run_at).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics.dispatched(&job.kind, waited);
                }
                let results = publish_all(&bus, picked).await;
                let mut failed = false;
                for (id, attempt, result) in results {
                    match result {
                        Some(seq) => core.sent(id, attempt, seq),
                        None => {
                            core.unsend(id);
                            failed = true;
                        }
                    }
                }
                if failed {
                    publish_blocked_until = Some(Instant::now() + PUBLISH_BACKOFF);
                }
            }
            // Aggregates: few and cheap, run here one after the other.
            for (job, attempt) in core.pick(Queue::Scheduler.as_str(), BATCH, now) {
                core.release(job.id);
                let job = DueJob { attempt, ..job };
                match crate::aggregate::run(&store, &job, &worker_id).await {
                    Ok(transitions) => {
                        for event in transitions.iter().flat_map(|t| t.events()) {
                            tracing::info!(job_id = %event.job_id, state = %event.state, "job transition");
                            crate::events::announce(&bus, event).await;
                        }
                        dispatcher.changed(transitions.iter());
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, job_id = %job.id, "aggregate failed to run; it will be retried");
                        rereads.push((Instant::now() + Duration::from_secs(1), job.id));
                    }
                }
            }
        }

        if last_record.elapsed() >= RECORD_AFTER {
            last_record = Instant::now();
            record(&store, &mut core, RECORD_AFTER).await;
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            last_reconcile = Instant::now();
            reconcile(&store, &bus, &mut core, &mut rereads).await;
            if core.overflow && core.held.len() < MAX_HELD / 2 {
                core.overflow = false;
                if let Err(err) = recover(&store, &mut core).await {
                    tracing::warn!(error = %err, "cannot read more of the backlog; next round");
                    core.overflow = true;
                }
            }
        }

        // Sleep until told something, a timer is due, or the next housekeeping.
        let mut wake_at = Instant::now() + RECORD_AFTER.min(RECONCILE_EVERY);
        if let Some(&(at, _)) = core.timers.first() {
            let until = (at - Utc::now()).to_std().unwrap_or_default();
            wake_at = wake_at.min(Instant::now() + until);
        }
        if let Some(until) = publish_blocked_until {
            wake_at = wake_at.min(until);
        }
        if let Some(at) = rereads.iter().map(|(at, _)| *at).min() {
            wake_at = wake_at.min(at);
        }
        if publish_blocked_until.is_none() && core.has_room() && !shutdown.is_cancelled() {
            // Room and work left over from a full batch: go round again at once.
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                // Whatever is out and unstarted gets recorded, so that the next dispatcher
                // does not send it again.
                record(&store, &mut core, Duration::ZERO).await;
                return;
            }
            note = inbox.recv() => {
                let Some(note) = note else { return };
                let mut to_read = Vec::new();
                take_note(&mut core, note, Utc::now(), &mut to_read);
                let at = Instant::now();
                rereads.extend(to_read.into_iter().map(|id| (at, id)));
            }
            () = tokio::time::sleep_until(wake_at.into()) => {}
        }
    }
}

impl Core {
    /// Whether queue `name` may have one more job out (aggregates are not capped).
    fn queue_has_room(&self, name: &str, queue: &QueueState) -> bool {
        name == Queue::Scheduler.as_str()
            || (queue.in_flight < self.limits.max_in_flight && queue.unstarted < self.limits.prefetch)
    }

    /// Whether `tenant` may have one more job of queue `name` out: its cap per queue and its
    /// running-jobs quota.
    fn tenant_has_room(&self, name: &str, queue: &QueueState, tenant: &str) -> bool {
        if name == Queue::Scheduler.as_str() {
            return true;
        }
        let in_queue = queue.tenant_in_flight.get(tenant).copied().unwrap_or(0);
        let in_all = self.tenant_in_flight.get(tenant).copied().unwrap_or(0);
        (self.limits.per_tenant == 0 || in_queue < self.limits.per_tenant)
            && self.tenant_limits.get(tenant).is_none_or(|limit| in_all < *limit)
    }

    /// Whether a queue has a due job that its caps and its tenant's let out now.
    fn has_room(&self) -> bool {
        [Queue::Media, Queue::Inference, Queue::Scheduler].iter().any(|queue| {
            let name = queue.as_str();
            self.queues.get(name).is_some_and(|q| {
                self.queue_has_room(name, q) && q.ready.keys().any(|tenant| self.tenant_has_room(name, q, tenant))
            })
        })
    }
}

fn take_note(core: &mut Core, note: Note, now: DateTime<Utc>, to_read: &mut Vec<Uuid>) {
    match note {
        Note::Submitted { jobs, limit } => {
            if let Some((tenant, limit)) = limit {
                if limit == 0 {
                    core.tenant_limits.remove(&tenant);
                } else {
                    core.tenant_limits.insert(tenant, limit);
                }
            }
            for job in jobs {
                core.hold(job, now);
            }
        }
        Note::Changed { events, reread } => {
            for (id, state, attempt) in events {
                core.apply(id, state, attempt);
            }
            to_read.extend(reread);
        }
    }
}

/// Reads every job waiting or running (from where memory ran out, if it did) and the
/// tenants' limits.
async fn recover(store: &Store, core: &mut Core) -> mediamesh_store::Result<()> {
    core.tenant_limits = store
        .tenant_running_limits()
        .await?
        .into_iter()
        .map(|(tenant, n)| (tenant, u32::try_from(n).unwrap_or(0)))
        .collect();
    let mut after = Uuid::nil();
    loop {
        let rows = store.dispatch_backlog(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let full = rows.len() as i64 == PAGE;
        let now = Utc::now();
        for row in rows {
            core.hold(row, now);
        }
        if !full || core.overflow {
            break;
        }
    }
    Ok(())
}

/// Records the dispatches unstarted for `age` or more.
async fn record(store: &Store, core: &mut Core, age: Duration) {
    let due = core.to_record(age);
    if due.is_empty() {
        return;
    }
    match store.record_dispatches(&due).await {
        Ok(_) => core.mark_recorded(&due),
        Err(err) => tracing::warn!(error = %err, "cannot record dispatches; next round"),
    }
}

/// Checks the dispatches out for a while against their rows: those that ended or started
/// elsewhere give back their slots; those still unstarted after `redispatch_after` whose
/// message is gone from the stream are sent again (same attempt, same message id).
async fn reconcile(store: &Store, bus: &Bus, core: &mut Core, rereads: &mut Vec<(Instant, Uuid)>) {
    match store.tenant_running_limits().await {
        Ok(limits) => {
            core.tenant_limits = limits
                .into_iter()
                .map(|(tenant, n)| (tenant, u32::try_from(n).unwrap_or(0)))
                .collect();
        }
        Err(err) => tracing::debug!(error = %err, "cannot read the tenants' limits"),
    }
    let old = core.out_older_than(RECONCILE_EVERY);
    let mut resend = Vec::new();
    for chunk in old.chunks(PAGE as usize) {
        let states = match store.dispatch_states(chunk).await {
            Ok(states) => states,
            Err(err) => {
                tracing::warn!(error = %err, "cannot check dispatches; next round");
                return;
            }
        };
        let states: HashMap<Uuid, _> = states.into_iter().map(|s| (s.id, s)).collect();
        for id in chunk {
            let Some(Held {
                phase: Phase::Out(out), ..
            }) = core.held.get(id)
            else {
                continue;
            };
            let (attempt, started, since, seq) = (out.attempt, out.started, out.since, out.seq);
            let Some(row) = states.get(id) else {
                core.release(*id);
                continue;
            };
            let state = JobState::parse(&row.state).ok();
            let waiting = matches!(state, Some(JobState::Queued | JobState::Scheduled));
            if state == Some(JobState::Running) && row.attempt >= attempt {
                core.started(*id, row.attempt);
            } else if state.is_none_or(JobState::is_terminal) || row.attempt > attempt {
                core.release(*id);
                if waiting {
                    rereads.push((Instant::now(), *id));
                }
            } else if waiting && row.dispatched_at.is_none() && row.attempt >= attempt {
                // Failed and waiting for its retry: applied by another scheduler.
                core.release(*id);
                rereads.push((Instant::now(), *id));
            } else if waiting && !started && since.elapsed() >= core.limits.redispatch_after {
                resend.push((*id, seq));
            }
        }
    }
    if resend.is_empty() {
        return;
    }
    let checks = resend.into_iter().map(|(id, seq)| async move {
        match seq {
            None => (id, Ok(false)),
            Some(seq) => (id, bus.job_message_exists(seq).await),
        }
    });
    let mut lost = Vec::new();
    for (id, exists) in join_all(checks).await {
        match exists {
            Ok(true) => {
                // Still waiting in the stream for a worker: look again later.
                if let Some(Held {
                    phase: Phase::Out(out), ..
                }) = core.held.get_mut(&id)
                {
                    out.since = Instant::now();
                }
            }
            Ok(false) => {
                if let Some(held) = core.held.get(&id)
                    && let Phase::Out(out) = &held.phase
                {
                    lost.push((held.job.clone(), out.attempt));
                }
            }
            Err(err) => tracing::debug!(error = %err, job_id = %id, "cannot check the job message; next round"),
        }
    }
    if lost.is_empty() {
        return;
    }
    tracing::warn!(
        count = lost.len(),
        "job messages lost from JetStream; publishing them again"
    );
    for (id, attempt, result) in publish_all(bus, lost).await {
        if let Some(Held {
            phase: Phase::Out(out), ..
        }) = core.held.get_mut(&id)
            && out.attempt == attempt
        {
            out.since = Instant::now();
            if let Some(seq) = result {
                out.seq = Some(seq);
                out.recorded = false;
            }
        }
    }
}

/// Sends attempts, pipelined; returns each (job, attempt, stream sequence once stored).
async fn publish_all(bus: &Bus, jobs: Vec<(DueJob, i32)>) -> Vec<(Uuid, i32, Option<u64>)> {
    let sends = jobs.into_iter().map(|(job, attempt)| {
        // The dispatch joins the submitter's trace; the message carries it on to the worker.
        let span = tracing::info_span!(
            "dispatch",
            otel.kind = "producer",
            job_id = %job.id,
            kind = %job.kind,
            tenant = %job.tenant,
            attempt,
        );
        if let Some(traceparent) = &job.traceparent {
            mediamesh_telemetry::set_parent(&span, |key| (key == "traceparent").then(|| traceparent.clone()));
        }
        publish_one(bus, job, attempt).instrument(span)
    });
    join_all(sends).await
}

async fn publish_one(bus: &Bus, job: DueJob, attempt: i32) -> (Uuid, i32, Option<u64>) {
    let message = JobMessage {
        job_id: job.id,
        tenant: job.tenant,
        kind: job.kind,
        queue: job.queue,
        attempt: u32::try_from(attempt).unwrap_or(0),
        media_id: job.media_id,
        payload: job.payload,
        timeout_ms: u64::try_from(job.timeout_ms).unwrap_or(0),
        max_attempts: u32::try_from(job.max_attempts).unwrap_or(0),
    };
    match bus.publish_job(&message).await {
        Ok(seq) => {
            tracing::debug!(job_id = %job.id, attempt, kind = %message.kind, "dispatched");
            (job.id, attempt, Some(seq))
        }
        Err(err) => {
            // Nothing was written: the job is due again and the attempt is not spent. If the
            // message did reach JetStream, the same Nats-Msg-Id makes the next send a no-op.
            tracing::warn!(error = %err, job_id = %job.id, attempt, "dispatch failed; trying again");
            (job.id, attempt, None)
        }
    }
}
