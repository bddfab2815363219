//! Counters of everything the broker accepts and refuses, rendered as Prometheus text.
//!
//! Every refusal (CONNECT or event) is counted by reason, so an operator can see attacks and
//! broken devices without reading logs.

use pairbus_schemas::messages::RejectReason;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The broker's counters. Cheap to update from any thread.
#[derive(Default)]
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
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    auth_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// CONNECTs accepted.
    pub auth_accepted: AtomicU64,
    /// Replay requests answered.
    pub replays: AtomicU64,
    /// Replay requests refused.
    pub replays_refused: AtomicU64,
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
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "pairbus_events_received_total",
            "Events read from in/ topics.",
            self.received.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_events_committed_total",
            "Events appended durably.",
            self.committed.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_events_already_committed_total",
            "Re-sent events stored once.",
            self.already_committed.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_group_commits_total",
            "Group commits.",
            self.batches.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_group_commit_errors_total",
            "Failed group commits.",
            self.commit_errors.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_connects_accepted_total",
            "Accepted MQTT CONNECTs.",
            self.auth_accepted.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_replays_total",
            "Replay requests answered.",
            self.replays.load(Ordering::Relaxed),
        );
        counter(
            "pairbus_replays_refused_total",
            "Replay requests refused.",
            self.replays_refused.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP pairbus_events_rejected_total Refused events by reason.\n# TYPE pairbus_events_rejected_total counter");
        for (reason, n) in self.rejected() {
            let _ = writeln!(
                out,
                "pairbus_events_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP pairbus_connects_refused_total Refused MQTT CONNECTs by reason.\n# TYPE pairbus_connects_refused_total counter");
        for (reason, n) in self.auth_refused() {
            let _ = writeln!(
                out,
                "pairbus_connects_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
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
        let text = m.render();
        assert!(
            text.contains("pairbus_events_rejected_total{reason=\"bad_mac\"} 2"),
            "{text}"
        );
        assert!(text.contains("pairbus_connects_refused_total{reason=\"token_expired\"} 1"));
        assert!(text.contains("pairbus_events_committed_total 3"));
    }
}
