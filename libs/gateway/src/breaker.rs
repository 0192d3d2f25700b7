//! A circuit breaker per provider.
//!
//! `breaker_failures` consecutive failed calls (retryable classes and rejected credentials)
//! open the circuit for `breaker_cooldown`; while open the provider is skipped. After the
//! cooldown one trial call is let through (half-open): its success closes the circuit, its
//! failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The state of a provider's circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls skip the provider until the cooldown ends.
    Open,
    /// The cooldown is over: the next call is a trial.
    HalfOpen,
}

enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// Leave to use a provider for one HTTP call; tell the breaker how it went.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    settled: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() < *until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// A permit for one call, or `None` while the circuit is open (or a trial is running).
    pub(crate) fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut inner = self.lock();
        let trial = match &*inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if Instant::now() < *until => return None,
            Inner::Open { .. } | Inner::HalfOpen { trial_running: false } => true,
            Inner::HalfOpen { trial_running: true } => return None,
        };
        if trial {
            *inner = Inner::HalfOpen { trial_running: true };
        }
        Some(Permit {
            breaker: self,
            trial,
            settled: false,
        })
    }
}

impl Permit<'_> {
    /// The provider answered (even with a client error).
    pub(crate) fn success(mut self) {
        self.settled = true;
        let mut inner = self.breaker.lock();
        match &*inner {
            Inner::Closed { .. } => *inner = Inner::Closed { failures: 0 },
            _ if self.trial => *inner = Inner::Closed { failures: 0 },
            _ => {}
        }
    }

    /// The provider failed (5xx, 429, timeout, network, malformed answer, credentials).
    pub(crate) fn failure(mut self) {
        self.settled = true;
        let breaker = self.breaker;
        let mut inner = breaker.lock();
        let open = Inner::Open {
            until: Instant::now() + breaker.cooldown,
        };
        match &*inner {
            Inner::Closed { failures } => {
                let failures = failures + 1;
                *inner = if failures >= breaker.threshold {
                    tracing::warn!(failures, "circuit opened");
                    open
                } else {
                    Inner::Closed { failures }
                };
            }
            _ if self.trial => {
                tracing::warn!("trial call failed: circuit opened again");
                *inner = open;
            }
            _ => {}
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A trial that ended without a verdict (cancelled) lets the next call try.
        if !self.settled && self.trial {
            let mut inner = self.breaker.lock();
            if matches!(&*inner, Inner::HalfOpen { trial_running: true }) {
                *inner = Inner::HalfOpen { trial_running: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_after_a_good_trial() {
        let breaker = Breaker::new(2, Duration::from_millis(0));
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.try_acquire().unwrap().failure();
        // cooldown 0: immediately half-open
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let trial = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_none(), "one trial at a time");
        trial.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn open_rejects_and_a_dropped_trial_frees_the_slot() {
        let breaker = Breaker::new(1, Duration::from_secs(60));
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_acquire().is_none());
        let breaker = Breaker::new(1, Duration::ZERO);
        breaker.try_acquire().unwrap().failure();
        drop(breaker.try_acquire().unwrap());
        assert!(breaker.try_acquire().is_some());
    }
}
