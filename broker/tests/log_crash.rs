//! SIGKILL crash test: a child process (this test binary, re-invoked with an env var) appends
//! in a loop and reports every seq whose batch returned; the parent kills it at random
//! moments, reopens the store, runs `verify()`, and checks every reported seq is present with
//! the same hash.
//!
//! `sigkill_50_times` runs in the normal suite; `sigkill_1000_times` is ignored (run it with
//! `cargo test -p pairbus-broker --release --test log_crash -- --ignored`).

mod common;

use common::*;
use pairbus_broker::log::{AppendOutcome, LogStore};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "PAIRBUS_LOG_CRASH_DIR";
const CHILD_RUN: &str = "PAIRBUS_LOG_CRASH_RUN";

/// The child's body; a no-op unless started by the parent with the env vars set.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let run: u64 = std::env::var(CHILD_RUN).unwrap().parse().unwrap();
    let log = open_with(Path::new(&dir), 200, 50);
    let mut rng = fastrand::Rng::with_seed(run);
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", log.head().seq).unwrap();
    out.flush().unwrap();
    let mut n = 0u64;
    let mut last = Vec::new();
    let mut t = 0u64;
    loop {
        let size = rng.usize(1..=64);
        let mut batch: Vec<_> = (0..size)
            .map(|_| {
                n += 1;
                // One device per run and slot, its own seq counter: ids never repeat across runs.
                verified(&action(run * 8 + n % 8, n, (run << 32) | n))
            })
            .collect();
        if rng.u8(..4) == 0 {
            batch.extend(last.iter().cloned()); // re-sends: answered AlreadyCommitted
        }
        last = batch.clone();
        t += 1;
        let outcomes = log.append_batch(batch, t).unwrap();
        let mut lines = String::new();
        for o in &outcomes {
            match o {
                AppendOutcome::Committed(r) => {
                    lines.push_str(&format!("ACK {} {}\n", r.seq, hex::encode(r.hash)))
                }
                AppendOutcome::AlreadyCommitted(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        out.write_all(lines.as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

struct Outcome {
    acked: u64,
    killed_before_ready: bool,
}

fn run_child(
    dir: &Path,
    run: u64,
    acked: &mut BTreeMap<u64, String>,
    rng: &mut fastrand::Rng,
) -> Outcome {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_RUN, run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Half the kills land at a random moment after spawn (possibly during open/recovery),
    // half at a random moment after the child is appending.
    let early = rng.bool();
    let deadline = Instant::now() + Duration::from_millis(rng.u64(0..120));
    let mut ready = false;
    let mut lines = Vec::new();
    if !early {
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(30)) {
            // libtest prints "test crash_child ... " before the child's first line.
            let is_ready = l.contains("READY");
            lines.push(l);
            if is_ready {
                ready = true;
                break;
            }
        }
        assert!(ready, "child never became ready");
        std::thread::sleep(Duration::from_millis(rng.u64(1..60)));
    } else {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let mut n = 0;
    for l in lines {
        if l.contains("READY") {
            ready = true;
        }
        let mut parts = l.split(' ');
        if let (Some("ACK"), Some(seq), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let (Ok(seq), true) = (seq.parse::<u64>(), hash.len() == 64) else {
                continue;
            };
            assert!(
                acked.insert(seq, hash.to_string()).is_none(),
                "seq {seq} acked twice"
            );
            n += 1;
        }
    }
    Outcome {
        acked: n,
        killed_before_ready: !ready,
    }
}

fn crash_loop(kills: u64, reset_every: u64) {
    let base = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut acked = BTreeMap::new();
    let mut dir = base.path().join("gen0");
    let (mut total_acked, mut early_kills) = (0, 0);
    for run in 0..kills {
        if run > 0 && run % reset_every == 0 {
            dir = base.path().join(format!("gen{run}"));
            acked.clear();
        }
        let o = run_child(&dir, run + 1, &mut acked, &mut rng);
        total_acked += o.acked;
        early_kills += u64::from(o.killed_before_ready);
        // Reopen, verify, and find every acknowledged record with its hash.
        let log = open_with(&dir, 200, 50);
        let report = log.verify().unwrap();
        assert!(report.is_ok(), "run {run}: {report:?}");
        let head = log.head().seq;
        assert_eq!(report.head.seq, head);
        if let Some((&max, _)) = acked.iter().next_back() {
            assert!(head >= max, "run {run}: head {head} < acknowledged {max}");
        }
        let all = log.range(1..head + 1).unwrap();
        assert_eq!(all.len() as u64, head);
        for (seq, hash) in &acked {
            let r = &all[(*seq - 1) as usize];
            assert_eq!(&hex::encode(r.hash), hash, "run {run}: seq {seq} changed");
        }
    }
    eprintln!(
        "{kills} SIGKILLs: {total_acked} acknowledged records checked, {early_kills} kills before the store was open"
    );
    assert!(
        total_acked > kills,
        "the children should have appended something"
    );
}

#[test]
fn sigkill_50_times() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    crash_loop(50, 10);
}

#[test]
#[ignore = "slow: 1,000 SIGKILLs; run with --release -- --ignored"]
fn sigkill_1000_times() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    crash_loop(1000, 25);
}
