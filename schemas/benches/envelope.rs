//! Envelope benchmarks: encode, sign, verify, decode and verify+decode of one ~200-byte
//! `device.action` event. Run with
//! `cargo bench -p pairbus-schemas --bench envelope`; figures go into BENCHMARKS.md.
//!
//! With `PAIRBUS_BENCH_CLOCK=cpu` the time measured is the benchmark thread's CPU time
//! (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, 64-bit Linux) instead of wall time, which keeps the figures usable
//! on a machine shared with other work; the group is then named `envelope-cpu`.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, Criterion, Throughput};
use pairbus_schemas::event::{Action, MetaValue, Metadata};
use pairbus_schemas::ids::{DeviceId, EventId};
use pairbus_schemas::vectors::{root, T0_MS};
use pairbus_schemas::{open_event, seal, Body, Event, Unverified, MAX_EVENT_SIZE};

/// A typical `device.action`: a login with one metadata entry, about 200 bytes sealed.
fn action_event() -> Event {
    let device = DeviceId::parse("18d60a00d5b622b0").expect("valid device id");
    let mut metadata = Metadata::new();
    metadata.insert("ok".into(), MetaValue::Bool(true));
    Event {
        id: EventId::new_v7(T0_MS, [7; 10]),
        src: device.kid(),
        seq: 42,
        ts: T0_MS,
        device,
        body: Body::Action(Action {
            action: "login".into(),
            metadata,
            ip: None,
            user_agent: None,
        }),
    }
}

fn envelope<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let event = action_event();
    let key = root().derive(&event.src);
    let payload = event.encode();
    let cose = seal(&event, &key);
    println!(
        "device.action: payload {} bytes, COSE_Mac0 {} bytes",
        payload.len(),
        cose.len()
    );
    assert!(
        (180..=220).contains(&cose.len()),
        "the benchmark event should seal to about 200 bytes, not {}",
        cose.len()
    );
    assert_eq!(
        open_event(&cose, MAX_EVENT_SIZE, |_| Some(key.clone())).unwrap(),
        event
    );

    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&event).encode()));
    g.bench_function("sign", |b| b.iter(|| seal(black_box(&event), &key)));
    g.bench_function("verify", |b| {
        b.iter(|| {
            Unverified::parse(black_box(&cose), MAX_EVENT_SIZE)
                .unwrap()
                .verify(&key)
                .unwrap()
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| Event::decode(black_box(&payload), MAX_EVENT_SIZE).unwrap())
    });
    g.bench_function("verify+decode", |b| {
        b.iter(|| open_event(black_box(&cose), MAX_EVENT_SIZE, |_| Some(key.clone())).unwrap())
    });
    // The same with the key derived (HKDF) for every event instead of looked up in a cache.
    let root = root();
    g.bench_function("verify+decode, key derived per event", |b| {
        b.iter(|| {
            open_event(black_box(&cose), MAX_EVENT_SIZE, |kid| {
                Some(root.derive(kid))
            })
            .unwrap()
        })
    });
    g.finish();
}

/// CPU time of the calling thread, in nanoseconds.
struct ThreadCpu(WallTime);

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// `CLOCK_THREAD_CPUTIME_ID` on Linux.
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

fn thread_cpu_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout) for the whole call.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Nanoseconds, like wall time.
        self.0.formatter()
    }
}

fn main() {
    if std::env::var("PAIRBUS_BENCH_CLOCK").as_deref() == Ok("cpu") {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpu(WallTime))
            .configure_from_args();
        envelope(&mut c, "envelope-cpu");
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        envelope(&mut c, "envelope");
        c.final_summary();
    }
}
