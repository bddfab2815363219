//! Persistence: save/load round trip, and restarts (clean or after a crash) resume from the
//! checkpoint to the same projections as a full rebuild.

use pairbus_projector::fold::{Config, Projector};
use pairbus_projector::store::{Persistent, Store};
use pairbus_projector::testkit::LogBuilder;
use proptest::prelude::*;

/// A log with every kind of event, refusals, gaps and an undecodable record.
fn scenario() -> LogBuilder {
    let mut log = LogBuilder::new();
    let m = log.configured(1, "alice");
    let s = log.configured(2, "alice");
    let t = log.configured(3, "bob");
    log.pair(&m, &s);
    log.action(&m, "voice_recording");
    let c = log.command(&m, &s, 60_000);
    log.complete(&s, c.id);
    log.command(&t, &s, 60_000); // not its manager
    log.activate(1, "mallory", false); // second activation
    log.push_raw(b"garbage".to_vec());
    log.manufacture(4);
    log.activate(4, "carol", false); // left pending
    log.unpair(&s, &m);
    log.standalone(&s);
    log.revoke(&t);
    log.action(&t, "login"); // revoked
    let u = log.configured(5, "dave");
    let n = log.nonce();
    log.request(&m, &u);
    log.offer(&m, &u, n, 600_000); // left open
    log
}

fn projector(log: &LogBuilder) -> Projector {
    Projector::new(Config::default(), log.root())
}

#[test]
fn save_all_then_load_round_trips() {
    let log = scenario();
    let p = projector(&log).rebuild(&log.records);
    assert!(!p.alerts.is_empty() && !p.offers.is_empty() && !p.unattributed.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.checkpoint().unwrap(), None);
    store.save_all(&p).unwrap();
    assert_eq!(store.load().unwrap(), p);
    assert_eq!(store.checkpoint().unwrap(), Some((p.last_seq, p.last_hash)));
}

/// Runs the log through a persistent fold, stopping at `stop` (committing or crashing) and
/// resuming from the checkpoint after reopening.
fn run_with_restart(log: &LogBuilder, batch: usize, stop: usize, crash: bool) {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut pf = Persistent::open(projector(log), dir.path(), batch).unwrap();
        for r in &log.records[..stop] {
            pf.apply(r).unwrap();
        }
        if !crash {
            pf.commit().unwrap();
        }
    }
    let mut pf = Persistent::open(projector(log), dir.path(), batch).unwrap();
    let resumed_at = pf.next_seq();
    if crash {
        assert!(resumed_at as usize <= stop + 1);
        assert_eq!(resumed_at as usize - 1, stop / batch * batch);
    } else {
        assert_eq!(resumed_at as usize, stop + 1);
    }
    // The checkpointed state equals the fold of the prefix it claims.
    assert_eq!(
        pf.projections,
        projector(log).rebuild(&log.records[..resumed_at as usize - 1])
    );
    // Feeding again from an earlier position is harmless (re-delivery).
    for r in &log.records[(resumed_at as usize).saturating_sub(3)..] {
        pf.apply(r).unwrap();
    }
    pf.commit().unwrap();
    let full = projector(log).rebuild(&log.records);
    assert_eq!(pf.projections, full);
    drop(pf);
    assert_eq!(Store::open(dir.path()).unwrap().load().unwrap(), full);
}

#[test]
fn clean_restart_resumes_from_the_checkpoint() {
    let log = scenario();
    run_with_restart(&log, 5, log.records.len() / 2, false);
}

