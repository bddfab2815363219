//! Fold rate and `history` latency on a generated, really signed fleet log.
//!
//! `cargo bench -p pairbus-projector --bench fold` (release build, one thread).
//! `BENCH_EVENTS` (default 1,000,000) and `BENCH_DEVICES` (default 1,000) size the log.

use pairbus_projector::decode::decode_event_lite;
use pairbus_projector::fold::{Config, Projector};
use pairbus_projector::query::{self, NoRecords, Query};
use pairbus_projector::testkit::fleet;
use pairbus_projector::Projections;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds this thread has run on a CPU (Linux `/proc/thread-self/schedstat`): the rate
/// per core, whatever else the machine is doing. 0 where unavailable.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let events = if quick {
        20_000
    } else {
        env("BENCH_EVENTS", 1_000_000)
    };
    let devices = env("BENCH_DEVICES", 1_000) as u32;

    let t = Instant::now();
    let log = fleet(devices, events);
    let records = log.records;
    let bytes: usize = records.iter().map(|r| r.event.len()).sum();
    println!(
        "generated {} records ({} devices, {:.0} B/event avg) in {:.1} s",
        records.len(),
        devices,
        bytes as f64 / records.len() as f64,
        t.elapsed().as_secs_f64()
    );

    println!(
        "trail entry: {} bytes in a trail (accepted, own device, no gap; else plus a boxed {}-byte TrailEntry)",
        pairbus_projector::model::TRAIL_SLOT_BYTES,
        std::mem::size_of::<pairbus_projector::model::TrailEntry>()
    );

    let c = cpu_ns();
    let mut ok = 0usize;
    for r in &records {
        ok += usize::from(decode_event_lite(&r.event).is_ok());
    }
    let d = cpu_ns() - c;
    assert_eq!(ok, records.len());
    println!(
        "decode only (lite, as the fold does): {:.0} events/s per core ({:.0} ns/event CPU)",
        records.len() as f64 / (d as f64 / 1e9),
        d as f64 / records.len() as f64
    );

    if std::env::var_os("BENCH_HOT").is_some() {
        let r = &records[records.len() / 2];
        let c = cpu_ns();
        let n = records.len() * env("BENCH_HOT", 1);
        for _ in 0..n {
            std::hint::black_box(decode_event_lite(std::hint::black_box(&r.event)).is_ok());
        }
        let d = cpu_ns() - c;
        println!(
            "decode of one hot record: {:.0} ns/event CPU",
            d as f64 / n as f64
        );
        let c = cpu_ns();
        for _ in 0..records.len() {
            std::hint::black_box(pairbus_projector::decode::split_cose(std::hint::black_box(
                &r.event,
            )));
        }
        let d = cpu_ns() - c;
        println!(
            "split_cose of one hot record: {:.0} ns/event CPU",
            d as f64 / records.len() as f64
        );
    }
    let pr = Projector::new(Config::default(), log_root());
    let mut best = Duration::MAX;
    let mut best_cpu = u64::MAX;
    let mut p = Projections::new();
    for _ in 0..if quick { 1 } else { 3 } {
        drop(std::mem::take(&mut p));
        let t = Instant::now();
        let c = cpu_ns();
        p = Projections::new();
        let mut fx = Vec::new();
        for r in &records {
            fx.clear();
            pr.apply_into(&mut p, r, &mut fx);
        }
        best_cpu = best_cpu.min(cpu_ns() - c);
        best = best.min(t.elapsed());
    }
    assert!(p.alerts.len() < records.len() / 100, "a valid fleet log");
    println!(
        "fold (full rebuild from scratch, effects collected), best of 3: CPU {:.3} s = {:.0} events/s per core ({:.0} ns/event); wall {:.3} s = {:.0} events/s",
        best_cpu as f64 / 1e9,
        records.len() as f64 / (best_cpu as f64 / 1e9),
        best_cpu as f64 / records.len() as f64,
        best.as_secs_f64(),
        records.len() as f64 / best.as_secs_f64(),
    );

    // A save once everything is folded, with nothing new since the last one: what the folding
    // thread spends on it (`prepare`: copies) and what the writing thread does (`write`: JSON,
    // sled, flush). Its cost grows with the bookkeeping, never with the trails.
    let dir = tempfile::tempdir().expect("temp dir");
    let store = pairbus_projector::store::Store::open(dir.path()).expect("store");
    let (mut prep, mut write) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let save = pairbus_projector::store::Store::prepare(&p, &[]);
        prep.push(t.elapsed());
        let t = Instant::now();
        store.write(save).expect("save");
        write.push(t.elapsed());
    }
    println!(
        "a save with nothing new ({} principals, {} commands), median of 5: prepare {:.3} ms, write {:.3} ms",
        p.principals.len(),
        p.commands.len(),
        median(prep).as_secs_f64() * 1e3,
        median(write).as_secs_f64() * 1e3,
    );

    let id = p.devices.keys().min().expect("devices").as_str().to_owned();
    let trail_len = p.trails[&pairbus_schemas::DeviceId::parse(&id).expect("id")].len();
    let q = Query::History {
        id: id.clone(),
        since: None,
        until: None,
        types: vec![],
    };
    let runs = 101;
    let with_details = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let r = query::run(&p, records.as_slice(), &q).expect("history");
                std::hint::black_box(r);
                t.elapsed()
            })
            .collect(),
    );
    let json = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let r = query::run(&p, records.as_slice(), &q).expect("history");
                let s = serde_json::to_vec(&r).expect("json");
                std::hint::black_box(s);
                t.elapsed()
            })
            .collect(),
    );
    let bare = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let r = query::run(&p, &NoRecords, &q).expect("history");
                std::hint::black_box(r);
                t.elapsed()
            })
            .collect(),
    );
    let window = Query::History {
        id,
        since: Some(records[records.len() / 2].received_at),
        until: Some(records[records.len() / 2].received_at + 3_600_000),
        types: vec!["device.action".into()],
    };
    let windowed = median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                let r = query::run(&p, records.as_slice(), &window).expect("history");
                std::hint::black_box(r);
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "history of one device ({trail_len} entries among {} records), median of {runs}: \
         with event details {:.3} ms, + JSON {:.3} ms, entries only {:.3} ms, 1-hour window with type filter {:.3} ms",
        records.len(),
        with_details.as_secs_f64() * 1e3,
        json.as_secs_f64() * 1e3,
        bare.as_secs_f64() * 1e3,
        windowed.as_secs_f64() * 1e3,
    );
}

fn log_root() -> pairbus_schemas::RootSecret {
    pairbus_schemas::vectors::root()
}
