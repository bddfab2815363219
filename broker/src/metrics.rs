//! Counters of everything the broker accepts and refuses, rendered as Prometheus text.
//!
//! Every refusal (CONNECT or event) is counted by reason, so an operator can see attacks and
//! broken devices without reading logs.

use crate::mqtt::gate::Gate;
use pairbus_schemas::messages::RejectReason;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A Prometheus histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations in micro-units (values × 1e6), to stay in integers.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];
const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The broker's counters. Cheap to update from any thread.
pub struct Metrics {
    /// Events read from `in/` topics.
    pub received: AtomicU64,
    /// Events appended (new records).
    pub committed: AtomicU64,
    /// Re-sent events answered `already_committed`.
    pub already_committed: AtomicU64,
    /// Group commits made.
    pub batches: AtomicU64,
    /// Group commits that failed (nothing of them acknowledged).
    pub commit_errors: AtomicU64,
    /// Events the MQTT router acknowledged (PUBACK) but dropped before ingest read them.
    pub router_dropped: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    auth_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// CONNECTs accepted.
    pub auth_accepted: AtomicU64,
    /// Replay requests answered.
    pub replays: AtomicU64,
    /// Replay requests refused.
    pub replays_refused: AtomicU64,
    /// CONNECTs accepted on the device plane.
    pub device_connects: AtomicU64,
    /// CONNECTs accepted on the operator plane.
    pub operator_connects: AtomicU64,
    /// The embedded projections' checkpoint at start (the log position they resumed from;
    /// 0 when they were rebuilt from genesis).
    pub projections_resumed_from: AtomicU64,
    /// Records the embedded projector folded at start to reach the log's head.
    pub projections_folded_at_start: AtomicU64,
    /// Client connections open now on the device plane (kept by its front door).
    pub device_open: Arc<AtomicU64>,
    /// Client connections open now on the operator plane.
    pub operator_open: Arc<AtomicU64>,
    /// The ingest back-pressure gate, once the bus has made it.
    pub backpressure: OnceLock<Gate>,
    /// Events per group commit.
    pub batch_size: Histogram,
    /// Time of one group commit (append, flush and sync), seconds.
    pub commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            received: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            already_committed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            commit_errors: AtomicU64::new(0),
            router_dropped: AtomicU64::new(0),
            rejected: Mutex::default(),
            auth_refused: Mutex::default(),
            auth_accepted: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            replays_refused: AtomicU64::new(0),
            device_connects: AtomicU64::new(0),
            operator_connects: AtomicU64::new(0),
            projections_resumed_from: AtomicU64::new(0),
            projections_folded_at_start: AtomicU64::new(0),
            device_open: Arc::default(),
            operator_open: Arc::default(),
            backpressure: OnceLock::new(),
            batch_size: Histogram::new(BATCH_BOUNDS),
            commit_seconds: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    // A poisoned lock only means another thread panicked mid-increment: keep counting.
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(key).or_default() += 1;
}

