//! Integration tests of the sled event log: appends, dedupe, conflicts, revocation, reads,
//! reopen, checkpoints, verify and corruption.

mod common;

use common::*;
use pairbus_broker::log::{
    key, AppendOutcome, LogStore, Problem, SledLog, FRAME_PREFIX, INDEX_PREFIX,
};
use pairbus_schemas::{EventId, Record, GENESIS};

fn committed(o: &AppendOutcome) -> &Record {
    match o {
        AppendOutcome::Committed(r) => r,
        other => panic!("expected Committed, got {other:?}"),
    }
}

#[test]
fn appends_chain_and_answer_each_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert_eq!(log.head().seq, 0);
    let a1 = action(1, 1, 1);
    let a2 = action(1, 2, 2);
    let b1 = action(2, 1, 3);
    let out = log
        .append_batch(vec![verified(&a1), verified(&a2), verified(&b1)], 1000)
        .unwrap();
    let recs: Vec<&Record> = out.iter().map(committed).collect();
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(recs[0].prev, GENESIS);
    assert_eq!(recs[1].prev, recs[0].hash);
    assert!(recs
        .iter()
        .all(|r| r.hash_is_valid() && r.received_at == 1000));
    assert_eq!(log.head().hash, recs[2].hash);

    // Replay, conflict, late lower seq, and revocation, each without failing the others.
    let clone_of_a2 = action(1, 2, 99); // same (kid, seq), different id
    let late = action(1, 5, 4);
    let earlier_gap = action(1, 4, 5);
    let out = log
        .append_batch(
            vec![
                verified(&a1),
                verified(&clone_of_a2),
                verified(&late),
                verified(&earlier_gap),
                verified(&revoke(2, 1, 6)),
                verified(&action(2, 2, 7)),
            ],
            2000,
        )
        .unwrap();
    assert_eq!(out[0], AppendOutcome::AlreadyCommitted(1));
    assert_eq!(out[1], AppendOutcome::SeqConflict { existing: a2.id });
    assert_eq!(committed(&out[2]).seq, 4);
    assert_eq!(committed(&out[3]).seq, 5);
    assert_eq!(committed(&out[4]).seq, 6);
    assert_eq!(out[5], AppendOutcome::Revoked);
    // A batch with nothing to append writes nothing.
    assert_eq!(
        log.append_batch(vec![verified(&action(2, 9, 8))], 3000)
            .unwrap(),
        vec![AppendOutcome::Revoked]
    );
    assert_eq!(log.head().seq, 6);

    // Reads.
    assert_eq!(log.get(0).unwrap(), None);
    assert_eq!(log.get(7).unwrap(), None);
    let all = log.range(1..100).unwrap();
    assert_eq!(all.len(), 6);
    for w in all.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
    }
    assert_eq!(log.get(4).unwrap().as_ref(), Some(&all[3]));
    assert_eq!(log.range(2..4).unwrap(), all[1..3].to_vec());
    let dev1 = log.by_device(&device(1), 0..u64::MAX).unwrap();
    assert_eq!(dev1.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 4, 5]);
    let dev2 = log.by_device(&device(2), 0..u64::MAX).unwrap();
    assert_eq!(dev2.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 6]);
    assert_eq!(log.by_device(&device(1), 2..5).unwrap().len(), 2);
    // Empty and inverted ranges, and ranges past the head, are empty, not errors.
    let inverted = std::ops::Range { start: 5, end: 2 };
    assert!(log
        .by_device(&device(1), inverted.clone())
        .unwrap()
        .is_empty());
    assert!(log.by_device(&device(1), 100..200).unwrap().is_empty());
    assert!(log.range(inverted).unwrap().is_empty());
    assert!(log.range(100..200).unwrap().is_empty());
    assert!(log.by_device(&device(77), 0..u64::MAX).unwrap().is_empty());
    assert_eq!(log.seq_of(&a2.id), Some(2));

    // Reopen: same records, same answers, indexes rebuilt.
    let head = log.head();
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.head(), head);
    assert_eq!(log.range(1..100).unwrap(), all);
    assert_eq!(log.by_device(&device(1), 0..u64::MAX).unwrap(), dev1);
    let out = log
        .append_batch(
            vec![
                verified(&a2),
                verified(&clone_of_a2),
                verified(&action(2, 3, 10)),
                verified(&action(3, 1, 11)),
            ],
            4000,
        )
        .unwrap();
    assert_eq!(out[0], AppendOutcome::AlreadyCommitted(2));
    assert_eq!(out[1], AppendOutcome::SeqConflict { existing: a2.id });
    assert_eq!(out[2], AppendOutcome::Revoked);
    assert_eq!(committed(&out[3]).seq, 7);
    assert_eq!(committed(&out[3]).prev, head.hash);
    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 7);
}

