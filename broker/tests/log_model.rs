//! Model-based property test: the sled store against a naive in-memory reference of the
//! rules (dedupe by id, revoked devices, principal seq conflicts), through batches, reads,
//! reopen and verify.

mod common;

use common::*;
use pairbus_broker::log::{AppendOutcome, LogStore, VerifiedEvent};
use proptest::prelude::*;

/// The naive reference: a list of committed events, searched linearly.
#[derive(Default)]
struct Model {
    committed: Vec<VerifiedEvent>,
}

impl Model {
    fn decide(&mut self, e: &VerifiedEvent) -> AppendOutcome {
        if let Some(i) = self.committed.iter().position(|c| c.id == e.id) {
            return AppendOutcome::AlreadyCommitted(i as u64 + 1);
        }
        let revoked = e.kid.device_id().is_some_and(|d| {
            self.committed
                .iter()
                .any(|c| c.revokes.as_ref() == Some(&d))
        });
        if revoked {
            return AppendOutcome::Revoked;
        }
        if let Some(c) = self
            .committed
            .iter()
            .find(|c| c.kid == e.kid && c.kid_seq == e.kid_seq)
        {
            return AppendOutcome::SeqConflict { existing: c.id };
        }
        self.committed.push(e.clone());
        AppendOutcome::Committed(pairbus_schemas::Record::chain(
            [0; 32],
            self.committed.len() as u64,
            0,
            Vec::new(),
        ))
    }
}

fn same(store: &AppendOutcome, model: &AppendOutcome) -> bool {
    match (store, model) {
        (AppendOutcome::Committed(a), AppendOutcome::Committed(b)) => a.seq == b.seq,
        (a, b) => a == b,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Action { dev: u64, kid_seq: u64, uniq: u64 },
    Revoke { dev: u64, op_seq: u64, uniq: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..4, 1u64..6, 0u64..40).prop_map(|(dev, kid_seq, uniq)| Op::Action { dev, kid_seq, uniq }),
        1 => (0u64..4, 1u64..4, 0u64..40).prop_map(|(dev, op_seq, uniq)| Op::Revoke { dev, op_seq, uniq: uniq + 1000 }),
    ]
}

fn event(op: &Op) -> VerifiedEvent {
    match *op {
        Op::Action { dev, kid_seq, uniq } => verified(&action(dev, kid_seq, uniq)),
        Op::Revoke { dev, op_seq, uniq } => verified(&revoke(dev, op_seq, uniq)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_reference(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..12), 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_with(dir.path(), 7, u64::MAX);
        let mut model = Model::default();
        for (b, batch) in batches.iter().enumerate() {
            let events: Vec<VerifiedEvent> = batch.iter().map(event).collect();
            let expected: Vec<AppendOutcome> = events.iter().map(|e| model.decide(e)).collect();
            let got = log.append_batch(events, b as u64).unwrap();
            prop_assert_eq!(got.len(), expected.len());
            for (g, x) in got.iter().zip(&expected) {
                prop_assert!(same(g, x), "store {:?} vs model {:?}", g, x);
            }
            if b == batches.len() / 2 {
                drop(log);
                log = open_with(dir.path(), 7, u64::MAX);
            }
        }
        let n = model.committed.len() as u64;
        prop_assert_eq!(log.head().seq, n);
        let all = log.range(1..n + 1).unwrap();
        prop_assert_eq!(all.len() as u64, n);
        for (r, e) in all.iter().zip(&model.committed) {
            prop_assert_eq!(&r.event, &e.bytes);
        }
        for dev in 0..4 {
            let d = device(dev);
            let want: Vec<u64> = model.committed.iter().enumerate()
                .filter(|(_, e)| e.device == d).map(|(i, _)| i as u64 + 1).collect();
            let got: Vec<u64> = log.by_device(&d, 0..u64::MAX).unwrap().iter().map(|r| r.seq).collect();
            prop_assert_eq!(got, want);
        }
        let report = log.verify().unwrap();
        prop_assert!(report.is_ok(), "{:?}", report);
        prop_assert_eq!(report.records, n);
    }
}