#[test]
fn crash_loses_only_the_unsaved_batch() {
    let log = scenario();
    run_with_restart(&log, 4, log.records.len() / 2 + 1, true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn restarts_anywhere_give_the_full_rebuild(stop in any::<prop::sample::Index>(), batch in 1..8usize, crash: bool) {
        let log = scenario();
        run_with_restart(&log, batch, stop.index(log.records.len() + 1), crash);
    }
}

#[test]
fn projections_can_live_in_the_brokers_database() {
    let log = scenario();
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let other = db.open_tree("log").unwrap();
    other.insert(b"x", b"y").unwrap();
    let mut pf =
        Persistent::with_store(projector(&log), Store::in_db(db.clone()).unwrap(), 3).unwrap();
    for r in &log.records {
        pf.apply(r).unwrap();
    }
    pf.commit().unwrap();
    let full = projector(&log).rebuild(&log.records);
    assert_eq!(Store::in_db(db.clone()).unwrap().load().unwrap(), full);
    assert_eq!(
        other.get(b"x").unwrap().as_deref(),
        Some(&b"y"[..]),
        "other trees untouched"
    );
}

/// A save bigger than one frame is split into several, which load back in order.
#[test]
fn a_big_save_spans_several_frames_and_loads_back() {
    let mut log = LogBuilder::new();
    let d = log.configured(1, "alice");
    for _ in 0..2_000 {
        log.action(&d, "login");
    }
    let p = projector(&log).rebuild(&log.records);
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let store = Store::in_db(db.clone()).unwrap();
    store.save_all(&p).unwrap();
    let frames = db
        .open_tree("projector")
        .unwrap()
        .scan_prefix(b"f/")
        .count();
    assert!(frames > 1, "2,000 entries in {frames} frame(s)");
    assert_eq!(store.load().unwrap(), p);
}

/// A table written by another format (format 1 kept one key per trail entry and no `v`;
/// format 2 kept the commands inside `k`) is not read as if it were this one: opening clears
/// it and the fold starts from genesis.
#[test]
fn a_table_in_an_older_format_is_cleared_and_rebuilt() {
    older_format_cleared(None);
    older_format_cleared(Some(b"2"));
}

fn older_format_cleared(version: Option<&[u8]>) {
    let log = scenario();
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("projector").unwrap();
    if let Some(v) = version {
        tree.insert(b"v", v).unwrap();
    }
    tree.insert(b"c", &br#"{"last_seq":5,"last_hash":"00"}"#[..])
        .unwrap();
    tree.insert(b"t/0000000000000001/\0\0\0\0\0\0\0\x01", &b"{}"[..])
        .unwrap();
    let store = Store::in_db(db.clone()).unwrap();
    assert!(!store.is_current_format().unwrap());
    let mut pf = Persistent::with_store(projector(&log), store.clone(), 4).unwrap();
    assert_eq!(pf.next_seq(), 1, "nothing of the old table is used");
    assert!(tree
        .get(b"t/0000000000000001/\0\0\0\0\0\0\0\x01")
        .unwrap()
        .is_none());
    for r in &log.records {
        pf.apply(r).unwrap();
    }
    pf.commit().unwrap();
    assert!(store.is_current_format().unwrap());
    assert_eq!(store.load().unwrap(), projector(&log).rebuild(&log.records));
}

/// A save writes its frames before its checkpoint. When it is interrupted between the two, the
/// frames past the checkpoint are not read (the store loads as of its checkpoint), they are
/// removed at open, and a later save that ends at the same seq loads back alone.
#[test]
fn an_interrupted_saves_frames_are_ignored_and_removed() {
    let log = scenario();
    let cut = log.records.len() / 2;
    let proj = |n: usize| projector(&log).rebuild(&log.records[..n]);
    // The frames a save of records cut+1..=end writes, taken from a store that finished it.
    let finished = tempfile::tempdir().unwrap();
    let orphans: Vec<(sled::IVec, sled::IVec)> = {
        let db = sled::open(finished.path()).unwrap();
        let mut pf = Persistent::with_store(
            projector(&log),
            Store::in_db(db.clone()).unwrap(),
            usize::MAX,
        )
        .unwrap();
        for r in &log.records[..cut] {
            pf.apply(r).unwrap();
        }
        pf.commit().unwrap();
        let before: Vec<_> = db
            .open_tree("projector")
            .unwrap()
            .scan_prefix(b"f/")
            .keys()
            .map(|k| k.unwrap())
            .collect();
        for r in &log.records[cut..] {
            pf.apply(r).unwrap();
        }
        pf.commit().unwrap();
        db.open_tree("projector")
            .unwrap()
            .scan_prefix(b"f/")
            .map(|kv| kv.unwrap())
            .filter(|(k, _)| !before.contains(k))
            .collect()
    };
    assert!(!orphans.is_empty());
    // A store saved up to `cut`, then the later save's frames without its checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let store = Store::in_db(db.clone()).unwrap();
    store.save_all(&proj(cut)).unwrap();
    let tree = db.open_tree("projector").unwrap();
    for (k, v) in &orphans {
        tree.insert(k, v.clone()).unwrap();
    }
    assert_eq!(
        store.load().unwrap(),
        proj(cut),
        "frames past the checkpoint are not read"
    );
    let mut pf = Persistent::with_store(projector(&log), store.clone(), usize::MAX).unwrap();
    for (k, _) in &orphans {
        assert!(
            tree.get(k).unwrap().is_none(),
            "an unfinished save's frame is removed at open"
        );
    }
    assert_eq!(pf.next_seq() as usize, cut + 1);
    // Resume, saving at the same last seq as the interrupted save: it loads back on its own.
    for r in &log.records[cut..] {
        pf.apply(r).unwrap();
    }
    pf.commit().unwrap();
    assert_eq!(store.load().unwrap(), proj(log.records.len()));
}
