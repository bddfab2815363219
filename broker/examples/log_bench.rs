//! Benchmarks of the event log (BENCHMARKS.md, "broker: event log").
//!
//! ```text
//! cargo run --release -p pairbus-broker --example log_bench -- append     # appends/s, frames vs naive
//! cargo run --release -p pairbus-broker --example log_bench -- million    # 1 M records: reads, by_device
//! cargo run --release -p pairbus-broker --example log_bench -- sync-probe 100   # for strace
//! cargo run --release -p pairbus-broker --example log_bench -- bydevice   # by_device in a loop, for perf
//! cargo run --release -p pairbus-broker --example log_bench -- bydevice 1000000 1000 60  # same, 1 M records
//! cargo run --release -p pairbus-broker --example log_bench -- byreopen /tmp/kept-log  # open + by_device on a kept log
//! cargo run --release -p pairbus-broker --example log_bench -- cpu 20480  # N appends at batch 1024, for callgrind
//! cargo run --release -p pairbus-broker --example log_bench -- reopen 1000000  # where open time goes
//! ```
//!
//! Data goes under `$BENCH_DIR` (default: the system temp dir).

use pairbus_broker::log::{AppendOutcome, LogConfig, LogStore, SledLog, VerifiedEvent};
use pairbus_schemas::event::{Action, MetaValue};
use pairbus_schemas::vectors::root;
use pairbus_schemas::{seal, Body, DeviceId, Event, EventId, Record};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

fn device(n: u64) -> DeviceId {
    DeviceId::parse(&format!("{n:016x}")).expect("16 hex digits")
}

/// A signed `device.action` of about 200 bytes.
fn event(dev: u64, kid_seq: u64, uniq: u64) -> VerifiedEvent {
    let d = device(dev);
    let mut metadata = BTreeMap::new();
    metadata.insert("n".to_string(), MetaValue::Int(uniq as i64));
    let mut rand = [0u8; 10];
    rand[..8].copy_from_slice(&uniq.to_be_bytes());
    let e = Event {
        id: EventId::new_v7(1_767_225_600_000 + uniq, rand),
        src: d.kid(),
        seq: kid_seq,
        ts: 1_767_225_600_000 + uniq,
        device: d,
        body: Body::Action(Action {
            action: "qr_scan".into(),
            metadata,
            ip: Some("10.0.0.42".into()),
            user_agent: None,
        }),
    };
    let bytes = seal(&e, &root().derive(&e.src));
    VerifiedEvent::from_event(&e, bytes)
}

/// `n` events spread over `devices` devices, each device with its own seq counter.
fn events(n: u64, devices: u64, offset: u64, seed: u64) -> Vec<VerifiedEvent> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seqs = vec![0u64; devices as usize];
    (0..n)
        .map(|i| {
            let d = rng.u64(..devices);
            seqs[d as usize] += 1;
            event(offset + d, seqs[d as usize], (seed << 40) | i)
        })
        .collect()
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("bench dir")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The naive layout for comparison: one sled insert per record and one per index entry
/// (record, id index, principal index, device index) in one `Batch`, dedupe and conflict
/// lookups through sled, then the same flush + fdatasync per commit.
struct Naive {
    db: sled::Db,
    file: File,
    next: u64,
    prev: [u8; 32],
}

impl Naive {
    fn open(path: &Path) -> Self {
        let db = LogConfig::new(path)
            .sled_config()
            .open()
            .expect("open naive");
        let file = File::open(path.join("db")).expect("db file");
        Naive {
            db,
            file,
            next: 1,
            prev: [0; 32],
        }
    }

