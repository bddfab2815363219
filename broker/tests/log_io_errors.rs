//! IO errors come back as typed errors, never as panics, and nothing is reported durable
//! that is not.

mod common;

use common::*;
use pairbus_broker::log::{AppendOutcome, LogConfig, LogError, LogStore, SledLog};
use pairbus_schemas::vectors::root;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

const CHILD_DIR: &str = "PAIRBUS_LOG_FULL_DIR";

#[test]
fn opening_where_nothing_can_be_created_is_an_error() {
    // Root ignores permission bits, so use places no one can create a directory in.
    let err = SledLog::open(LogConfig::new("/proc/self/pairbus-log"), root()).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err:?}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = SledLog::open(LogConfig::new(file.path()), root()).unwrap_err();
    assert!(
        matches!(err, LogError::Io { .. } | LogError::Sled(_)),
        "{err:?}"
    );
}

#[test]
fn a_foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = LogConfig::new(dir.path()).open_sled().unwrap();
        db.insert(b"x", b"y".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let err = SledLog::open(LogConfig::new(dir.path()), root()).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err:?}");
}

/// The child: appends until the file-size limit makes a write fail, then checks the store
/// refuses further appends. Runs under `prlimit --fsize` with SIGXFSZ ignored.
#[test]
fn disk_full_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let log = open(Path::new(&dir));
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    loop {
        let batch: Vec<_> = (0..64)
            .map(|_| {
                n += 1;
                verified(&action(n % 5, n, n))
            })
            .collect();
        match log.append_batch(batch, n) {
            Ok(outcomes) => {
                for o in outcomes {
                    if let AppendOutcome::Committed(r) = o {
                        writeln!(out, "ACK {} {}", r.seq, hex::encode(r.hash)).unwrap();
                    }
                }
            }
            Err(e) => {
                writeln!(out, "ERR {e}").unwrap();
                let again = log.append_batch(vec![verified(&action(9, 1, 1 << 40))], 0);
                writeln!(out, "AFTER {}", matches!(again, Err(LogError::Poisoned))).unwrap();
                // Reads still work.
                writeln!(out, "READ {}", log.get(1).is_ok()).unwrap();
                out.flush().unwrap();
                return;
            }
        }
        out.flush().unwrap();
        assert!(n < 10_000_000, "the size limit never hit");
    }
}

#[test]
fn disk_full_is_an_error_and_poisons_appends() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // `trap '' XFSZ` makes the signal ignored, which survives exec: writes past the limit
    // then fail with EFBIG instead of killing the process.
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"trap '' XFSZ; exec prlimit --fsize=6000000 "$0" --exact disk_full_child --nocapture --test-threads=1"#)
        .arg(&exe)
        .env(CHILD_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child must not panic: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = stdout
        .lines()
        .find_map(|l| l.split_once("ERR ").map(|x| x.1));
    assert!(err.is_some(), "no error reported: {stdout}");
    assert!(stdout.contains("AFTER true"), "{stdout}");
    assert!(stdout.contains("READ true"), "{stdout}");
    let mut acked = BTreeMap::new();
    for l in stdout.lines() {
        if let Some(rest) = l.split("ACK ").nth(1) {
            if let Some((seq, hash)) = rest.split_once(' ') {
                acked.insert(seq.parse::<u64>().unwrap(), hash.to_string());
            }
        }
    }
    eprintln!(
        "error after {} acknowledged records: {}",
        acked.len(),
        err.unwrap_or("")
    );
    assert!(!acked.is_empty());
    // Reopened without the limit: verifies, and everything acknowledged is there.
    let log = open(dir.path());
    let report = log.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
    for (seq, hash) in &acked {
        let r = log.get(*seq).unwrap().expect("acknowledged record present");
        assert_eq!(&hex::encode(r.hash), hash);
    }
}
