//! Back-pressure from ingest to the MQTT listeners.
//!
//! rumqttd 0.20 acknowledges a QoS 1 publish (PUBACK) as soon as it is in its router's memory,
//! before ingest has read it, and it has no way to delay that PUBACK. Under a flood the router's
//! log of the `in/` filters then fills faster than the group commits drain it, and rumqttd
//! drops its oldest segment: events acknowledged and lost (BENCHMARKS.md, "Broker under MQTT
//! load"). The [`Gate`] closes that loop one layer lower: ingest counts the events it has taken
//! from the router but not yet committed ([`Gate::admitted`], [`Gate::settled`]); when that
//! backlog reaches `pause_at` the gate closes and the front doors ([`super::front`]) stop
//! reading from client sockets until it is back down to `resume_at`. TCP flow control does the
//! rest: a publisher's socket buffer fills and its `publish` waits. Nothing is dropped; a flood
//! is slowed to the speed of the durable commits.
//!
//! The decision ([`Hysteresis`]) is pure; [`Gate`] adds the locking and the wake-ups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The pure state of the gate: a backlog count with two thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pending: usize,
    open: bool,
    pause_at: usize,
    resume_at: usize,
}

impl Hysteresis {
    /// An open gate with nothing pending. `resume_at` is lowered below `pause_at` if needed
    /// (and `pause_at` raised to at least 1), so the gate can always reopen.
    pub fn new(pause_at: usize, resume_at: usize) -> Self {
        let pause_at = pause_at.max(1);
        Hysteresis {
            pending: 0,
            open: true,
            pause_at,
            resume_at: resume_at.min(pause_at - 1),
        }
    }

    /// `n` more events are waiting. Returns `Some(false)` if this closes the gate.
    pub fn add(&mut self, n: usize) -> Option<bool> {
        self.pending = self.pending.saturating_add(n);
        self.settle()
    }

    /// `n` events are done with (committed or refused). Returns `Some(true)` if this opens the
    /// gate. Removing more than is pending counts down to zero.
    pub fn remove(&mut self, n: usize) -> Option<bool> {
        self.pending = self.pending.saturating_sub(n);
        self.settle()
    }

    fn settle(&mut self) -> Option<bool> {
        let open = if self.open {
            self.pending < self.pause_at
        } else {
            self.pending <= self.resume_at
        };
        (open != self.open).then(|| {
            self.open = open;
            open
        })
    }

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether the listeners may read.
    pub fn is_open(&self) -> bool {
        self.open
    }
}

/// Shared back-pressure gate (cheap to clone). See the module docs.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<Hysteresis>,
    open_tx: watch::Sender<bool>,
    pauses: AtomicU64,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("state", &*self.lock())
            .field("pauses", &self.pauses())
            .finish()
    }
}

impl Gate {
    /// An open gate that closes at `pause_at` pending events and reopens at `resume_at`.
    pub fn new(pause_at: usize, resume_at: usize) -> Self {
        let (open_tx, _) = watch::channel(true);
        Gate {
            inner: Arc::new(Inner {
                state: Mutex::new(Hysteresis::new(pause_at, resume_at)),
                open_tx,
                pauses: AtomicU64::new(0),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hysteresis> {
        // The state is a pair of numbers, valid after any panic: keep using it.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, change: impl FnOnce(&mut Hysteresis) -> Option<bool>) {
        let mut state = self.lock();
        if let Some(open) = change(&mut state) {
            if !open {
                self.inner.pauses.fetch_add(1, Ordering::Relaxed);
            }
            // Under the lock, so the watched value always follows the state's order.
            self.inner.open_tx.send_replace(open);
        }
    }

    /// Ingest took `n` events from the router.
    pub fn admitted(&self, n: usize) {
        self.apply(|s| s.add(n));
    }

    /// Ingest is done with `n` events (committed, refused or failed).
    pub fn settled(&self, n: usize) {
        self.apply(|s| s.remove(n));
    }

    /// Events taken but not yet done with.
    pub fn pending(&self) -> usize {
        self.lock().pending()
    }

    /// Whether the listeners may read now.
    pub fn is_open(&self) -> bool {
        self.lock().is_open()
    }

    /// How many times the gate has closed.
    pub fn pauses(&self) -> u64 {
        self.inner.pauses.load(Ordering::Relaxed)
    }

    /// A handle for waiting until the gate is open.
    pub fn waiter(&self) -> GateWaiter {
        GateWaiter(self.inner.open_tx.subscribe())
    }
}

/// Waits for a [`Gate`] to be open (one per reading task).
pub struct GateWaiter(watch::Receiver<bool>);

impl GateWaiter {
    /// Returns at once if the gate is open, else when it opens.
    pub async fn open(&mut self) {
        // The sender lives as long as the gate; if it is gone, nothing can close it any more.
        let _ = self.0.wait_for(|open| *open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn closes_at_pause_and_reopens_at_resume() {
        let mut h = Hysteresis::new(10, 4);
        assert_eq!(h.add(9), None);
        assert!(h.is_open());
        assert_eq!(h.add(1), Some(false));
        assert_eq!(h.add(5), None);
        assert_eq!(h.remove(10), None, "5 pending is above resume_at");
        assert!(!h.is_open());
        assert_eq!(h.remove(1), Some(true));
        assert_eq!(h.pending(), 4);
        assert_eq!(h.remove(100), None);
        assert_eq!(h.pending(), 0);
    }

    #[test]
    fn thresholds_are_made_consistent() {
        let mut h = Hysteresis::new(0, 5);
        assert_eq!(h.add(1), Some(false));
        assert_eq!(h.remove(1), Some(true), "resume_at was lowered to 0");
    }

    proptest! {
        /// Whatever the sequence, the gate is closed iff it crossed `pause_at` and has not yet
        /// come back down to `resume_at`; `pending` is the saturating sum; every reported
        /// change is a real change.
        #[test]
        fn hysteresis_follows_its_definition(
            pause_at in 1usize..50,
            gap in 1usize..50,
            steps in proptest::collection::vec((any::<bool>(), 0usize..30), 0..200),
        ) {
            let resume_at = pause_at.saturating_sub(gap);
            let mut h = Hysteresis::new(pause_at, resume_at);
            let (mut pending, mut open) = (0usize, true);
            for (add, n) in steps {
                let before = h.is_open();
                let change = if add { h.add(n) } else { h.remove(n) };
                pending = if add { pending + n } else { pending.saturating_sub(n) };
                if open && pending >= pause_at { open = false; }
                if !open && pending <= resume_at { open = true; }
                prop_assert_eq!(h.pending(), pending);
                prop_assert_eq!(h.is_open(), open);
                prop_assert_eq!(change, (before != open).then_some(open));
            }
        }
    }

    #[tokio::test]
    async fn waiters_wake_when_the_gate_reopens() {
        let gate = Gate::new(2, 0);
        let mut w = gate.waiter();
        w.open().await; // open: returns at once
        gate.admitted(2);
        assert!(!gate.is_open());
        let g2 = gate.clone();
        let waiting = tokio::spawn(async move {
            w.open().await;
            g2.pending()
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a closed gate must hold its waiters"
        );
        gate.settled(2);
        let pending = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(pending, 0);
        assert_eq!(gate.pauses(), 1);
    }
}
