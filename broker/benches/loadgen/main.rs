//! MQTT load generator (BENCHMARKS.md, "Broker under MQTT load"): N publishers (rumqttc) send
//! ~200-byte `device.action` events at QoS 1 and count what is really **stored**, never
//! PUBACKs: for pairbus the `committed/` confirmations (sent after the durable group commit),
//! for a plain broker (Mosquitto, NATS JetStream's MQTT listener) the messages that reach one
//! subscriber. Reports stored events/s, events lost (published − stored after a drain
//! timeout), and publish→stored latency p50/p99/max.
//!
//! ```text
//! # pairbus, started here in its own process on a temp data folder:
//! cargo bench -p pairbus-broker --bench loadgen -- --target pairbus --publishers 8 --duration 10
//! # a running pairbus (its data folder holds fleet.key, from which device keys are derived):
//! cargo bench -p pairbus-broker --bench loadgen -- --target pairbus --addr 127.0.0.1:1883 --data ./data
//! # a plain broker, at a fixed total rate:
//! cargo bench -p pairbus-broker --bench loadgen -- --target mosquitto --addr 127.0.0.1:18830 --rate 10000
//! ```
//!
//! `bench/compare.sh` runs alternating rounds against all three.

mod payload;
mod tracker;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use pairbus_schemas::keys::device_id_from_serial_hash;
use pairbus_schemas::messages::Committed;
use pairbus_schemas::{DeviceId, Kid, PrincipalKind, RootSecret, Topic};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tracker::Tracker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// pairbus: signed events, stored = `committed/` confirmation.
    Pairbus,
    /// A plain broker: unsigned payloads, stored = delivered to the subscriber.
    Mosquitto,
    /// NATS JetStream's MQTT listener (counted like Mosquitto).
    Nats,
}

#[derive(Parser, Debug)]
#[command(about = "MQTT load generator: stored events/s, lost, publish→stored latency")]
struct Args {
    /// What is measured.
    #[arg(long, value_enum)]
    target: Target,
    /// The broker (for pairbus: its device plane). Without it, pairbus is started here, in
    /// its own process, on a temporary data folder.
    #[arg(long)]
    addr: Option<String>,
    /// pairbus' data folder (for `fleet.key`), with `--addr`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// pairbus' operator plane, with `--addr`: a factory (`factory:loadgen-…`) manufactures
    /// the publishers' devices there before the run, so that their events are ordinary
    /// accepted ones. Without it the devices are unknown to the projector, which refuses each
    /// of their events with an `unknown_device` alert (stored all the same).
    #[arg(long)]
    operator_addr: Option<String>,
    /// Concurrent publishers (one MQTT connection each).
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Total events/s over all publishers; 0 = flat out.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of publishing (unless `--events`).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Total events to publish (instead of `--duration`).
    #[arg(long)]
    events: Option<u64>,
    /// Payload size, bytes (the signed envelope's size for pairbus).
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// rumqttc's in-flight QoS 1 window per publisher.
    #[arg(long, default_value_t = 100)]
    inflight: u16,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Also write every stored event's publisher, publish time and latency (µs) to this file,
    /// one per line.
    #[arg(long)]
    latencies: Option<PathBuf>,
    /// A label copied into the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn split_addr(addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("`{addr}` is not HOST:PORT"))?;
    let port = port.parse().with_context(|| format!("port of `{addr}`"))?;
    Ok((host.to_owned(), port))
}

