//! Property tests over random event streams, valid and hostile, really signed and chained.

use pairbus_projector::fold::{Config, Projector};
use pairbus_projector::graph::check_invariants;
use pairbus_projector::testkit::{device, LogBuilder};
use pairbus_projector::Projections;
use pairbus_schemas::event::{ModeChanged, PairingEnded};
use pairbus_schemas::{Body, EventId, Record};
use proptest::prelude::*;

/// Few devices, few nonces, few commands: collisions (reuse, wrong parties, cycles) are common.
const DEVICES: u32 = 5;

#[derive(Debug, Clone)]
enum Op {
    Manufacture(u32),
    Activate(u32, bool),
    Prove(u32),
    Setup(u32, bool),
    Request(u32, u32),
    Offer(u32, u32, usize, bool),
    Accept(u32, u32, usize),
    Decline(u32, usize),
    Unpair(u32, u32),
    Standalone(u32),
    Command(u32, u32, bool),
    Complete(u32, usize),
    Revoke(u32),
    Advance(u64),
    Garbage,
    Gap(u32),
    Configure(u32),
    Pair(u32, u32, usize),
}

fn dev() -> impl Strategy<Value = u32> {
    1..=DEVICES
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => dev().prop_map(Op::Manufacture),
        3 => (dev(), prop::bool::weighted(0.2)).prop_map(|(d, f)| Op::Activate(d, f)),
        3 => dev().prop_map(Op::Prove),
        1 => (dev(), any::<bool>()).prop_map(|(d, ok)| Op::Setup(d, ok)),
        4 => (dev(), dev()).prop_map(|(m, s)| Op::Request(m, s)),
        4 => (dev(), dev(), 0..4usize, prop::bool::weighted(0.1)).prop_map(|(m, s, n, e)| Op::Offer(m, s, n, e)),
        4 => (dev(), dev(), 0..4usize).prop_map(|(s, m, n)| Op::Accept(s, m, n)),
        1 => (dev(), 0..4usize).prop_map(|(d, n)| Op::Decline(d, n)),
        2 => (dev(), dev()).prop_map(|(a, b)| Op::Unpair(a, b)),
        1 => dev().prop_map(Op::Standalone),
        2 => (dev(), dev(), prop::bool::weighted(0.2)).prop_map(|(a, b, e)| Op::Command(a, b, e)),
        2 => (dev(), 0..4usize).prop_map(|(d, c)| Op::Complete(d, c)),
        1 => dev().prop_map(Op::Revoke),
        1 => prop_oneof![Just(1_000u64), Just(700_000), Just(25 * 3600 * 1000)].prop_map(Op::Advance),
        1 => Just(Op::Garbage),
        1 => dev().prop_map(Op::Gap),
        6 => dev().prop_map(Op::Configure),
        8 => (dev(), dev(), 0..4usize).prop_map(|(m, s, n)| Op::Pair(m, s, n)),
    ]
}

