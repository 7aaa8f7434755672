//! The local view of a lease: until when this replica may trust that it holds office. Renewals
//! (etcd keep-alives, Postgres-lock heartbeats) push the deadline forward; the holder stops acting
//! when it passes, which is set before the lease can have expired on the server (the deadline is
//! counted from when the renewal was *sent*, minus a margin). Pure bookkeeping on the monotonic
//! clock, so it is tested with paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Where a lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Validity {
    /// Trusted until `until`; `renewed_at` is when the last successful renewal was sent.
    Until { until: Instant, renewed_at: Instant },
    /// Known to be gone, with the reason.
    Ended(String),
}

/// A shared, cloneable lease deadline.
#[derive(Clone)]
pub struct LeaseClock {
    inner: Arc<Inner>,
}

struct Inner {
    state: watch::Sender<Validity>,
    /// Wakes the renewing task for an immediate renewal.
    renew_now: Notify,
}

/// How much earlier than the server-side expiry the holder stops trusting its lease: a tenth of
/// the TTL covers clock-rate drift between hosts and scheduling delays of the deadline timer.
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 10
}

impl LeaseClock {
    /// A lease trusted until `until`, as obtained by a request sent at `sent_at`.
    pub fn new(sent_at: Instant, until: Instant) -> LeaseClock {
        let (state, _) = watch::channel(Validity::Until {
            until,
            renewed_at: sent_at,
        });
        LeaseClock {
            inner: Arc::new(Inner {
                state,
                renew_now: Notify::new(),
            }),
        }
    }

    /// Records a successful renewal sent at `sent_at` that keeps the lease until `until`. A late
    /// answer never shortens the deadline; an ended lease stays ended.
    pub fn renewed(&self, sent_at: Instant, until: Instant) {
        self.inner.state.send_if_modified(|v| match v {
            Validity::Until {
                until: old,
                renewed_at,
            } => {
                let changed = until > *old || sent_at > *renewed_at;
                *old = (*old).max(until);
                *renewed_at = (*renewed_at).max(sent_at);
                changed
            }
            Validity::Ended(_) => false,
        });
    }

    /// The lease is known to be gone (the server said so, or the connection that held it closed).
    pub fn end(&self, why: impl Into<String>) {
        let why = why.into();
        self.inner.state.send_if_modified(|v| match v {
            Validity::Until { .. } => {
                *v = Validity::Ended(why);
                true
            }
            Validity::Ended(_) => false,
        });
    }

    /// Until when the lease is trusted; `None` once it ended or the deadline passed.
    pub fn valid_until(&self) -> Option<Instant> {
        match &*self.inner.state.borrow() {
            Validity::Until { until, .. } if *until > Instant::now() => Some(*until),
            _ => None,
        }
    }

    /// Resolves, with the reason, when the lease can no longer be trusted: it ended, or its
    /// deadline passed without a renewal. Cancel-safe.
    pub async fn lost(&self) -> String {
        let mut rx = self.inner.state.subscribe();
        loop {
            let until = match &*rx.borrow_and_update() {
                Validity::Ended(why) => return why.clone(),
                Validity::Until { until, .. } => *until,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    if let Validity::Until { until: now_until, .. } = &*rx.borrow()
                        && *now_until <= until
                    {
                        return "the lease deadline passed without a successful renewal".into();
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return "the lease clock was dropped".into();
                    }
                }
            }
        }
    }

    /// Asks the renewing task for a renewal now, and waits for one sent after this call.
    /// Returns false if the lease ended (or its deadline passed) first.
    pub async fn renew_fresh(&self) -> bool {
        let asked_at = Instant::now();
        self.inner.renew_now.notify_one();
        let mut rx = self.inner.state.subscribe();
        tokio::select! {
            _ = self.lost() => false,
            fresh = rx.wait_for(|v| matches!(v, Validity::Until { renewed_at, .. } if *renewed_at > asked_at)) => fresh.is_ok(),
        }
    }

    /// For the renewing task: resolves when an immediate renewal is asked for.
    pub async fn renewal_requested(&self) {
        self.inner.renew_now.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn lost_fires_exactly_at_the_deadline() {
        let t0 = Instant::now();
        let clock = LeaseClock::new(t0, t0 + secs(9));
        let why = clock.lost().await;
        assert_eq!(Instant::now(), t0 + secs(9));
        assert!(why.contains("deadline"), "{why}");
        assert_eq!(clock.valid_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_push_the_deadline_and_late_answers_never_shorten_it() {
        let t0 = Instant::now();
        let clock = LeaseClock::new(t0, t0 + secs(9));
        let renewer = {
            let clock = clock.clone();
            tokio::spawn(async move {
                for i in 1..=3u64 {
                    tokio::time::sleep(secs(3)).await;
                    clock.renewed(t0 + secs(3 * i), t0 + secs(3 * i + 9));
                    // A late answer for an older request must not move the deadline back.
                    clock.renewed(t0, t0 + secs(1));
                }
            })
        };
        clock.lost().await;
        assert_eq!(Instant::now(), t0 + secs(18), "last renewal at 9 s + 9 s");
        renewer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn end_is_immediate_and_final() {
        let t0 = Instant::now();
        let clock = LeaseClock::new(t0, t0 + secs(60));
        let c2 = clock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(secs(2)).await;
            c2.end("lease not found");
            c2.renewed(Instant::now(), Instant::now() + secs(100));
        });
        assert_eq!(clock.lost().await, "lease not found");
        assert_eq!(Instant::now(), t0 + secs(2));
        assert_eq!(clock.valid_until(), None);
        assert_eq!(clock.lost().await, "lease not found");
    }

    #[tokio::test(start_paused = true)]
    async fn renew_fresh_waits_for_a_renewal_sent_after_the_request() {
        let t0 = Instant::now();
        let clock = LeaseClock::new(t0, t0 + secs(9));
        let renewer = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock.renewal_requested().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                let sent = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                clock.renewed(sent, sent + secs(9));
            })
        };
        tokio::time::sleep(secs(1)).await;
        assert!(clock.renew_fresh().await);
        assert_eq!(Instant::now(), t0 + secs(1) + Duration::from_millis(10));
        renewer.await.unwrap();

        // No renewal comes: the deadline decides.
        let clock = LeaseClock::new(Instant::now(), Instant::now() + secs(3));
        assert!(!clock.renew_fresh().await);
    }

    #[test]
    fn the_margin_is_a_tenth_of_the_ttl() {
        assert_eq!(safety_margin(secs(10)), secs(1));
    }
}
