//! `tail(from)`: stored then live, in order, no gap, no duplicate, with concurrent writers.

mod common;

use common::*;
use futures_util::StreamExt;
use pairbus_broker::log::{tail, AppendOutcome, LogStore, SledLog};
use pairbus_schemas::Record;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn writers(log: &Arc<SledLog>, threads: u64, batches: u64) -> Vec<std::thread::JoinHandle<u64>> {
    (0..threads)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let mut kid_seq = 0;
                let mut n = 0;
                for b in 0..batches {
                    let size = rng.u64(1..=20);
                    let batch: Vec<_> = (0..size)
                        .map(|_| {
                            kid_seq += 1;
                            verified(&action(100 + t, kid_seq, ((t + 1) << 32) | kid_seq))
                        })
                        .collect();
                    n += log
                        .append_batch(batch, b)
                        .unwrap()
                        .iter()
                        .filter(|o| matches!(o, AppendOutcome::Committed(_)))
                        .count() as u64;
                    if rng.bool() {
                        std::thread::yield_now();
                    }
                }
                n
            })
        })
        .collect()
}

/// Reads a tail until it has yielded the record `until` (set once the writers are done).
async fn take(mut t: pairbus_broker::log::Tail<SledLog>, until: Arc<AtomicU64>) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let last = out.last().map(|r| r.seq).unwrap_or(0);
        if last >= until.load(Ordering::Acquire) {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tail stalled at {last}"
        );
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), t.next()).await {
            out.push(r.expect("store alive").expect("read ok"));
        }
    }
}

fn check_contiguous(records: &[Record], from: u64) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, from + i as u64, "gap or duplicate at index {i}");
        if i > 0 {
            assert_eq!(r.prev, records[i - 1].hash);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_yields_stored_then_live_without_gaps_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open_with(dir.path(), 500, u64::MAX));
    // Some stored history first.
    let pre: Vec<_> = (1..=300).map(|i| verified(&action(1, i, i))).collect();
    log.append_batch(pre, 0).unwrap();

    let until = Arc::new(AtomicU64::new(u64::MAX));
    let from_start = tokio::spawn(take(tail(log.clone(), 1), until.clone()));
    let from_middle = tokio::spawn(take(tail(log.clone(), 150), until.clone()));
    // A tail from beyond the head waits for the live records.
    let from_future = tokio::spawn(take(tail(log.clone(), 301), until.clone()));
    let handles = writers(&log, 4, 60);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let head = log.head().seq;
    assert_eq!(head, 300 + total);
    until.store(head, Ordering::Release);

    let a = from_start.await.unwrap();
    check_contiguous(&a, 1);
    assert_eq!(a.len() as u64, head);
    assert_eq!(a, log.range(1..head + 1).unwrap());
    let b = from_middle.await.unwrap();
    check_contiguous(&b, 150);
    assert_eq!(b[..], a[149..]);
    let c = from_future.await.unwrap();
    check_contiguous(&c, 301);
    assert_eq!(c[..], a[300..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_as_a_stream_catches_up_to_the_exact_head() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path()));
    let handles = writers(&log, 3, 40);
    let stream = tail(log.clone(), 1).into_stream();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let got: Vec<Record> = stream
        .take(total as usize)
        .map(|r| r.unwrap())
        .collect()
        .await;
    check_contiguous(&got, 1);
    assert_eq!(got.len() as u64, log.head().seq);
    // Nothing more arrives until the next commit.
    let mut t = tail(log.clone(), total + 1);
    assert!(tokio::time::timeout(Duration::from_millis(100), t.next())
        .await
        .is_err());
    log.append_batch(vec![verified(&action(9, 1, 1 << 40))], 5)
        .unwrap();
    let r = t.next().await.unwrap().unwrap();
    assert_eq!(r.seq, total + 1);
}
