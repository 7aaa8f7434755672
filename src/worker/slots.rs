//! The execution slots of a worker: a weighted, resizable, first-come-first-served semaphore. The
//! capacity is the worker's `concurrency` (resized by each ping answer); a task takes its weight
//! (1.0 unless the server re-weighted it) and may be re-weighted while it holds its permit.
//! A task heavier than the whole capacity runs alone rather than never.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Tolerance for sums of fractional weights.
const EPSILON: f64 = 1e-9;

pub struct Slots {
    state: Mutex<State>,
}

struct State {
    capacity: f64,
    used: f64,
    queue: VecDeque<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    weight: f64,
    tx: oneshot::Sender<Permit>,
}

/// A share of the slots, given back when dropped.
pub struct Permit {
    slots: Arc<Slots>,
    weight: f64,
    armed: bool,
}

impl State {
    fn fits(&self, weight: f64) -> bool {
        self.capacity > EPSILON
            && (self.used + weight <= self.capacity + EPSILON || self.used <= EPSILON)
    }
}

impl Slots {
    pub fn new(capacity: f64) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                capacity,
                used: 0.0,
                queue: VecDeque::new(),
                next_id: 0,
            }),
        })
    }

    /// Capacity and weight in use.
    pub fn usage(&self) -> (f64, f64) {
        let st = self.state.lock().unwrap();
        (st.capacity, st.used)
    }

    pub fn resize(self: &Arc<Self>, capacity: f64) {
        let mut st = self.state.lock().unwrap();
        st.capacity = capacity.max(0.0);
        self.grant(&mut st);
    }

    /// Waits for `weight` of free capacity, behind the tasks that asked before. Cancel-safe: a
    /// dropped wait leaves the queue.
    pub async fn acquire(self: &Arc<Self>, weight: f64) -> Permit {
        let weight = weight.max(0.0);
        let (rx, id) = {
            let mut st = self.state.lock().unwrap();
            let id = st.next_id;
            st.next_id += 1;
            let (tx, rx) = oneshot::channel();
            st.queue.push_back(Waiter { id, weight, tx });
            self.grant(&mut st);
            (rx, id)
        };
        let mut guard = LeaveQueue {
            slots: Some(self.clone()),
            id,
        };
        let permit = rx
            .await
            .expect("a waiter is only removed by its own guard or by a grant");
        guard.slots = None;
        permit
    }

    /// Hands out permits from the head of the queue while they fit.
    fn grant(self: &Arc<Self>, st: &mut State) {
        while let Some(front) = st.queue.front() {
            if !st.fits(front.weight) {
                break;
            }
            let waiter = st.queue.pop_front().expect("front exists");
            st.used += waiter.weight;
            let permit = Permit {
                slots: self.clone(),
                weight: waiter.weight,
                armed: true,
            };
            if let Err(mut unsent) = waiter.tx.send(permit) {
                // The waiter went away: take the share back without re-entering the lock.
                unsent.armed = false;
                st.used -= waiter.weight;
            }
        }
    }
}

/// Removes an abandoned wait from the queue (disarmed once the permit arrived).
struct LeaveQueue {
    slots: Option<Arc<Slots>>,
    id: u64,
}

impl Drop for LeaveQueue {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            let mut st = slots.state.lock().unwrap();
            st.queue.retain(|w| w.id != self.id);
            // Leaving may unblock the waiters behind.
            slots.grant(&mut st);
        }
    }
}

impl Permit {
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// Changes the share this permit holds (the server re-weighted the task).
    pub fn set_weight(&mut self, weight: f64) {
        let weight = weight.max(0.0);
        let mut st = self.slots.state.lock().unwrap();
        st.used += weight - self.weight;
        self.weight = weight;
        self.slots.grant(&mut st);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.slots.state.lock().unwrap();
        st.used = (st.used - self.weight).max(0.0);
        self.slots.grant(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn try_acquire(slots: &Arc<Slots>, weight: f64) -> Option<Permit> {
        tokio::time::timeout(Duration::from_millis(20), slots.acquire(weight))
            .await
            .ok()
    }

    #[tokio::test]
    async fn never_over_capacity_and_fifo() {
        let slots = Slots::new(2.0);
        let a = try_acquire(&slots, 1.0).await.unwrap();
        let _b = try_acquire(&slots, 1.0).await.unwrap();
        assert!(try_acquire(&slots, 1.0).await.is_none());
        assert_eq!(slots.usage(), (2.0, 2.0));
        drop(a);
        assert_eq!(slots.usage().1, 1.0);
        let _c = try_acquire(&slots, 1.0).await.unwrap();
        assert_eq!(slots.usage().1, 2.0);
    }

    #[tokio::test]
    async fn resize_up_and_down() {
        let slots = Slots::new(1.0);
        let a = try_acquire(&slots, 1.0).await.unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(1.0).await }
        });
        tokio::task::yield_now().await;
        slots.resize(2.0);
        let b = waiting.await.unwrap();
        slots.resize(1.0);
        drop(a);
        // Still 1.0 in use for a capacity of 1.0: nothing more fits.
        assert!(try_acquire(&slots, 0.5).await.is_none());
        drop(b);
        assert!(try_acquire(&slots, 0.5).await.is_some());
        slots.resize(0.0);
        assert!(
            try_acquire(&slots, 0.5).await.is_none(),
            "capacity 0 runs nothing"
        );
    }

    #[tokio::test]
    async fn fractional_weights_and_reweighting() {
        let slots = Slots::new(1.0);
        let mut a = try_acquire(&slots, 0.5).await.unwrap();
        let _b = try_acquire(&slots, 0.5).await.unwrap();
        assert!(try_acquire(&slots, 0.25).await.is_none());
        a.set_weight(0.25);
        let _c = try_acquire(&slots, 0.25).await.unwrap();
        assert!((slots.usage().1 - 1.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn oversized_task_runs_alone() {
        let slots = Slots::new(1.0);
        let big = try_acquire(&slots, 3.0).await.unwrap();
        assert!(try_acquire(&slots, 0.1).await.is_none());
        drop(big);
        assert!(try_acquire(&slots, 0.1).await.is_some());
    }

    #[tokio::test]
    async fn abandoned_waits_leave_the_queue() {
        let slots = Slots::new(1.0);
        let a = try_acquire(&slots, 1.0).await.unwrap();
        assert!(try_acquire(&slots, 1.0).await.is_none()); // times out, leaves the queue
        drop(a);
        assert_eq!(slots.usage().1, 0.0);
        assert!(try_acquire(&slots, 1.0).await.is_some());
    }
}
