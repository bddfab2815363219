//! Verified ingest: reads every `in/` topic of both planes through local links, checks each
//! message ([`check`]), appends the accepted ones to the log in group commits, and only then
//! answers: `committed/<kind>/<id>` to the principal and the record on `pairbus/v1/log`, or
//! `rejected/<kind>/<id>` with the reason.
//!
//! Threads (plain threads, never tokio workers: rumqttd's local links block):
//! - one *reader* per plane: drains its link (calling `ready()` after `Unschedule`, without
//!   which rumqttd stops delivering for good) into one bounded channel, and counts each event
//!   into the back-pressure [`Gate`] (the front doors stop reading from clients while too many
//!   events wait: rumqttd itself would drop them once its `in/` log is full);
//! - one *committer*: takes everything waiting (up to `max_batch`), checks it, makes one
//!   durable group commit, then publishes the answers: first the `committed/` confirmations
//!   (and refusals), then the log records and whatever the commit hook publishes, each group
//!   handed to the routers at once (one router wake-up per plane, not one per packet).
//!   Nothing is confirmed before `append_batch` has returned, i.e. before the flush and the
//!   real sync.

pub mod check;
pub mod gaps;
pub mod keys;

use crate::journal::Journal;
use crate::log::{AppendOutcome, LogStore};
use crate::metrics::Metrics;
use crate::mqtt::auth::PlaneKind;
use crate::mqtt::gate::Gate;
use crate::mqtt::plane::{next_forward, Plane, PlaneError};
use check::Checked;
use pairbus_schemas::messages::{CommitStatus, Committed, RejectReason, Rejection};
use pairbus_schemas::topics::{filters, Topic};
use pairbus_schemas::{Event, Kid, Record, RootSecret, MAX_EVENT_SIZE};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish as RouterPublish};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Called once per group commit with the newly committed records (consecutive seqs, in log
/// order), their decoded events (`events[i]` is `records[i]`'s), and a way to publish (the
/// embedded projector and the relay use it). Never called with an empty commit.
pub type CommitHook = Box<dyn FnMut(&[Record], &[Event], &mut dyn Publish) + Send>;

/// Publishing from the broker's own links.
pub trait Publish {
    /// Publishes `payload` on `topic` of `plane` (QoS 0 inside the router), retained if asked.
    fn publish(&mut self, plane: PlaneKind, topic: String, payload: Vec<u8>, retain: bool);
}

/// Settings of the ingest pipeline.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Most events in one group commit.
    pub max_batch: usize,
    /// Size limit of one envelope.
    pub max_event_size: usize,
    /// Capacity of the channel between readers and the committer.
    pub queue: usize,
    /// Events read but not yet committed at which the planes' front doors stop reading from
    /// clients (back-pressure; see [`crate::mqtt::gate`]). Below `queue`.
    pub pause_at: usize,
    /// ... and at which they read again.
    pub resume_at: usize,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_batch: 1024,
            max_event_size: MAX_EVENT_SIZE,
            queue: 65_536,
            // Four full group commits waiting keep the committer busy while the front doors
            // refill; more only adds latency under a flood (BENCHMARKS.md).
            pause_at: 4096,
            resume_at: 2048,
        }
    }
}

struct Inbound {
    plane: PlaneKind,
    topic: bytes::Bytes,
    payload: bytes::Bytes,
}

/// What the pipeline works with.
pub struct IngestParts {
    /// Where accepted events are appended.
    pub log: Arc<dyn LogStore>,
    /// To derive every principal's key.
    pub root: RootSecret,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Where refusals are kept.
    pub journal: Arc<Journal>,
    /// Back-pressure to the planes' front doors: every event read is admitted, every event
    /// committed or refused is settled. `None`: no back-pressure.
    pub gate: Option<Gate>,
}