    fn append_batch(&mut self, events: &[VerifiedEvent], received_at: u64) -> usize {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for e in events {
            let mut idk = b"d".to_vec();
            idk.extend_from_slice(&e.id.0);
            let mut pk = b"p".to_vec();
            pk.extend_from_slice(e.kid.to_string().as_bytes());
            pk.extend_from_slice(&e.kid_seq.to_be_bytes());
            if self.db.get(&idk).expect("get").is_some() || self.db.get(&pk).expect("get").is_some()
            {
                continue;
            }
            let r = Record::chain(self.prev, self.next, received_at, e.bytes.clone());
            let mut rk = b"r".to_vec();
            rk.extend_from_slice(&r.seq.to_be_bytes());
            let mut dk = b"v".to_vec();
            dk.extend_from_slice(e.device.as_str().as_bytes());
            dk.extend_from_slice(&r.seq.to_be_bytes());
            batch.insert(rk, r.encode());
            batch.insert(idk, &r.seq.to_be_bytes());
            batch.insert(pk, &e.id.0);
            batch.insert(dk, &[]);
            self.prev = r.hash;
            self.next += 1;
            n += 1;
        }
        self.db.apply_batch(batch).expect("batch");
        self.db.flush().expect("flush");
        self.file.sync_data().expect("fdatasync");
        n
    }
}

fn append_rate(label: &str, batch: usize, budget: Duration, max_records: u64) {
    append_rate_impl(label, batch, budget, max_records, true)
}

fn append_rate_impl(label: &str, batch: usize, budget: Duration, max_records: u64, naive: bool) {
    let evs = events(max_records, 1000, 0, batch as u64);
    let avg = evs.iter().map(|e| e.bytes.len()).sum::<usize>() as f64 / evs.len() as f64;
    let batches: Vec<Vec<VerifiedEvent>> = evs.chunks(batch).map(<[_]>::to_vec).collect();

    let dir = bench_dir();
    let log = SledLog::open(LogConfig::new(dir.path()), root()).expect("open");
    let (mut n, start, cpu0) = (0u64, Instant::now(), process_cpu());
    let mut commits = 0;
    for chunk in batches {
        let out = log.append_batch(chunk, now_ms()).expect("append");
        n += out
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Committed(_)))
            .count() as u64;
        commits += 1;
        if start.elapsed() > budget {
            break;
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{label:<8} frames  batch {batch:>5}: {:>9.0} durable appends/s ({n} records, {commits} commits, {:.2} ms/commit, event {avg:.0} B{})",
        n as f64 / el,
        el * 1000.0 / commits as f64,
        cpu_note(cpu0, n)
    );
    drop(log);
    if !naive {
        return;
    }

    let dir = bench_dir();
    let mut naive = Naive::open(dir.path());
    let (mut n, start, cpu0) = (0u64, Instant::now(), process_cpu());
    let mut commits = 0;
    for chunk in evs.chunks(batch) {
        n += naive.append_batch(chunk, now_ms()) as u64;
        commits += 1;
        if start.elapsed() > budget {
            break;
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{label:<8} naive   batch {batch:>5}: {:>9.0} durable appends/s ({n} records, {commits} commits, {:.2} ms/commit{})",
        n as f64 / el,
        el * 1000.0 / commits as f64,
        cpu_note(cpu0, n)
    );
}

/// CPU time (user + system) of the whole process so far, from `/proc/self/stat` (clock ticks,
/// assumed 100 Hz); `None` where unavailable. Immune to other processes on a shared machine.
fn process_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn cpu_note(cpu0: Option<Duration>, n: u64) -> String {
    match (cpu0, process_cpu()) {
        (Some(a), Some(b)) if b > a => {
            let cpu = (b - a).as_secs_f64();
            format!(
                ", CPU {:.2} us/record = {:.0} records per CPU-second",
                cpu * 1e6 / n as f64,
                n as f64 / cpu
            )
        }
        _ => String::new(),
    }
}

/// This thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`, exact): the load-independent
/// cost of a call.
fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return None;
    }
    Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `by_device` for 1,000 random devices of the 1,000 (about 1,000 records each).
fn by_device_latency(log: &SledLog, label: &str) {
    by_device_latency_n(log, label, 1000, 1000)
}

