//! A per-provider rate limiter over requests and tokens per minute, shared by every call.
//!
//! Two token buckets (requests: capacity `burst`, tokens: capacity a sixth of a minute's
//! tokens) are evaluated at the instants requests are let through, in order. A request takes
//! the earliest instant at which both buckets have room, so in any window of length W at most
//! `burst + W × rate` requests go out. The request rate carries a small safety margin (5% of
//! the interval plus up to 5 ms) so that the bound also holds where the provider measures it,
//! after the network has added its jitter.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use mediamesh_core::{Error, ErrorCode};

use crate::types::Call;

pub(crate) struct Limiter {
    name: String,
    /// Seconds between requests at the sustained rate, margin included.
    interval: f64,
    burst: f64,
    /// Tokens per second.
    token_rate: f64,
    token_capacity: f64,
    state: Mutex<State>,
}

struct State {
    /// The instant of the latest reservation (levels are as of then).
    at: Instant,
    requests: f64,
    tokens: f64,
}

impl Limiter {
    pub(crate) fn new(name: &str, requests_per_minute: u32, burst: u32, tokens_per_minute: u64) -> Self {
        let base = 60.0 / f64::from(requests_per_minute.max(1));
        let interval = base * 1.05 + (base * 0.05).min(0.005);
        let burst = f64::from(burst.max(1));
        let token_capacity = (tokens_per_minute.max(1) as f64 / 6.0).max(1.0);
        Self {
            name: name.to_owned(),
            interval,
            burst,
            token_rate: tokens_per_minute.max(1) as f64 / 60.0,
            token_capacity,
            state: Mutex::new(State {
                at: Instant::now(),
                requests: burst,
                tokens: token_capacity,
            }),
        }
    }

    /// Reserves the earliest slot for a request of `tokens` estimated tokens. Returns the slot
    /// and the tokens charged, or `None` (nothing reserved) when the slot is after `latest`.
    fn reserve(&self, tokens: u64, latest: Option<Instant>) -> Option<(Instant, f64)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let base = now.max(state.at);
        let elapsed = base.duration_since(state.at).as_secs_f64();
        let requests = (state.requests + elapsed / self.interval).min(self.burst);
        let available = (state.tokens + elapsed * self.token_rate).min(self.token_capacity);
        let need = (tokens as f64).min(self.token_capacity);
        let wait_requests = if requests >= 1.0 {
            0.0
        } else {
            (1.0 - requests) * self.interval
        };
        let wait_tokens = if available >= need {
            0.0
        } else {
            (need - available) / self.token_rate
        };
        let wait = wait_requests.max(wait_tokens);
        // Round up so that the bucket is full enough at the slot.
        let go = base
            + Duration::from_secs_f64(wait)
            + if wait > 0.0 {
                Duration::from_micros(1)
            } else {
                Duration::ZERO
            };
        if latest.is_some_and(|latest| go > latest) {
            return None;
        }
        let waited = go.duration_since(base).as_secs_f64();
        state.requests = (requests + waited / self.interval).min(self.burst) - 1.0;
        state.tokens = (available + waited * self.token_rate).min(self.token_capacity) - need;
        state.at = go;
        Some((go, need))
    }

    /// Waits for room for one request of `tokens` estimated tokens. Fails with `Timeout` when
    /// the wait would pass the call's deadline and `Cancelled` when the call is cancelled.
    /// Returns the tokens charged (pass them to [`Limiter::settle`]).
    pub(crate) async fn acquire(&self, tokens: u64, call: &Call) -> Result<f64, Error> {
        let Some((go, charged)) = self.reserve(tokens, call.deadline) else {
            return Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "waiting for the rate limit of provider {} would pass the deadline",
                    self.name
                ),
            ));
        };
        if go > Instant::now() {
            tokio::select! {
                _ = call.cancel.cancelled() => {
                    return Err(Error::new(ErrorCode::Cancelled, "the call was cancelled"));
                }
                _ = tokio::time::sleep_until(go.into()) => {}
            }
        }
        Ok(charged)
    }

    /// Replaces the estimate charged before a call by the tokens it really used.
    pub(crate) fn settle(&self, charged: f64, used: u64) {
        if used == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.tokens = (state.tokens + charged - used as f64).min(self.token_capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_respect_burst_and_rate() {
        let limiter = Limiter::new("p", 600, 2, 1_000_000);
        let start = Instant::now();
        let slots: Vec<Instant> = (0..12).map(|_| limiter.reserve(10, None).unwrap().0).collect();
        for i in 0..slots.len() {
            for j in i..slots.len() {
                let window = slots[j].duration_since(slots[i]).as_secs_f64();
                let count = (j - i + 1) as f64;
                assert!(count <= 2.0 + window * 10.0 + 1e-9, "{i}..{j}: {count} in {window}");
            }
        }
        assert!(slots[1].duration_since(start) < Duration::from_millis(5));
        assert!(slots[11].duration_since(start) < Duration::from_millis(1300));
    }

    #[test]
    fn a_slot_past_the_deadline_reserves_nothing() {
        let limiter = Limiter::new("p", 60, 1, 1_000_000);
        assert!(limiter.reserve(1, None).is_some());
        let latest = Instant::now() + Duration::from_millis(100);
        assert!(limiter.reserve(1, Some(latest)).is_none());
        // Nothing was taken: the next slot is still about a second away, not two.
        let (go, _) = limiter.reserve(1, None).unwrap();
        assert!(go.duration_since(Instant::now()) < Duration::from_millis(1200));
    }

    #[test]
    fn tokens_limit_too() {
        let limiter = Limiter::new("p", 6000, 100, 600);
        // capacity 100 tokens, 10 tokens per second
        let (a, _) = limiter.reserve(100, None).unwrap();
        let (b, _) = limiter.reserve(50, None).unwrap();
        let gap = b.duration_since(a).as_secs_f64();
        assert!((4.9..5.2).contains(&gap), "{gap}");
    }
}