#[test]
fn big_batches_span_many_frames_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), 1000, u64::MAX);
    let mut n = 0;
    for b in 0..5u64 {
        let batch: Vec<_> = (0..700)
            .map(|i| {
                n += 1;
                verified(&action(i % 13, b * 1000 + i + 1, n))
            })
            .collect();
        let out = log.append_batch(batch, 10 + b).unwrap();
        assert!(out.iter().all(|o| matches!(o, AppendOutcome::Committed(_))));
    }
    assert_eq!(log.head().seq, 3500);
    let cps = log.checkpoints().unwrap();
    assert_eq!(
        cps.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [1400, 2800],
        "a checkpoint once 1000 records passed since the last"
    );
    let all = log.range(1..4000).unwrap();
    assert_eq!(all.len(), 3500);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
    let dev5 = log.by_device(&device(5), 1..4000).unwrap();
    assert_eq!(dev5.len(), 5 * 54);
    for r in &dev5 {
        assert_eq!(log.get(r.seq).unwrap().as_ref(), Some(r));
    }
    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.records, report.checkpoints), (3500, 2));
    drop(log);
    let log = open_with(dir.path(), 1000, u64::MAX);
    assert_eq!(log.range(1..4000).unwrap(), all);
    assert_eq!(log.latest_checkpoint().map(|c| c.seq), Some(2800));
}

/// `get` and `by_device` answer the same with the frame cache off, tiny (every frame shares
/// a slot with others), or large, before and after a reopen: the cache never serves a wrong
/// frame.
#[test]
fn point_reads_do_not_depend_on_the_frame_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    {
        let log = open_with(dir.path(), 1000, u64::MAX);
        for b in 0..4u64 {
            let batch: Vec<_> = (0..300)
                .map(|i| {
                    n += 1;
                    verified(&action(i % 7, b * 1000 + i + 1, n))
                })
                .collect();
            log.append_batch(batch, 10 + b).unwrap();
        }
    }
    for cache in [0, 3 * 16 * 1024, 256 << 20] {
        let mut c = pairbus_broker::log::LogConfig::new(dir.path());
        c.frame_cache_bytes = cache;
        let log = SledLog::open(c, pairbus_schemas::vectors::root()).unwrap();
        let all = log.range(1..2000).unwrap();
        assert_eq!(all.len(), 1200);
        for round in 0..2 {
            for d in 0..8 {
                let want: Vec<_> = all
                    .iter()
                    .filter(|r| log_device_of(r) == device(d))
                    .cloned()
                    .collect();
                assert_eq!(
                    log.by_device(&device(d), 0..u64::MAX).unwrap(),
                    want,
                    "cache {cache}, round {round}, device {d}"
                );
            }
            for r in all.iter().rev().step_by(7) {
                assert_eq!(log.get(r.seq).unwrap().as_ref(), Some(r), "cache {cache}");
            }
        }
    }
}

fn log_device_of(r: &Record) -> pairbus_schemas::DeviceId {
    let root = pairbus_schemas::vectors::root();
    pairbus_schemas::open_event(&r.event, pairbus_schemas::MAX_EVENT_SIZE, |kid| {
        Some(root.derive(kid))
    })
    .unwrap()
    .device
}