/// The log of `ops`, after configuring devices 1 to `configured` (so that pairing is reachable).
fn build(configured: u32, ops: &[Op]) -> LogBuilder {
    let mut log = LogBuilder::new();
    for n in 1..=configured {
        log.configured(n, "alice");
    }
    let nonces: Vec<[u8; 16]> = (0..4).map(|i| [i as u8 + 1; 16]).collect();
    let mut commands: Vec<EventId> = Vec::new();
    for op in ops {
        match *op {
            Op::Manufacture(n) => {
                log.manufacture(n);
            }
            Op::Activate(n, forged) => {
                log.activate(n, "alice", forged);
            }
            Op::Prove(n) => {
                log.action(&device(n), "login");
            }
            Op::Setup(n, ok) => {
                log.setup(&device(n), if ok { "alice" } else { "mallory" });
            }
            Op::Request(m, s) => {
                log.request(&device(m), &device(s));
            }
            Op::Offer(m, s, i, expired) => {
                log.offer(
                    &device(m),
                    &device(s),
                    nonces[i],
                    if expired { 0 } else { 600_000 },
                );
            }
            Op::Accept(s, m, i) => {
                log.accept(&device(s), &device(m), nonces[i]);
            }
            Op::Decline(d, i) => {
                let d = device(d);
                log.push(
                    &d.kid(),
                    &d,
                    Body::PairingDeclined(PairingEnded {
                        nonce: nonces[i],
                        reason: "no".into(),
                    }),
                );
            }
            Op::Unpair(a, b) => {
                log.unpair(&device(a), &device(b));
            }
            Op::Standalone(n) => {
                log.standalone(&device(n));
            }
            Op::Command(a, b, expired) => {
                let e = log.command(&device(a), &device(b), if expired { 0 } else { 60_000 });
                commands.push(e.id);
            }
            Op::Complete(d, i) => {
                let id = commands.get(i).copied().unwrap_or(EventId([9; 16]));
                log.complete(&device(d), id);
            }
            Op::Revoke(n) => {
                log.revoke(&device(n));
            }
            Op::Advance(ms) => log.advance(ms),
            Op::Garbage => log.push_raw(vec![0xd1, 0x84, 0x40, 0xa0]),
            Op::Configure(n) => {
                log.configured(n, "alice");
            }
            Op::Pair(m, s, i) => {
                let (m, s) = (device(m), device(s));
                log.request(&m, &s);
                // Mostly a fresh nonce, sometimes one of the shared pool (reuse).
                let n = if i == 0 { nonces[0] } else { log.nonce() };
                log.offer(&m, &s, n, 600_000);
                log.accept(&s, &m, n);
            }
            Op::Gap(n) => {
                let d = device(n);
                log.push_with(&d.kid(), &d, Body::ModeChanged(ModeChanged), 2);
            }
        }
    }
    log
}

fn projector(log: &LogBuilder) -> Projector {
    Projector::new(Config::default(), log.root())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Incremental application (with re-delivered records mixed in) equals a full rebuild,
    /// and the pairing-graph invariants hold after every record.
    #[test]
    fn incremental_equals_rebuild_and_invariants_hold(
        configured in 0..=4u32,
        ops in prop::collection::vec(op(), 1..80),
        redeliver in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let log = build(configured, &ops);
        let pr = projector(&log);
        let mut p = Projections::new();
        let mut max_edges = 0;
        for (i, r) in log.records.iter().enumerate() {
            pr.apply(&mut p, r);
            if std::env::var_os("PROP_STATS").is_some() {
                max_edges = max_edges.max(pairbus_projector::graph::graph(&p).edges.len());
            }
            if let Err(e) = check_invariants(&p) {
                return Err(TestCaseError::fail(format!("after record {}: {e}", i + 1)));
            }
            for ix in &redeliver {
                let old = &log.records[ix.index(i + 1)];
                prop_assert!(pr.apply(&mut p, old).is_empty());
            }
        }
        let full = pr.rebuild(&log.records);
        prop_assert_eq!(&p, &full);
        if std::env::var_os("PROP_STATS").is_some() {
            eprintln!("edges {max_edges} alerts {:?}", full.alerts.iter().map(|a| a.code).collect::<Vec<_>>());
        }
        // Every record is on some trail, refused or not.
        let on_trails: std::collections::BTreeSet<u64> = full
            .trails
            .values()
            .flat_map(|t| t.iter())
            .chain(full.unattributed.iter().cloned())
            .map(|e| e.seq)
            .collect();
        prop_assert_eq!(on_trails.len(), log.records.len());
    }

    /// The state as of seq N, taken during an incremental fold, equals the fold of the prefix.
    #[test]
    fn as_of_replay_equals_fold_of_the_prefix(
        configured in 0..=4u32,
        ops in prop::collection::vec(op(), 1..60),
        at in any::<prop::sample::Index>(),
    ) {
        let log = build(configured, &ops);
        // Some op lists make no record at all (e.g. only `Advance`): no prefix to take.
        prop_assume!(!log.records.is_empty());
        let pr = projector(&log);
        let n = at.index(log.records.len()) + 1;
        let mut p = Projections::new();
        let mut snapshot = None;
        for r in &log.records {
            pr.apply(&mut p, r);
            if r.seq == n as u64 {
                snapshot = Some(p.clone());
            }
        }
        let prefix: Vec<Record> = log.records[..n].to_vec();
        prop_assert_eq!(snapshot.unwrap(), pr.rebuild(&prefix));
        prop_assert_eq!(
            pairbus_projector::query::as_of_seq(&pr, &log.records, n as u64),
            pr.rebuild(&prefix)
        );
    }
}
