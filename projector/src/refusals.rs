//! The broker's refusals as alerts (pure).
//!
//! A refused event never reaches the log, so the fold cannot see it; the broker journals it
//! and publishes it on `pairbus/v1/rejected/<kind>/<id>` (both planes for a device). The
//! projectors turn each into an [`Alert`] with `seq` 0 (not a log position) and `at` the time
//! of the refusal, and merge them into their alerts ([`crate::query::merge_refusals`]):
//!
//! - `seq_conflict` (a principal's `seq` reused by a different event) becomes the alert code
//!   `seq_conflict`, "possible cloned device": the signature of a cloned device key;
//! - every other reason (`malformed`, `too_large`, `bad_mac`, `unknown_kid`, `revoked`,
//!   `topic_mismatch`) becomes the code `rejected`, the reason leading the detail.

use crate::model::{Alert, Code};
use pairbus_schemas::messages::{RejectReason, Rejection};
use pairbus_schemas::Kid;

/// The alert for `rejection` of an event that came on `principal`'s topic at `at` (Unix ms).
pub fn alert(principal: &Kid, rejection: &Rejection, at: u64) -> Alert {
    let id = rejection
        .event_id
        .as_deref()
        .map(|id| format!(" (event {id})"))
        .unwrap_or_default();
    let (code, detail) = match rejection.reason {
        RejectReason::SeqConflict => (
            Code::SeqConflict,
            format!(
                "possible cloned device: the broker refused an event of {principal}: {}{id}",
                rejection.detail
            ),
        ),
        reason => (
            Code::Rejected,
            format!(
                "the broker refused an event of {principal}: {reason}: {}{id}",
                rejection.detail
            ),
        ),
    };
    Alert {
        seq: 0,
        at,
        code,
        device: principal.device_id(),
        src: Some(principal.clone()),
        event_type: None,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{merge_refusals, Response, Stats};

    fn at(code: Code, seq: u64, at: u64) -> Alert {
        Alert {
            seq,
            at,
            code,
            device: None,
            src: None,
            event_type: None,
            detail: String::new(),
        }
    }

    #[test]
    fn refusals_are_merged_by_time_and_counted() {
        let log = vec![at(Code::SeqGap, 1, 10), at(Code::LogGap, 2, 20)];
        let refused = vec![at(Code::Rejected, 0, 5), at(Code::SeqConflict, 0, 20)];
        let mut r = Response::Alerts(log);
        merge_refusals(&mut r, &refused);
        let Response::Alerts(v) = r else {
            panic!("alerts")
        };
        let order: Vec<(u64, u64)> = v.iter().map(|a| (a.seq, a.at)).collect();
        // By time; on a tie the log's alert first.
        assert_eq!(order, vec![(0, 5), (1, 10), (2, 20), (0, 20)]);
        let mut s = Response::Stats(Stats {
            last_seq: 2,
            actions: Default::default(),
            devices: Default::default(),
            alerts: [("seq_gap".to_owned(), 1)].into_iter().collect(),
            undecodable: 0,
        });
        merge_refusals(&mut s, &refused);
        let Response::Stats(s) = s else {
            panic!("stats")
        };
        assert_eq!(s.alerts["seq_gap"], 1);
        assert_eq!(s.alerts["rejected"], 1);
        assert_eq!(s.alerts["seq_conflict"], 1);
    }

    #[test]
    fn seq_conflicts_are_flagged_as_possible_clones() {
        let kid = Kid::parse("device:0123456789abcdef").unwrap();
        let r = Rejection {
            reason: RejectReason::SeqConflict,
            detail: "seq 3 taken".into(),
            event_id: Some("00ff".into()),
        };
        let a = alert(&kid, &r, 42);
        assert_eq!((a.seq, a.at, a.code), (0, 42, Code::SeqConflict));
        assert_eq!(a.device.as_ref().unwrap().as_str(), "0123456789abcdef");
        assert!(a.detail.contains("possible cloned device"), "{}", a.detail);
        assert!(a.detail.contains("00ff"));
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["code"], "seq_conflict");
        let op = Kid::parse("operator:eve").unwrap();
        let r = Rejection {
            reason: RejectReason::BadMac,
            detail: "MAC does not verify".into(),
            event_id: None,
        };
        let a = alert(&op, &r, 7);
        assert_eq!(a.code, Code::Rejected);
        assert_eq!(a.device, None);
        assert!(a.detail.contains("bad_mac"), "{}", a.detail);
    }
}