/// A damaged index frame (the data the in-memory indexes are rebuilt from) makes `open` fail
/// with `Corrupt`, never a panic or silently wrong indexes.
#[test]
fn a_damaged_index_frame_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), 1000, u64::MAX);
    let mut batch: Vec<_> = (1..=40).map(|i| verified(&action(i % 3, i, i))).collect();
    batch.push(verified(&revoke(2, 1, 99)));
    log.append_batch(batch, 5).unwrap();
    let config = log.config().clone();
    drop(log);
    let db = config.open_sled().unwrap();
    let (k, good) = db.scan_prefix([INDEX_PREFIX]).next().unwrap().unwrap();
    drop(db);
    // The kid's first byte (entry 0: id 16, kid seq 8, device 8, then the kid's length),
    // the flags of the last entry (a revocation), and a truncation.
    let kid_at = 1 + 8 + 4 + 16 + 8 + 8 + 1;
    let flags_at = good.len() - 1 - 8;
    for (what, bad) in [
        ("kid", {
            let mut v = good.to_vec();
            v[kid_at] = b'X';
            v
        }),
        ("flags", {
            let mut v = good.to_vec();
            v[flags_at] = 7;
            v
        }),
        ("truncated", good[..good.len() - 3].to_vec()),
    ] {
        let db = config.open_sled().unwrap();
        db.insert(k.clone(), bad).unwrap();
        db.flush().unwrap();
        drop(db);
        let err = SledLog::open(config.clone(), pairbus_schemas::vectors::root()).unwrap_err();
        assert!(
            matches!(err, pairbus_broker::log::LogError::Corrupt { .. }),
            "{what}: {err:?}"
        );
    }
    let db = config.open_sled().unwrap();
    db.insert(k, good.clone()).unwrap();
    // A stray index key far ahead (must not size the maps for 2^60 records, nor open).
    let stray = key(INDEX_PREFIX, 1 << 60);
    db.insert(stray, good).unwrap();
    db.flush().unwrap();
    drop(db);
    let err = SledLog::open(config.clone(), pairbus_schemas::vectors::root()).unwrap_err();
    assert!(
        matches!(err, pairbus_broker::log::LogError::Corrupt { .. }),
        "{err:?}"
    );
    let db = config.open_sled().unwrap();
    db.remove(stray).unwrap();
    db.flush().unwrap();
    drop(db);
    let log = open_with(dir.path(), 1000, u64::MAX);
    assert!(log.is_revoked(&device(2).kid()));
    assert_eq!(log.by_device(&device(1), 0..u64::MAX).unwrap().len(), 14);
}

#[test]
fn checkpoints_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), u64::MAX, 1000);
    for (i, t) in [5_000u64, 5_500, 6_000, 6_100, 9_000].iter().enumerate() {
        log.append_batch(vec![verified(&action(1, i as u64 + 1, i as u64))], *t)
            .unwrap();
    }
    let cps: Vec<(u64, u64)> = log
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| (c.seq, c.at))
        .collect();
    assert_eq!(cps, [(1, 5_000), (3, 6_000), (5, 9_000)]);
    assert!(log.verify().unwrap().is_ok());
}