fn snapshot(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Metrics {
    /// Counts one refused event.
    pub fn reject(&self, reason: RejectReason) {
        bump(&self.rejected, reason.as_str());
    }

    /// Counts one refused CONNECT.
    pub fn refuse_connect(&self, label: &'static str) {
        bump(&self.auth_refused, label);
    }

    /// Refused events by reason code.
    pub fn rejected(&self) -> BTreeMap<&'static str, u64> {
        snapshot(&self.rejected)
    }

    /// Refused CONNECTs by reason.
    pub fn auth_refused(&self) -> BTreeMap<&'static str, u64> {
        snapshot(&self.auth_refused)
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, v) in [
            (
                "pairbus_events_received_total",
                "Events read from in/ topics.",
                load(&self.received),
            ),
            (
                "pairbus_events_committed_total",
                "Events appended durably.",
                load(&self.committed),
            ),
            (
                "pairbus_events_already_committed_total",
                "Re-sent events stored once.",
                load(&self.already_committed),
            ),
            (
                "pairbus_group_commits_total",
                "Group commits.",
                load(&self.batches),
            ),
            (
                "pairbus_group_commit_errors_total",
                "Failed group commits.",
                load(&self.commit_errors),
            ),
            (
                "pairbus_ingest_router_dropped_total",
                "Events acknowledged by the MQTT router but dropped before ingest read them.",
                load(&self.router_dropped),
            ),
            (
                "pairbus_connects_accepted_total",
                "Accepted MQTT CONNECTs.",
                load(&self.auth_accepted),
            ),
            (
                "pairbus_replays_total",
                "Replay requests answered.",
                load(&self.replays),
            ),
            (
                "pairbus_replays_refused_total",
                "Replay requests refused.",
                load(&self.replays_refused),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gate = self.backpressure.get();
        for (name, help, v) in [
            (
                "pairbus_ingest_pending",
                "Events read from the routers and not yet committed or refused.",
                gate.map_or(0, |g| g.pending() as u64),
            ),
            (
                "pairbus_projections_resumed_from_seq",
                "Checkpoint the embedded projections resumed from at start (0: rebuilt).",
                load(&self.projections_resumed_from),
            ),
            (
                "pairbus_projections_folded_at_start",
                "Records folded at start to reach the log's head.",
                load(&self.projections_folded_at_start),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP pairbus_ingest_backpressure_pauses_total Times the front doors stopped reading \
             from clients because ingest was behind.\n\
             # TYPE pairbus_ingest_backpressure_pauses_total counter\n\
             pairbus_ingest_backpressure_pauses_total {}",
            gate.map_or(0, |g| g.pauses())
        );
        let _ = writeln!(
            out,
            "# HELP pairbus_connections_open Client connections open now.\n\
             # TYPE pairbus_connections_open gauge\n\
             pairbus_connections_open{{plane=\"device\"}} {}\n\
             pairbus_connections_open{{plane=\"operator\"}} {}",
            load(&self.device_open),
            load(&self.operator_open)
        );
        let labelled =
            |out: &mut String, name: &str, help: &str, label: &str, values: Vec<(&str, u64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (l, n) in values {
                    let _ = writeln!(out, "{name}{{{label}=\"{l}\"}} {n}");
                }
            };
        labelled(
            &mut out,
            "pairbus_connects_accepted_by_plane_total",
            "Accepted MQTT CONNECTs by plane.",
            "plane",
            vec![
                ("device", load(&self.device_connects)),
                ("operator", load(&self.operator_connects)),
            ],
        );
        labelled(
            &mut out,
            "pairbus_events_rejected_total",
            "Refused events by reason.",
            "reason",
            self.rejected().into_iter().collect(),
        );
        labelled(
            &mut out,
            "pairbus_connects_refused_total",
            "Refused MQTT CONNECTs by reason.",
            "reason",
            self.auth_refused().into_iter().collect(),
        );
        self.batch_size.render(
            &mut out,
            "pairbus_group_commit_events",
            "Events per group commit.",
        );
        self.commit_seconds.render(
            &mut out,
            "pairbus_group_commit_seconds",
            "Duration of one durable group commit (append, flush, fdatasync).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_by_reason() {
        let m = Metrics::default();
        m.reject(RejectReason::BadMac);
        m.reject(RejectReason::BadMac);
        m.refuse_connect("token_expired");
        m.committed.fetch_add(3, Ordering::Relaxed);
        m.batch_size.observe(3.0);
        m.commit_seconds.observe(0.004);
        let text = m.render();
        assert!(
            text.contains("pairbus_group_commit_events_bucket{le=\"2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("pairbus_group_commit_events_bucket{le=\"4\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pairbus_group_commit_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pairbus_group_commit_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("pairbus_events_rejected_total{reason=\"bad_mac\"} 2"),
            "{text}"
        );
        assert!(text.contains("pairbus_connects_refused_total{reason=\"token_expired\"} 1"));
        assert!(text.contains("pairbus_events_committed_total 3"));
    }
}