fn by_device_latency_n(log: &SledLog, label: &str, devices: u64, calls: usize) {
    let mut rng = fastrand::Rng::with_seed(3);
    let (mut lat, mut cpu) = (Vec::new(), Vec::new());
    let mut total = 0;
    for _ in 0..calls {
        let d = device(rng.u64(..devices));
        let c0 = thread_cpu();
        let t = Instant::now();
        let recs = log.by_device(&d, 0..u64::MAX).expect("by_device");
        lat.push(t.elapsed());
        if let (Some(c0), Some(c1)) = (c0, thread_cpu()) {
            cpu.push(c1.saturating_sub(c0));
        }
        total += recs.len();
    }
    lat.sort();
    cpu.sort();
    println!(
        "by_device, {label} (avg {} records of one device among {}): wall min {:?}, p50 {:?}, p99 {:?}, max {:?}",
        total / lat.len(),
        log.head().seq,
        lat[0],
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    if !cpu.is_empty() {
        println!(
            "  thread CPU per call: min {:?}, p50 {:?}, p99 {:?}, max {:?}",
            cpu[0],
            percentile(&cpu, 0.5),
            percentile(&cpu, 0.99),
            cpu[cpu.len() - 1]
        );
    }
}

fn million() {
    const N: u64 = 1_000_000;
    const DEVICES: u64 = 1000;
    let t = Instant::now();
    let evs = events(N, DEVICES, 0, 7);
    println!(
        "generated and sealed {N} events in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let dir = bench_dir();
    let config = LogConfig::new(dir.path());
    let log = SledLog::open(config.clone(), root()).expect("open");
    let (t, cpu0) = (Instant::now(), process_cpu());
    let mut it = evs.into_iter();
    let (mut done, mut lap, mut laps) = (0u64, Instant::now(), Vec::new());
    loop {
        let chunk: Vec<_> = it.by_ref().take(1024).collect();
        if chunk.is_empty() {
            break;
        }
        done += chunk.len() as u64;
        log.append_batch(chunk, now_ms()).expect("append");
        if done % (100 * 1024) == 0 {
            laps.push(format!(
                "{:.0}k",
                100.0 * 1.024 / lap.elapsed().as_secs_f64()
            ));
            lap = Instant::now();
        }
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "appended {N} records at batch 1024 in {el:.1} s: {:.0} durable appends/s (per 102,400: {}){}",
        N as f64 / el,
        laps.join(" "),
        cpu_note(cpu0, N)
    );
    let head = log.head().seq;
    assert_eq!(head, N);

    // Catch-up reads: copying Records out (what tail/range give), and zero-copy scanning.
    for round in 0..2 {
        let t = Instant::now();
        let mut buf = Vec::with_capacity(1024);
        let (mut n, mut bytes) = (0u64, 0u64);
        let mut from = 1;
        while from <= head {
            buf.clear();
            log.read_into(from..from + 1024, &mut buf).expect("read");
            n += buf.len() as u64;
            bytes += buf.iter().map(|r| r.event.len() as u64).sum::<u64>();
            from += 1024;
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "catch-up read (range, Records) round {round}: {:.0} records/s ({n} records, {:.0} MB/s)",
            n as f64 / el,
            bytes as f64 / el / 1e6
        );
    }
    let t = Instant::now();
    let (n, _) = log.scan_bytes(1..head + 1).expect("scan");
    let el = t.elapsed().as_secs_f64();
    println!("catch-up scan (zero-copy):  {:.0} records/s", n as f64 / el);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let log = std::sync::Arc::new(log);
    let t = Instant::now();
    let n = rt.block_on(async {
        let mut tail = pairbus_broker::log::tail(log.clone(), 1);
        let mut n = 0u64;
        while n < head {
            tail.next().await.expect("alive").expect("read");
            n += 1;
        }
        n
    });
    let el = t.elapsed().as_secs_f64();
    println!("catch-up tail (async):      {:.0} records/s", n as f64 / el);

    by_device_latency(&log, "in the writing process");
    drop(log);
    let t = Instant::now();
    let db = config.open_sled().expect("sled alone");
    println!(
        "sled open alone (no index rebuild): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop(db);
    let t = Instant::now();
    let log = SledLog::open(config, root()).expect("reopen");
    println!(
        "reopen with {} records (index rebuild): {:.2} s",
        log.head().seq,
        t.elapsed().as_secs_f64()
    );
    by_device_latency(&log, "after reopen, from sled, 1st pass");
    by_device_latency(&log, "after reopen, from sled, 2nd pass");
    let t = Instant::now();
    let report = log.verify().expect("verify");
    println!(
        "verify {} records ({} checkpoints): {:.1} s, ok = {}",
        report.records,
        report.checkpoints,
        t.elapsed().as_secs_f64(),
        report.is_ok()
    );
}

/// Where reopening time goes: N records at batch 1024, then three rounds of (sled open alone;
/// sled open + reading every index frame without decoding it; `SledLog::open`), each with
/// wall time and the process CPU time it took.
fn reopen(n: u64) {
    // The store logs how its open time splits (sled, fsyncs, index rebuild).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "pairbus_broker::log=info",
        ))
        .with_writer(std::io::stdout)
        .init();
    let evs = events(n, 1000, 0, 13);
    let dir = bench_dir();
    let config = LogConfig::new(dir.path());
    {
        let log = SledLog::open(config.clone(), root()).expect("open");
        for chunk in evs.chunks(1024) {
            log.append_batch(chunk.to_vec(), now_ms()).expect("append");
        }
    }
    drop(evs);
    let cpu = |c0: Option<Duration>| match (c0, process_cpu()) {
        (Some(a), Some(b)) => format!("{:.2} s CPU", (b.saturating_sub(a)).as_secs_f64()),
        _ => String::new(),
    };
    for round in 0..3 {
        let (t, c0) = (Instant::now(), process_cpu());
        drop(config.open_sled().expect("sled"));
        let sled_alone = (t.elapsed().as_secs_f64(), cpu(c0));
        let (t, c0) = (Instant::now(), process_cpu());
        let db = config.open_sled().expect("sled");
        let (mut frames, mut bytes) = (0u64, 0u64);
        for item in db.scan_prefix([pairbus_broker::log::INDEX_PREFIX]) {
            let (_, v) = item.expect("scan");
            frames += 1;
            bytes += v.len() as u64;
        }
        let scan = (t.elapsed().as_secs_f64(), cpu(c0));
        // Decoding every entry in place, without inserting it anywhere: what any snapshot
        // format would at best save of the rebuild.
        let (t, c0) = (Instant::now(), process_cpu());
        let mut entries = 0u64;
        for item in db.scan_prefix([pairbus_broker::log::INDEX_PREFIX]) {
            let (_, v) = item.expect("scan");
            pairbus_broker::log::frame::visit_index_frame(&v, |_, e| {
                entries += u64::from(e.kid_device.is_some())
            })
            .expect("index frame");
        }
        drop(db);
        let decode = (t.elapsed().as_secs_f64(), cpu(c0));
        let (t, c0) = (Instant::now(), process_cpu());
        let log = SledLog::open(config.clone(), root()).expect("reopen");
        let full = (t.elapsed().as_secs_f64(), cpu(c0));
        println!(
            "reopen {n} records, round {round}: sled open alone {:.2} s ({}); + reading {frames} index frames ({:.1} MB) {:.2} s ({}); reading + decoding {entries} entries {:.2} s ({}); SledLog::open (indexes rebuilt) {:.2} s ({})",
            sled_alone.0, sled_alone.1, bytes as f64 / 1e6, scan.0, scan.1, decode.0, decode.1, full.0, full.1
        );
        assert_eq!(log.head().seq, n);
    }
}

fn sync_probe(commits: usize) {
    let evs = events(commits as u64 * 64, 100, 0, 11);
    let dir = bench_dir();
    let log = SledLog::open(LogConfig::new(dir.path()), root()).expect("open");
    eprintln!("--- opened; {commits} commits of 64 follow ---");
    for chunk in evs.chunks(64) {
        log.append_batch(chunk.to_vec(), now_ms()).expect("append");
    }
    eprintln!("--- {commits} commits done, head {} ---", log.head().seq);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("append") | None => {
            let budget = Duration::from_secs(4);
            append_rate("append", 1, budget, 20_000);
            append_rate("append", 64, budget, 400_000);
            append_rate("append", 1024, budget, 600_000);
        }
        Some("million") => million(),
        Some("bydevice") => {
            // For profiling: N records (200,000) over D devices (200), then by_device in a
            // loop for S seconds (15).
            let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
            let (n, devices, secs) = (arg(1, 200_000), arg(2, 200), arg(3, 15));
            let evs = events(n, devices, 0, 5);
            let dir = bench_dir();
            let log = SledLog::open(LogConfig::new(dir.path()), root()).expect("open");
            for chunk in evs.chunks(1024) {
                log.append_batch(chunk.to_vec(), now_ms()).expect("append");
            }
            drop(evs);
            eprintln!("--- built ---");
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(secs) {
                by_device_latency_n(&log, "loop", devices, 200);
            }
        }
        Some("byreopen") => {
            // by_device right after open, on a kept log: `byreopen DIR [N]` writes N records
            // (1,000,000) over 1,000 devices into DIR if it holds no log yet, then opens it
            // (timed, process CPU) and runs two passes of 1,000 calls: the first right after
            // open (racing the frame cache warm-up), the second once it is done. Delete DIR
            // afterwards.
            let dir = Path::new(args.get(1).expect("byreopen DIR [N]")).to_path_buf();
            let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
            let config = LogConfig::new(&dir);
            if !dir.join("db").exists() {
                let evs = events(n, 1000, 0, 7);
                let log = SledLog::open(config.clone(), root()).expect("open");
                for chunk in evs.chunks(1024) {
                    log.append_batch(chunk.to_vec(), now_ms()).expect("append");
                }
                println!("wrote {n} records to {}", dir.display());
            }
            let (t, c0) = (Instant::now(), process_cpu());
            let log = SledLog::open(config, root()).expect("reopen");
            println!(
                "open with {} records: {:.3} s{}",
                log.head().seq,
                t.elapsed().as_secs_f64(),
                match (c0, process_cpu()) {
                    (Some(a), Some(b)) => format!(" ({:.3} s CPU)", (b - a).as_secs_f64()),
                    _ => String::new(),
                }
            );
            by_device_latency(&log, "after reopen, 1st pass");
            let (t, c0) = (Instant::now(), process_cpu());
            log.wait_for_frame_cache();
            println!(
                "frame cache warm-up still running after the 1st pass: {:.3} s{}",
                t.elapsed().as_secs_f64(),
                match (c0, process_cpu()) {
                    (Some(a), Some(b)) => format!(" ({:.3} s process CPU)", (b - a).as_secs_f64()),
                    _ => String::new(),
                }
            );
            by_device_latency(&log, "after reopen, 2nd pass");
        }
        Some("cpu") => {
            // For instruction counts (valgrind --tool=callgrind): N records at batch 1024.
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_480);
            append_rate_impl("cpu", 1024, Duration::from_secs(600), n, false);
        }
        Some("frames") => {
            let batch = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
            append_rate_impl("frames", batch, Duration::from_secs(5), 600_000, false);
        }
        Some("reopen") => reopen(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000)),
        Some("sync-probe") => {
            sync_probe(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100));
        }
        Some(other) => eprintln!(
            "unknown mode {other}: append | million | frames B | bydevice [N D S] | byreopen DIR [N] | cpu N | reopen N | sync-probe N"
        ),
    }
}