/// The running pipeline.
pub struct Ingest {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The committer's way out: one publishing link per plane, buffered. rumqttd's `LinkTx`
/// wakes the router thread for every packet it is given; [`Outlets::flush`] instead appends
/// everything a group commit produced to the link's buffer at once and wakes the router once
/// per plane (the router drains the whole buffer on each wake-up).
struct Outlets {
    device: LinkTx,
    operator: LinkTx,
    device_pending: Vec<Packet>,
    operator_pending: Vec<Packet>,
}

impl Outlets {
    fn new(device: LinkTx, operator: LinkTx) -> Self {
        Outlets {
            device,
            operator,
            device_pending: Vec::new(),
            operator_pending: Vec::new(),
        }
    }

    /// Hands every pending packet to the routers, in order, with one wake-up per plane.
    fn flush(&mut self) {
        for (link, pending) in [
            (&mut self.device, &mut self.device_pending),
            (&mut self.operator, &mut self.operator_pending),
        ] {
            let Some(last) = pending.pop() else {
                continue;
            };
            let count = pending.len() + 1;
            if !pending.is_empty() {
                link.buffer().extend(pending.drain(..));
            }
            // `send` queues `last` behind the others and notifies the router; the future is
            // ready at once (it only blocks while the router's queue is full).
            if let Err(e) = futures_executor::block_on(link.send(last)) {
                tracing::error!(error = %e, count, "local publish failed");
            }
        }
    }
}

impl Publish for Outlets {
    fn publish(&mut self, plane: PlaneKind, topic: String, payload: Vec<u8>, retain: bool) {
        let pending = match plane {
            PlaneKind::Device => &mut self.device_pending,
            PlaneKind::Operator => &mut self.operator_pending,
        };
        let publish = RouterPublish::new(
            bytes::Bytes::from(topic),
            bytes::Bytes::from(payload),
            retain,
        );
        pending.push(Packet::Publish(publish, None));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ingest {
    /// Subscribes to the `in/` topics of both planes and starts the threads.
    pub fn start(
        device: &Plane,
        operator: &Plane,
        parts: IngestParts,
        settings: IngestSettings,
        hook: Option<CommitHook>,
    ) -> Result<Self, PlaneError> {
        let (dev_tx, dev_rx) = device.link("pairbus-ingest")?;
        let (op_tx, op_rx) = operator.link("pairbus-ingest")?;
        let mut dev_tx = dev_tx;
        let mut op_tx = op_tx;
        let subscribe = |tx: &mut LinkTx, filter: &str| {
            tx.subscribe(filter)
                .map(|_| ())
                .map_err(|e| PlaneError::Link {
                    plane: "ingest",
                    client_id: filter.to_owned(),
                    reason: e.to_string(),
                })
        };
        subscribe(&mut dev_tx, "pairbus/v1/in/device/+")?;
        subscribe(&mut op_tx, "pairbus/v1/in/operator/+")?;
        subscribe(&mut op_tx, "pairbus/v1/in/factory/+")?;
        debug_assert_eq!(filters::ALL_IN, "pairbus/v1/in/+/+");

        let IngestParts {
            log,
            root,
            metrics,
            journal,
            gate,
        } = parts;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel(settings.queue);
        let mut threads = Vec::new();
        for (plane, link) in [(PlaneKind::Device, dev_rx), (PlaneKind::Operator, op_rx)] {
            let (tx, stop, metrics, gate) =
                (tx.clone(), stop.clone(), metrics.clone(), gate.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pairbus-read-{}", plane.as_str()))
                    .spawn(move || read_loop(plane, link, tx, stop, metrics, gate))
                    .map_err(|e| PlaneError::Runtime("ingest", e))?,
            );
        }
        drop(tx);
        let outlets = Outlets::new(dev_tx, op_tx);
        threads.push(
            std::thread::Builder::new()
                .name("pairbus-commit".into())
                .spawn(move || {
                    Committer {
                        rx,
                        journal,
                        limiter: LogLimiter {
                            window: Instant::now(),
                            logged: 0,
                            suppressed: 0,
                        },
                        outlets,
                        log,
                        keys: keys::KeyCache::new(root, 100_000),
                        metrics,
                        settings,
                        hook,
                        gate,
                    }
                    .run()
                })
                .map_err(|e| PlaneError::Runtime("ingest", e))?,
        );
        Ok(Ingest { stop, threads })
    }

    /// Stops after committing everything already read: each reader stops once its link has
    /// been quiet for [`POLL`] (stop the planes' listeners first, so that nothing new comes
    /// in), and the committer once the readers are gone and their queue is empty. Every event
    /// rumqttd acknowledged before that is committed and answered.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

const POLL: Duration = Duration::from_millis(100);

fn read_loop(
    plane: PlaneKind,
    mut link: LinkRx,
    tx: SyncSender<Inbound>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    gate: Option<Gate>,
) {
    let span = tracing::info_span!("reader", plane = plane.as_str());
    let _enter = span.enter();
    let mut gaps = gaps::Gaps::default();
    loop {
        match next_forward(&mut link, POLL) {
            Ok(Some(forward)) => {
                let publish = forward.publish;
                if let Some((_, offset)) = forward.cursor {
                    let lost = gaps.observe(gaps::filter_key(&publish.topic), offset);
                    if lost > 0 {
                        metrics.router_dropped.fetch_add(lost, Ordering::Relaxed);
                        tracing::error!(
                            lost,
                            "the MQTT router dropped acknowledged events before ingest read \
                             them (ingest too slow for the burst); devices must re-send them"
                        );
                    }
                }
                let mut msg = Inbound {
                    plane,
                    topic: publish.topic,
                    payload: publish.payload,
                };
                // Counted before the committer can see it, so that its `settled` never comes
                // first (the count would drift).
                if let Some(g) = &gate {
                    g.admitted(1);
                }
                // Backpressure: wait for the committer rather than drop (it runs until every
                // reader is gone, so this ends).
                loop {
                    match tx.try_send(msg) {
                        Ok(()) => break,
                        Err(TrySendError::Full(m)) => {
                            msg = m;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
            }
            // Quiet for a whole poll: when stopping, everything acknowledged has been read.
            Ok(None) if stop.load(Ordering::Relaxed) => return,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "local link closed");
                return;
            }
        }
    }
}

/// At most [`LOGGED_REFUSALS_PER_SEC`] refusals are logged per second; the rest are counted and
/// summarised, so a flood cannot flood the logs (every refusal is still counted and journaled).
const LOGGED_REFUSALS_PER_SEC: u32 = 20;

struct LogLimiter {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "refusals not logged in the last second (rate limit)"
                );
            }
            self.window = Instant::now();
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < LOGGED_REFUSALS_PER_SEC {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

struct Committer {
    rx: Receiver<Inbound>,
    journal: Arc<Journal>,
    limiter: LogLimiter,
    outlets: Outlets,
    log: Arc<dyn LogStore>,
    keys: keys::KeyCache,
    metrics: Arc<Metrics>,
    settings: IngestSettings,
    hook: Option<CommitHook>,
    gate: Option<Gate>,
}

impl Committer {
    /// Commits until every reader has stopped and their queue is empty.
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        loop {
            match self.rx.recv_timeout(POLL) {
                Ok(m) => batch.push(m),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < self.settings.max_batch {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.commit(std::mem::take(&mut batch));
        }
    }

    /// Checks, appends and answers one batch; every answer is handed to the routers before
    /// this returns.
    fn commit(&mut self, batch: Vec<Inbound>) {
        let size = batch.len();
        let span = tracing::info_span!("group_commit", size);
        let _enter = span.enter();
        self.commit_batch(batch);
        self.outlets.flush();
        if let Some(g) = &self.gate {
            g.settled(size);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Inbound>) {
        let mut accepted = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for m in batch {
            self.metrics.received.fetch_add(1, Ordering::Relaxed);
            match check::check(
                m.plane,
                &m.topic,
                m.payload.to_vec(),
                &mut self.keys,
                self.settings.max_event_size,
            ) {
                Checked::Accepted { event, verified } => {
                    accepted.push(verified);
                    events.push(*event);
                }
                Checked::Refused {
                    principal,
                    rejection,
                } => self.reject(&principal, rejection),
                Checked::Ignored => {}
            }
        }
        if accepted.is_empty() {
            return;
        }
        let size = accepted.len();
        let started = Instant::now();
        let result = self.log.append_batch(accepted, now_ms());
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(size as f64);
        let outcomes = match result {
            Ok(o) => o,
            Err(e) => {
                // Nothing is acknowledged: the principals keep their events and re-send.
                self.metrics.commit_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "group commit failed; nothing acknowledged");
                return;
            }
        };
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        // Confirmations first, handed to the routers before the log records and the embedded
        // projector's fold, so that they do not wait for the rest of the batch.
        let mut records = Vec::with_capacity(outcomes.len());
        let mut committed = Vec::with_capacity(outcomes.len());
        for (event, outcome) in events.into_iter().zip(outcomes) {
            let _span = tracing::debug_span!("event", id = %event.id, src = %event.src).entered();
            match outcome {
                AppendOutcome::Committed(record) => {
                    self.metrics.committed.fetch_add(1, Ordering::Relaxed);
                    self.confirm(&event, record.seq, CommitStatus::Committed);
                    records.push(record);
                    committed.push(event);
                }
                AppendOutcome::AlreadyCommitted(seq) => {
                    self.metrics
                        .already_committed
                        .fetch_add(1, Ordering::Relaxed);
                    self.confirm(&event, seq, CommitStatus::AlreadyCommitted);
                }
                AppendOutcome::SeqConflict { existing } => self.reject(
                    &event.src,
                    Rejection {
                        reason: RejectReason::SeqConflict,
                        detail: format!(
                            "seq {} of {} is already taken by event {existing}",
                            event.seq, event.src
                        ),
                        event_id: Some(event.id.to_hex()),
                    },
                ),
                AppendOutcome::Revoked => self.reject(
                    &event.src,
                    Rejection {
                        reason: RejectReason::Revoked,
                        detail: format!("{} is revoked", event.src),
                        event_id: Some(event.id.to_hex()),
                    },
                ),
            }
        }
        self.outlets.flush();
        if records.is_empty() {
            return;
        }
        // Then the records, in log order, and the fold of the whole commit.
        let log_topic = Topic::Log.to_string();
        for record in &records {
            self.outlets.publish(
                PlaneKind::Operator,
                log_topic.clone(),
                record.encode(),
                false,
            );
        }
        if let Some(hook) = self.hook.as_mut() {
            hook(&records, &committed, &mut self.outlets);
        }
    }

    fn confirm(&mut self, event: &Event, seq: u64, status: CommitStatus) {
        let Some(plane) = PlaneKind::of(event.src.kind()) else {
            return;
        };
        let msg = Committed {
            id: event.id,
            seq,
            status,
        };
        self.outlets.publish(
            plane,
            Topic::Committed(event.src.clone()).to_string(),
            msg.encode(),
            false,
        );
    }

    fn reject(&mut self, principal: &Kid, rejection: Rejection) {
        self.metrics.reject(rejection.reason);
        if self.limiter.allow() {
            tracing::warn!(%principal, reason = %rejection.reason, detail = %rejection.detail, "event refused");
        }
        let at = now_ms();
        if let Err(e) = self.journal.record(at, principal, &rejection) {
            tracing::error!(error = %e, "refusals journal write failed");
        }
        // The embedded projector's alert for it (the fold never sees a refused event).
        let alert = pairbus_projector::refusals::alert(principal, &rejection, at);
        if let Ok(json) = serde_json::to_vec(&alert) {
            self.outlets.publish(
                PlaneKind::Operator,
                Topic::AuditAlerts.to_string(),
                json,
                false,
            );
        }
        let topic = Topic::Rejected(principal.clone()).to_string();
        let json = rejection.to_json().into_bytes();
        if let Some(plane) = PlaneKind::of(principal.kind()) {
            if plane == PlaneKind::Device {
                // The device and the operators both hear about it.
                self.outlets
                    .publish(PlaneKind::Device, topic.clone(), json.clone(), false);
            }
        }
        self.outlets
            .publish(PlaneKind::Operator, topic, json, false);
    }
}