/// Flips one byte of a stored record through sled directly: verify names that seq.
#[test]
fn verify_names_a_corrupted_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), 50, u64::MAX);
    let batch: Vec<_> = (1..=200).map(|i| verified(&action(i % 7, i, i))).collect();
    log.append_batch(batch, 77).unwrap();
    assert!(log.verify().unwrap().is_ok());
    let target = log.get(123).unwrap().unwrap();
    let config = log.config().clone();
    drop(log);

    for (what, expected) in [
        ("event byte", Problem::BadHash),
        ("hash byte", Problem::BadHash),
    ] {
        let db = config.open_sled().unwrap();
        // Find the frame holding seq 123 and flip a byte of that record.
        let (k, v) = db
            .range(key(FRAME_PREFIX, 1)..=key(FRAME_PREFIX, 123))
            .next_back()
            .unwrap()
            .unwrap();
        let mut v = v.to_vec();
        let pos = v
            .windows(target.event.len())
            .position(|w| w == &target.event[..])
            .unwrap();
        let at = if what == "event byte" {
            pos + 20
        } else {
            pos - 4 - 32 + 5
        };
        v[at] ^= 0x01;
        db.insert(k.clone(), v.clone()).unwrap();
        db.flush().unwrap();
        drop(db);

        let log = open_with(dir.path(), 50, u64::MAX);
        let report = log.verify().unwrap();
        let bad = report.first_bad.clone().expect("corruption found");
        assert_eq!(bad.seq, 123, "{what}: {report:?}");
        assert_eq!(bad.problem, expected, "{what}");
        assert_eq!(report.records, 122);
        drop(log);

        // Undo for the next round.
        let db = config.open_sled().unwrap();
        v[at] ^= 0x01;
        db.insert(k, v).unwrap();
        db.flush().unwrap();
    }
    let log = open_with(dir.path(), 50, u64::MAX);
    assert!(log.verify().unwrap().is_ok());
}

#[test]
fn verify_checks_macs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_with(dir.path(), 10, u64::MAX);
    // An event with a wrong MAC that the caller wrongly claims verified: stored, but verify
    // catches it at its seq.
    let good: Vec<_> = (1..=20).map(|i| verified(&action(1, i, i))).collect();
    log.append_batch(good, 1).unwrap();
    let e = action(2, 1, 100);
    let mut forged = verified(&e);
    let n = forged.bytes.len();
    forged.bytes[n - 1] ^= 1; // last byte of the tag
    log.append_batch(vec![forged], 2).unwrap();
    let report = log.verify().unwrap();
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 21);
    assert!(
        matches!(bad.problem, Problem::BadEvent(_)),
        "{:?}",
        bad.problem
    );
    assert_eq!(report.checkpoints, 1);
    let config = log.config().clone();
    drop(log);

    // A checkpoint whose MAC is wrong.
    let db = config.open_sled().unwrap();
    let (k, v) = db
        .scan_prefix([pairbus_broker::log::CHECKPOINT_PREFIX])
        .next()
        .unwrap()
        .unwrap();
    let mut c = pairbus_schemas::messages::Checkpoint::decode(&v).unwrap();
    c.hash[0] ^= 1;
    db.insert(k, c.encode()).unwrap();
    db.flush().unwrap();
    drop(db);
    let log = open_with(dir.path(), 10, u64::MAX);
    let bad = log.verify().unwrap().first_bad.unwrap();
    assert_eq!((bad.seq, bad.problem), (20, Problem::CheckpointMac));
}

#[test]
fn ids_are_kept_forever() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let e = action(4, 1, 1);
    log.append_batch(vec![verified(&e)], 1).unwrap();
    let more: Vec<_> = (2..300).map(|i| verified(&action(4, i, i))).collect();
    log.append_batch(more, 2).unwrap();
    assert_eq!(
        log.append_batch(vec![verified(&e)], 3).unwrap(),
        vec![AppendOutcome::AlreadyCommitted(1)]
    );
    assert_eq!(log.seq_of(&EventId([0; 16])), None);
}

/// `verify` while commits run (checkpoints every 30 records): never a false alarm.
#[test]
fn verify_during_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(open_with(dir.path(), 30, u64::MAX));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for b in 0..60u64 {
                let batch: Vec<_> = (0..20)
                    .map(|i| verified(&action(7, b * 20 + i + 1, b * 20 + i + 1)))
                    .collect();
                log.append_batch(batch, b).unwrap();
            }
        })
    };
    let mut rounds = 0;
    while !writer.is_finished() || rounds == 0 {
        let report = log.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
        rounds += 1;
    }
    writer.join().unwrap();
    let report = log.verify().unwrap();
    assert!(report.is_ok() && report.records == 1200, "{report:?}");
}
