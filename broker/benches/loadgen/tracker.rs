//! Publish times of the events not yet stored, and latencies of those that were.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Publisher {
    pending: HashMap<u64, Instant>,
    latencies_us: Vec<u64>,
    /// Publish times (µs after the tracker's start) of the events in `latencies_us`.
    sent_at_us: Vec<u64>,
}

/// Shared by the publishers (who record sends) and the receivers (who record arrivals).
pub struct Tracker {
    publishers: Vec<Mutex<Publisher>>,
    /// Publish calls made.
    pub published: AtomicU64,
    /// Distinct events seen stored.
    pub stored: AtomicU64,
    /// Arrivals for an event already counted (or never sent).
    pub duplicates: AtomicU64,
    /// Refusals heard (pairbus `rejected/`).
    pub rejected: AtomicU64,
    start: Instant,
    last_stored_ns: AtomicU64,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Publish calls made.
    pub published: u64,
    /// Distinct events stored.
    pub stored: u64,
    /// `published − stored`.
    pub lost: u64,
    /// Duplicated arrivals.
    pub duplicates: u64,
    /// Refusals.
    pub rejected: u64,
    /// From the first publish to the last arrival.
    pub elapsed: Duration,
    /// Latency percentiles, ms: p50, p99, max.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

fn lock(m: &Mutex<Publisher>) -> std::sync::MutexGuard<'_, Publisher> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tracker {
    /// For `n` publishers, the clock starting now.
    pub fn new(n: usize) -> Self {
        Tracker {
            publishers: (0..n).map(|_| Mutex::default()).collect(),
            published: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            start: Instant::now(),
            last_stored_ns: AtomicU64::new(0),
        }
    }

    /// Publisher `p` is about to publish its event `seq`.
    pub fn sent(&self, p: usize, seq: u64) {
        lock(&self.publishers[p])
            .pending
            .insert(seq, Instant::now());
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Event `seq` of publisher `p` was seen stored now.
    pub fn stored(&self, p: usize, seq: u64) {
        let now = Instant::now();
        let Some(slot) = self.publishers.get(p) else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut s = lock(slot);
        match s.pending.remove(&seq) {
            Some(sent) => {
                s.latencies_us
                    .push(now.duration_since(sent).as_micros() as u64);
                let at = sent.saturating_duration_since(self.start).as_micros() as u64;
                s.sent_at_us.push(at);
                drop(s);
                self.stored.fetch_add(1, Ordering::Relaxed);
                self.last_stored_ns.fetch_max(
                    now.duration_since(self.start).as_nanos() as u64,
                    Ordering::Relaxed,
                );
            }
            None => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether everything published so far was stored.
    pub fn all_stored(&self) -> bool {
        self.stored.load(Ordering::Relaxed) >= self.published.load(Ordering::Relaxed)
    }

    /// Writes one line per stored event: publisher, publish time (µs after `first_publish`)
    /// and latency (µs), in arrival order per publisher. For finding when slow events were
    /// sent (a stall shows as a burst of them).
    pub fn write_latencies(
        &self,
        first_publish: Instant,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let offset = first_publish
            .saturating_duration_since(self.start)
            .as_micros() as u64;
        for (i, p) in self.publishers.iter().enumerate() {
            let p = lock(p);
            for (at, l) in p.sent_at_us.iter().zip(&p.latencies_us) {
                writeln!(out, "{i} {} {l}", at.saturating_sub(offset))?;
            }
        }
        Ok(())
    }

    /// The figures so far; `first_publish` is when the publishers started.
    pub fn summary(&self, first_publish: Instant) -> Summary {
        let mut lat: Vec<u64> = Vec::new();
        for p in &self.publishers {
            lat.extend_from_slice(&lock(p).latencies_us);
        }
        lat.sort_unstable();
        let pct = |q: f64| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i] as f64 / 1000.0
        };
        let published = self.published.load(Ordering::Relaxed);
        let stored = self.stored.load(Ordering::Relaxed);
        let last = self.start + Duration::from_nanos(self.last_stored_ns.load(Ordering::Relaxed));
        Summary {
            published,
            stored,
            lost: published.saturating_sub(stored),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            elapsed: last.saturating_duration_since(first_publish),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        }
    }
}
