//! Shared state: options, fault queue, persistent faults, request log, served files.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::{Fault, Options, Route, Seen};

/// Per-request context handed from the connection layer to the handlers.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    /// Sequence number of the request's log entry.
    pub seq: u64,
    /// The fault to apply, if any.
    pub fault: Option<Fault>,
    /// Whether the request carries the expected API key (always true without an API key).
    pub authorized: bool,
}

pub(crate) struct Shared {
    pub options: Options,
    /// `http://127.0.0.1:PORT`
    pub origin: String,
    state: Mutex<State>,
    files: Mutex<HashMap<String, Bytes>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Option<Route>, Fault)>,
    persistent: HashMap<Option<Route>, Fault>,
    log: Vec<(u64, Seen)>,
    next_seq: u64,
    next_file: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(options: Options, origin: String) -> Shared {
        Shared {
            options,
            origin,
            state: Mutex::new(State::default()),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// Bodies larger than this are drained and answered with 413 without being kept in memory.
    pub fn body_cap(&self) -> usize {
        self.options.max_audio_bytes.saturating_add(64 * 1024 * 1024)
    }

    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        match &self.options.api_key {
            None => true,
            Some(key) => authorization
                .and_then(|value| value.strip_prefix("Bearer "))
                .is_some_and(|given| given.trim() == key),
        }
    }

    pub fn fail_next(&self, route: Option<Route>, n: usize, fault: Fault) {
        let mut state = lock(&self.state);
        for _ in 0..n {
            state.queue.push_back((route, fault.clone()));
        }
    }

    pub fn set_persistent_fault(&self, route: Option<Route>, fault: Option<Fault>) {
        let mut state = lock(&self.state);
        match fault {
            Some(fault) => {
                state.persistent.insert(route, fault);
            }
            None => {
                state.persistent.remove(&route);
            }
        }
    }

    /// Picks the fault for a new request of `route` and records the request; returns the
    /// request's context.
    pub fn admit(&self, mut seen: Seen) -> Ctx {
        let mut state = lock(&self.state);
        let route = seen.route;
        let queued = state
            .queue
            .iter()
            .position(|(r, _)| r.is_none_or(|r| r == route))
            .and_then(|i| state.queue.remove(i))
            .map(|(_, fault)| fault);
        let fault = queued.or_else(|| {
            state
                .persistent
                .get(&Some(route))
                .or_else(|| state.persistent.get(&None))
                .cloned()
        });
        let seq = state.next_seq;
        state.next_seq += 1;
        seen.fault = fault.clone();
        let authorized = self.authorized(seen.authorization.as_deref());
        state.log.push((seq, seen));
        Ctx { seq, fault, authorized }
    }

    /// Records a request that is answered without going through fault selection.
    pub fn record(&self, seen: Seen) {
        let mut state = lock(&self.state);
        let seq = state.next_seq;
        state.next_seq += 1;
        state.log.push((seq, seen));
    }

    /// Fills in what the handler parsed from the body.
    pub fn annotate(&self, seq: u64, model: Option<String>, prompt: Option<String>) {
        let mut state = lock(&self.state);
        if let Some((_, seen)) = state.log.iter_mut().rev().find(|(s, _)| *s == seq) {
            seen.model = model;
            seen.prompt = prompt;
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state).log.iter().map(|(_, seen)| seen.clone()).collect()
    }

    pub fn count(&self, route: Route) -> usize {
        lock(&self.state)
            .log
            .iter()
            .filter(|(_, seen)| seen.route == route)
            .count()
    }

    pub fn clear_log(&self) {
        lock(&self.state).log.clear();
    }

    /// Keeps `bytes` to be served at the returned absolute URL.
    pub fn store_file(&self, bytes: Bytes, extension: &str) -> String {
        let id = {
            let mut state = lock(&self.state);
            state.next_file += 1;
            format!("img-{}.{extension}", state.next_file)
        };
        lock(&self.files).insert(id.clone(), bytes);
        format!("{}/files/{id}", self.origin)
    }

    pub fn file(&self, id: &str) -> Option<Bytes> {
        lock(&self.files).get(id).cloned()
    }
}