/// pairbus started by this benchmark: killed (SIGTERM, then waited) on drop.
struct Spawned {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts `pairbus-broker serve` on free loopback ports; returns it, its device and operator
/// planes and its data folder.
fn spawn_pairbus() -> Result<(Spawned, String, String, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("pairbus-loadgen-")
        .tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()))
        .context("temp data folder")?;
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pairbus-broker"))
        .args(["serve", "--data"])
        .arg(&data)
        .args([
            "--device-listen",
            "127.0.0.1:0",
            "--operator-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("PAIRBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pairbus-broker serve")?;
    let stdout = child.stdout.take().context("broker stdout")?;
    let spawned = Spawned { child, _dir: dir };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("broker ready line")?;
    let ready = pairbus_broker::ready::Ready::parse(&line)
        .ok_or_else(|| anyhow!("not the broker's ready line: {line:?}"))?;
    let (device, operator) = (ready.device.to_string(), ready.operator.to_string());
    Ok((spawned, device, operator, data))
}

/// Drives one connection's event loop: signals `ready` once subscribed (or connected, if
/// `subscriptions` is 0), hands every incoming publish to `on_publish`.
async fn drive(
    mut eventloop: EventLoop,
    subscriptions: usize,
    ready: oneshot::Sender<()>,
    name: String,
    mut on_publish: impl FnMut(&rumqttc::Publish) + Send,
) {
    let mut ready = Some(ready);
    let mut subacks = 0;
    let mut errors = 0u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&p),
            Ok(Event::Incoming(Packet::ConnAck(_))) if subscriptions == 0 => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subacks += 1;
                if subacks >= subscriptions {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("{name}: connection error: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn options(id: &str, host: &str, port: u16, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(inflight)
        .set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

fn connect(o: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(o, 1024);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    (client, eventloop)
}

/// What one publisher sends next.
enum Source {
    Signed(payload::Signer),
    Plain { publisher: u16, size: usize },
}

impl Source {
    fn make(&self, seq: u64) -> Vec<u8> {
        match self {
            Source::Signed(s) => s.sign(seq),
            Source::Plain { publisher, size } => payload::plain(*publisher, seq, *size),
        }
    }
}

/// How many events each publisher sends and how fast.
#[derive(Clone, Copy)]
struct Plan {
    events: Option<u64>,
    duration: Duration,
    interval: Option<Duration>,
}

async fn publish_loop(
    client: AsyncClient,
    topic: String,
    source: Source,
    index: usize,
    plan: Plan,
    tracker: Arc<Tracker>,
    start: Instant,
) -> Result<()> {
    let mut seq = 0u64;
    loop {
        match plan.events {
            Some(n) if seq >= n => break,
            None if start.elapsed() >= plan.duration => break,
            _ => {}
        }
        if let Some(every) = plan.interval {
            let due = start + every.mul_f64(seq as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        seq += 1;
        let bytes = source.make(seq);
        tracker.sent(index, seq);
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, bytes)
            .await
            .context("publish")?;
    }
    Ok(())
}

/// A pairbus principal's connection (client id = kid, a fresh token as password), subscribed
/// to its `committed/` and `rejected/` topics (two SUBACKs follow), and its key.
async fn principal(
    root: &RootSecret,
    kid: &Kid,
    host: &str,
    port: u16,
    inflight: u16,
) -> Result<(AsyncClient, EventLoop, pairbus_schemas::Key)> {
    let key = root.derive(kid);
    let mut o = options(&kid.to_string(), host, port, inflight);
    o.set_credentials(kid.to_string(), key.mint_token(kid, unix_secs() + 3600));
    let (client, eventloop) = connect(o);
    client
        .subscribe(Topic::Committed(kid.clone()).to_string(), QoS::AtLeastOnce)
        .await?;
    client
        .subscribe(Topic::Rejected(kid.clone()).to_string(), QoS::AtLeastOnce)
        .await?;
    Ok((client, eventloop, key))
}

/// Has `factory:loadgen-…` (on the operator plane `addr`) manufacture `devices`, and waits
/// until every `device.manufactured` event is confirmed.
async fn manufacture(
    root: &RootSecret,
    addr: &str,
    devices: &[(DeviceId, [u8; 32])],
    inflight: u16,
) -> Result<()> {
    let (host, port) = split_addr(addr)?;
    let kid = Kid::new(
        PrincipalKind::Factory,
        &format!("loadgen-{:08x}", fastrand::u32(..)),
    )
    .map_err(|e| anyhow!("factory kid: {e}"))?;
    let (client, mut eventloop, key) = principal(root, &kid, &host, port, inflight).await?;
    let mut subacks = 0;
    let mut confirmed = 0;
    let mut published = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while confirmed < devices.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, eventloop.poll())
            .await
            .map_err(|_| {
                anyhow!(
                    "{confirmed} of {} devices manufactured in 30 s",
                    devices.len()
                )
            })?
            .context("factory connection")?;
        match event {
            Event::Incoming(Packet::SubAck(_)) => subacks += 1,
            Event::Incoming(Packet::Publish(p)) if p.topic.contains("/committed/") => {
                confirmed += 1
            }
            Event::Incoming(Packet::Publish(p)) => bail!(
                "manufacturing refused: {}",
                String::from_utf8_lossy(&p.payload)
            ),
            _ => {}
        }
        if subacks == 2 && !published {
            published = true;
            for (seq, (device, serial_hash)) in (1..).zip(devices) {
                let bytes = payload::manufactured(&kid, &key, seq, device, *serial_hash);
                client
                    .publish(
                        Topic::In(kid.clone()).to_string(),
                        QoS::AtLeastOnce,
                        false,
                        bytes,
                    )
                    .await?;
            }
        }
    }
    let _ = client.disconnect().await;
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(args: Args) -> Result<()> {
    if args.publishers == 0 || args.publishers > 255 {
        bail!("--publishers must be 1..=255");
    }
    let mut _spawned = None;
    let (addr, operator_addr, data) = match (&args.addr, args.target) {
        (Some(a), _) => (a.clone(), args.operator_addr.clone(), args.data.clone()),
        (None, Target::Pairbus) => {
            let (s, addr, operator, data) = spawn_pairbus()?;
            _spawned = Some(s);
            (addr, Some(operator), Some(data))
        }
        (None, t) => bail!("--addr is needed for {t:?}"),
    };
    let (host, port) = split_addr(&addr)?;
    let root = match args.target {
        Target::Pairbus => {
            let data = data
                .as_deref()
                .ok_or_else(|| anyhow!("--data is needed with --addr for pairbus"))?;
            Some(pairbus_broker::datadir::load_root(data).context("fleet key")?)
        }
        _ => None,
    };
    let run_id = fastrand::u8(..);
    let tracker = Arc::new(Tracker::new(args.publishers));
    let mut drivers = Vec::new();
    let mut waits = Vec::new();
    let mut publishers = Vec::new();

    // Plain brokers: one subscriber counts what arrives.
    if root.is_none() {
        let (client, eventloop) = connect(options(
            &format!("bench-sub-{run_id}"),
            &host,
            port,
            args.inflight,
        ));
        client
            .subscribe(format!("bench/{run_id}/#"), QoS::AtLeastOnce)
            .await?;
        let (tx, rx) = oneshot::channel();
        let t = tracker.clone();
        drivers.push(tokio::spawn(drive(
            eventloop,
            1,
            tx,
            "subscriber".into(),
            move |p| match payload::parse_plain(&p.payload) {
                Some((publisher, seq)) => t.stored(publisher as usize, seq),
                None => {
                    t.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            },
        )));
        waits.push(rx);
        publishers.push(client); // kept alive
    }

    // pairbus: the publishers' devices, made by a factory first when the operator plane is known.
    let devices: Vec<(DeviceId, [u8; 32])> = match &root {
        Some(root) => (0..args.publishers)
            .map(|i| {
                let serial_hash =
                    root.serial_hash(&format!("loadgen-{run_id}-{i}-{}", fastrand::u64(..)));
                (device_id_from_serial_hash(&serial_hash), serial_hash)
            })
            .collect(),
        None => Vec::new(),
    };
    if let Some(root) = &root {
        match &operator_addr {
            Some(op) => manufacture(root, op, &devices, args.inflight).await?,
            None => eprintln!(
                "no --operator-addr: the devices are not manufactured, and the projector \
                 refuses each of their events with an unknown_device alert"
            ),
        }
    }

    let mut sources = Vec::new();
    for i in 0..args.publishers {
        let (client, eventloop, topic, source, subs) = match &root {
            Some(root) => {
                let device = devices
                    .get(i)
                    .map(|(d, _)| d.clone())
                    .ok_or_else(|| anyhow!("no device for publisher {i}"))?;
                let kid = device.kid();
                let (client, eventloop, key) =
                    principal(root, &kid, &host, port, args.inflight).await?;
                let signer = payload::Signer::new(device, key, run_id, i as u8, args.size);
                (
                    client,
                    eventloop,
                    Topic::In(kid).to_string(),
                    Source::Signed(signer),
                    2,
                )
            }
            None => {
                let (client, eventloop) = connect(options(
                    &format!("bench-pub-{run_id}-{i}"),
                    &host,
                    port,
                    args.inflight,
                ));
                (
                    client,
                    eventloop,
                    format!("bench/{run_id}/{i}"),
                    Source::Plain {
                        publisher: i as u16,
                        size: args.size,
                    },
                    0,
                )
            }
        };
        let (tx, rx) = oneshot::channel();
        let t = tracker.clone();
        let pairbus = root.is_some();
        drivers.push(tokio::spawn(drive(
            eventloop,
            subs,
            tx,
            format!("publisher {i}"),
            move |p| {
                if !pairbus {
                    return;
                }
                if p.topic.contains("/committed/") {
                    match Committed::decode(&p.payload) {
                        Ok(c) => t.stored(i, payload::seq_of(&c.id)),
                        Err(e) => eprintln!("publisher {i}: bad confirmation: {e}"),
                    }
                } else if t.rejected.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!(
                        "publisher {i}: refused: {}",
                        String::from_utf8_lossy(&p.payload)
                    );
                }
            },
        )));
        waits.push(rx);
        sources.push((client, topic, source));
    }
    for w in waits {
        tokio::time::timeout(Duration::from_secs(15), w)
            .await
            .context("timed out connecting/subscribing")?
            .context("connection task ended")?;
    }

    let n = args.publishers as u64;
    let plan_for = |i: u64| Plan {
        events: args.events.map(|e| e / n + u64::from(i < e % n)),
        duration: Duration::from_secs_f64(args.duration),
        interval: (args.rate > 0).then(|| Duration::from_secs_f64(n as f64 / args.rate as f64)),
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, (client, topic, source)) in sources.into_iter().enumerate() {
        tasks.push(tokio::spawn(publish_loop(
            client.clone(),
            topic,
            source,
            i,
            plan_for(i as u64),
            tracker.clone(),
            start,
        )));
        publishers.push(client);
    }
    // A publisher blocks in `publish()` while its connection is down (rumqttc's request queue
    // is full): with `--duration`, give up at duration + drain and count the rest as lost.
    let give_up = args
        .events
        .is_none()
        .then(|| start + Duration::from_secs_f64(args.duration + args.drain));
    let mut stuck = 0;
    for mut t in tasks {
        let joined = match give_up {
            Some(at) => match tokio::time::timeout_at(at.into(), &mut t).await {
                Ok(j) => j,
                Err(_) => {
                    t.abort();
                    stuck += 1;
                    continue;
                }
            },
            None => t.await,
        };
        joined.context("publisher task")??;
    }
    if stuck > 0 {
        eprintln!("{stuck} publisher(s) still blocked at duration + drain: stopped");
    }
    let sending = start.elapsed();
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain);
    while !tracker.all_stored() && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = tracker.summary(start);
    if let Some(path) = &args.latencies {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        tracker
            .write_latencies(start, &mut out)
            .and_then(|()| std::io::Write::flush(&mut out))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for d in drivers {
        d.abort();
    }
    let stored_per_s = s.stored as f64 / s.elapsed.as_secs_f64().max(1e-9);
    let target = format!("{:?}", args.target).to_lowercase();
    let mode = if args.rate == 0 {
        "flat".to_owned()
    } else {
        format!("{}/s", args.rate)
    };
    println!(
        "{target} {mode} publishers={} size={}: published {} in {:.2} s, stored {} ({:.0}/s), \
         lost {}, duplicates {}, rejected {}, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms, \
         load {}",
        args.publishers,
        args.size,
        s.published,
        sending.as_secs_f64(),
        s.stored,
        stored_per_s,
        s.lost,
        s.duplicates,
        s.rejected,
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        load_average()
    );
    println!(
        "RESULT {}",
        serde_json::json!({
            "label": args.label,
            "target": target,
            "mode": mode,
            "publishers": args.publishers,
            "size": args.size,
            "published": s.published,
            "stored": s.stored,
            "lost": s.lost,
            "duplicates": s.duplicates,
            "rejected": s.rejected,
            "send_s": sending.as_secs_f64(),
            "stored_per_s": stored_per_s,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "max_ms": s.max_ms,
            "load": load_average(),
        })
    );
    for c in publishers {
        let _ = c.try_disconnect();
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(run(args))
}
