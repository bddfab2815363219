//! The projector embedded in `serve`: every committed record is folded in-process, the audit
//! views are published on the operator plane, and events are relayed to the devices they
//! concern.
//!
//! The projections are persisted in their own sled database, `<data>/projections`
//! ([`pairbus_projector::store`]: the views and a checkpoint, the last applied seq and hash,
//! written in one atomic batch). They are saved every [`SAVE_EVERY_RECORDS`] records, at
//! least every [`SAVE_EVERY`] while records come, and at shutdown. The committer only
//! prepares a save (the changed views as one batch); a thread of its own, `pairbus-save`,
//! writes the batches in order, so the fold goes on meanwhile. If a write fails, that thread
//! writes nothing more until a restart, which resumes from the last checkpoint written (the
//! views in memory stay right; the records after it are folded again at start). At start they resume from
//! the checkpoint and fold only the records after it; they are rebuilt from genesis only when
//! there is no checkpoint, when it is ahead of the log, or when its hash is not the log's hash
//! at that position (another log, e.g. a data folder restored from a backup).

use crate::ingest::Publish;
use crate::log::{LogError, LogStore};
use crate::mqtt::auth::PlaneKind;
use crate::relay;
use pairbus_projector::publish::publications;
use pairbus_projector::store::{Persistent, PreparedSave, Store, StoreError};
use pairbus_projector::{Config, Projections, Projector, Status};
use pairbus_schemas::{Event, Record, RootSecret, Topic};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records applied between two saves at most. The committer copies what changed for each save
/// (the save thread serialises and writes it): small saves keep that pause short.
pub const SAVE_EVERY_RECORDS: usize = 20_000;
/// Time between two saves at most while records come. A save writes the changed views and
/// the fold's whole bookkeeping (one JSON value, every principal's seq): not at every commit.
/// After a crash, at most this much of the log is folded again at start.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Why the embedded projections could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Reading the log failed.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// The projections store failed.
    #[error("projections store: {0}")]
    Store(#[from] StoreError),
    /// A save written by the `pairbus-save` thread failed (or that thread is gone).
    #[error("saving the projections: {0}")]
    Save(String),
    /// The `pairbus-save` thread could not be started.
    #[error("starting the projections' save thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// What the `pairbus-save` thread is asked to do.
enum SaveJob {
    /// Write this save (after the ones before it).
    Write(Box<PreparedSave>),
    /// Answer once everything asked before is written: `Err` if a write failed.
    Sync(Sender<Result<(), String>>),
}

/// Writes the prepared saves in order; after a failure, writes nothing more (a later save
/// holds only the changes since the failed one, so writing it would record a checkpoint
/// whose views are incomplete).
fn save_loop(store: Store, jobs: Receiver<SaveJob>) {
    let mut failed: Option<String> = None;
    for job in jobs {
        match job {
            SaveJob::Write(save) => {
                if failed.is_some() {
                    continue;
                }
                let seq = save.last_seq();
                if let Err(e) = store.write(*save) {
                    tracing::error!(
                        error = %e,
                        seq,
                        "saving the projections failed; no more saves until a restart, \
                         which resumes from the last saved checkpoint"
                    );
                    failed = Some(e.to_string());
                }
            }
            SaveJob::Sync(reply) => {
                let _ = reply.send(failed.clone().map_or(Ok(()), Err));
            }
        }
    }
}

/// How the projections were brought up to the log's head at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// The checkpoint they resumed from (0: rebuilt from genesis).
    pub from: u64,
    /// Records folded to reach the head.
    pub folded: u64,
}

/// The embedded projector's state.
pub struct Embedded {
    fold: Persistent,
    saved_at: Instant,
    resumed: Resumed,
    /// The `pairbus-save` thread and its queue (taken only on drop).
    saver: Option<(SyncSender<SaveJob>, JoinHandle<()>)>,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Let the save thread finish the queued writes before the store closes.
        if let Some((jobs, thread)) = self.saver.take() {
            drop(jobs);
            let _ = thread.join();
        }
    }
}

impl Embedded {
    /// Opens the projections persisted in `dir` and folds the log records after their
    /// checkpoint (all of them if they must be rebuilt, see the module documentation).
    pub fn open(root: RootSecret, log: &dyn LogStore, dir: &Path) -> Result<Self, EmbeddedError> {
        let store = Store::open(dir)?;
        let projector = Projector::new(Config::default(), root);
        let mut fold = Persistent::with_store(projector, store, SAVE_EVERY_RECORDS)?;
        let head = log.head().seq;
        let checkpoint = fold.projections.last_seq;
        let usable = checkpoint == 0
            || (checkpoint <= head
                && log
                    .get(checkpoint)?
                    .is_some_and(|r| r.hash == fold.projections.last_hash));
        if !usable {
            tracing::warn!(
                checkpoint,
                head,
                "the projections' checkpoint is not a position of this log: rebuilding them from genesis"
            );
            fold.rebuild_from_scratch()?;
        }
        let from = fold.projections.last_seq;
        let mut next = from + 1;
        while next <= head {
            let end = (next + 10_000).min(head + 1);
            for r in log.range(next..end)? {
                fold.apply(&r)?;
            }
            next = end;
        }
        fold.commit()?;
        // From here on saves are prepared by `on_commit` and written by the save thread.
        fold.set_save_every(usize::MAX);
        let store = fold.store().clone();
        // A few saves may wait; more and the committer waits for the writer.
        let (jobs, queue) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("pairbus-save".into())
            .spawn(move || save_loop(store, queue))?;
        let resumed = Resumed {
            from,
            folded: head - from,
        };
        tracing::info!(
            resumed_from = from,
            folded = resumed.folded,
            devices = fold.projections.devices.len(),
            "projections resumed from their checkpoint"
        );
        Ok(Embedded {
            fold,
            saved_at: Instant::now(),
            resumed,
            saver: Some((jobs, thread)),
        })
    }

    /// How the projections were brought up to date at start.
    pub fn resumed(&self) -> Resumed {
        self.resumed
    }

    /// The current projections.
    pub fn state(&self) -> &Projections {
        &self.fold.projections
    }

    /// Saves what was applied since the last save and waits until it and every save before
    /// it are written (at shutdown; as records come, saves are written in the background).
    pub fn save(&mut self) -> Result<(), EmbeddedError> {
        self.save_in_background();
        let (reply, answer) = channel();
        let gone = || EmbeddedError::Save("the save thread is gone".into());
        let (jobs, _) = self.saver.as_ref().ok_or_else(gone)?;
        jobs.send(SaveJob::Sync(reply)).map_err(|_| gone())?;
        answer
            .recv()
            .map_err(|_| gone())?
            .map_err(EmbeddedError::Save)
    }

    /// Prepares the save of what was applied since the last one and queues it for the save
    /// thread (waits only if that thread is two saves behind).
    fn save_in_background(&mut self) {
        self.saved_at = Instant::now();
        let Some(save) = self.fold.take_save() else {
            return;
        };
        let queued = self
            .saver
            .as_ref()
            .is_some_and(|(jobs, _)| jobs.send(SaveJob::Write(Box::new(save))).is_ok());
        if !queued {
            tracing::error!("the projections' save thread is gone; nothing saved until restart");
        }
    }

    /// Folds the records of one group commit (consecutive, in log order; `events[i]` is
    /// `records[i]`'s decoded event), publishes what changed and relays the events.
    ///
    /// The audit trail entries and alerts are published one per effect, in log order; the
    /// retained views (device cards, the graph) once per commit for each one that changed,
    /// taken from the projections after the whole commit ([`publications`]): a retained
    /// message keeps only its last value, so this is what any subscriber holds after the
    /// commit, but a live subscriber no longer sees a card's intermediate states within one
    /// commit (the trail entries on `audit/events/<id>` show every step).
    pub fn on_commit(&mut self, records: &[Record], events: &[Event], out: &mut dyn Publish) {
        let mut fx = Vec::new();
        // (relay targets, record) of each accepted event, in log order.
        let mut relays = Vec::new();
        for (record, event) in records.iter().zip(events) {
            // Who the event concerns is decided by the state before it.
            let targets = relay::targets(event, self.state());
            match self.fold.apply(record) {
                Ok(more) => fx.extend(more),
                Err(e) => {
                    // Unreachable: this fold never saves by itself (`set_save_every`).
                    tracing::error!(error = %e, seq = record.seq, "saving the projections failed");
                }
            }
            if targets.is_empty() {
                continue;
            }
            let accepted = self
                .state()
                .trails
                .get(&event.device)
                .and_then(|t| t.last())
                .is_some_and(|e| e.seq == record.seq && e.status == Status::Accepted);
            if accepted {
                relays.push((targets, record));
            }
        }
        if self.fold.unsaved() >= SAVE_EVERY_RECORDS || self.saved_at.elapsed() >= SAVE_EVERY {
            self.save_in_background();
        }
        // Views first, then relays. The two planes are separate routers, so this narrows but
        // does not close the window in which a device has heard a relay while an operator still
        // reads the previous retained view; the new views are handed over first.
        for p in publications(&self.fold.projections, &fx, records) {
            out.publish(
                PlaneKind::Operator,
                p.topic.to_string(),
                p.payload,
                p.retain,
            );
        }
        for (targets, record) in relays {
            for d in targets {
                out.publish(
                    PlaneKind::Device,
                    Topic::Cmd(d).to_string(),
                    record.event.clone(),
                    false,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogConfig, SledLog, VerifiedEvent};
    use pairbus_projector::testkit::LogBuilder;
    use pairbus_schemas::{open_event, MAX_EVENT_SIZE};
    use std::collections::BTreeMap;

    /// A log holding the events of `b`'s first records, received at `at`.
    fn log_of(dir: &Path, b: &LogBuilder, upto: usize, at: u64) -> SledLog {
        let root = b.root();
        let log = SledLog::open(LogConfig::new(dir), root.clone()).unwrap();
        let events: Vec<VerifiedEvent> = b.records[..upto]
            .iter()
            .map(|r| {
                let ev = open_event(&r.event, MAX_EVENT_SIZE, |k| Some(root.derive(k))).unwrap();
                VerifiedEvent::from_event(&ev, r.event.clone())
            })
            .collect();
        log.append_batch(events, at).unwrap();
        log
    }

    fn story() -> LogBuilder {
        let mut b = LogBuilder::new();
        let m = b.configured(1, "a");
        let s = b.configured(2, "a");
        b.pair(&m, &s);
        b
    }

    /// Everything published, in order.
    #[derive(Default)]
    struct Sent(Vec<(PlaneKind, String, Vec<u8>, bool)>);

    impl Publish for Sent {
        fn publish(&mut self, plane: PlaneKind, topic: String, payload: Vec<u8>, retain: bool) {
            self.0.push((plane, topic, payload, retain));
        }
    }

    impl Sent {
        /// The messages of one kind (retained or not) on each (plane, topic), in order.
        fn by_topic(&self, retained: bool) -> BTreeMap<(String, String), Vec<Vec<u8>>> {
            let mut m: BTreeMap<(String, String), Vec<Vec<u8>>> = BTreeMap::new();
            for (plane, topic, payload, retain) in &self.0 {
                if *retain == retained {
                    m.entry((plane.as_str().to_owned(), topic.clone()))
                        .or_default()
                        .push(payload.clone());
                }
            }
            m
        }
    }

    #[test]
    fn one_commit_publishes_every_trail_entry_and_relay_and_each_changed_view_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = story();
        let m = pairbus_projector::testkit::device(1);
        let s = pairbus_projector::testkit::device(2);
        b.command(&m, &s, 1000);
        b.action(&s, "on");
        let root = b.root();
        let events: Vec<Event> = b
            .records
            .iter()
            .map(|r| open_event(&r.event, MAX_EVENT_SIZE, |k| Some(root.derive(k))).unwrap())
            .collect();
        let log = log_of(&dir.path().join("log"), &b, 0, b.now);
        // The same records folded one commit per event, and all in one commit.
        let mut single = Embedded::open(root.clone(), &log, &dir.path().join("p1")).unwrap();
        let mut each = Sent::default();
        for (r, e) in b.records.iter().zip(&events) {
            single.on_commit(std::slice::from_ref(r), std::slice::from_ref(e), &mut each);
        }
        let mut batched = Embedded::open(root, &log, &dir.path().join("p2")).unwrap();
        let mut once = Sent::default();
        batched.on_commit(&b.records, &events, &mut once);
        assert_eq!(single.state(), batched.state());
        // Trail entries, alerts and relays: the same messages in the same order per topic.
        let live = each.by_topic(false);
        assert_eq!(live, once.by_topic(false));
        assert!(live.contains_key(&("device".into(), format!("pairbus/v1/cmd/{s}"))));
        assert!(live.contains_key(&("operator".into(), format!("pairbus/v1/audit/events/{m}"))));
        // Retained views: one per changed view, equal to the last one of the per-event commits.
        let views = each.by_topic(true);
        let last: BTreeMap<_, _> = views
            .iter()
            .map(|(t, v)| (t.clone(), vec![v.last().unwrap().clone()]))
            .collect();
        assert_eq!(once.by_topic(true), last);
        assert!(
            views.values().any(|v| v.len() > 1),
            "some view changed twice"
        );
        assert!(last.contains_key(&("operator".into(), "pairbus/v1/audit/graph".into())));
        // Views before relays.
        let first_relay = once
            .0
            .iter()
            .position(|x| x.0 == PlaneKind::Device)
            .unwrap();
        assert!(once.0[first_relay..]
            .iter()
            .all(|x| x.0 == PlaneKind::Device));
    }

    #[test]
    fn saves_written_by_the_save_thread_are_resumed_from() {
        let dir = tempfile::tempdir().unwrap();
        let b = story();
        let n = b.records.len();
        let root = b.root();
        let empty = log_of(&dir.path().join("empty"), &b, 0, b.now);
        let full = log_of(&dir.path().join("full"), &b, n, b.now);
        let records = full.range(1..n as u64 + 1).unwrap();
        let events: Vec<Event> = records
            .iter()
            .map(|r| open_event(&r.event, MAX_EVENT_SIZE, |k| Some(root.derive(k))).unwrap())
            .collect();
        let mut e = Embedded::open(root.clone(), &empty, &dir.path().join("p")).unwrap();
        e.on_commit(&records[..2], &events[..2], &mut Sent::default());
        e.save_in_background();
        e.on_commit(&records[2..], &events[2..], &mut Sent::default());
        e.save().unwrap();
        let state = e.state().clone();
        drop(e);
        let e = Embedded::open(root, &full, &dir.path().join("p")).unwrap();
        assert_eq!(
            e.resumed(),
            Resumed {
                from: n as u64,
                folded: 0
            },
            "both saves written, in order"
        );
        assert_eq!(e.state(), &state);
    }

    #[test]
    fn resumes_from_the_checkpoint_and_rebuilds_only_for_another_log() {
        let dir = tempfile::tempdir().unwrap();
        let b = story();
        let n = b.records.len();
        let root = b.root();
        let whole = {
            let log = log_of(&dir.path().join("log"), &b, n, b.now);
            let full = Projector::new(Config::default(), root.clone())
                .rebuild(&log.range(1..n as u64 + 1).unwrap());
            let e = Embedded::open(root.clone(), &log, &dir.path().join("p")).unwrap();
            assert_eq!(
                e.resumed(),
                Resumed {
                    from: 0,
                    folded: n as u64
                }
            );
            assert_eq!(e.state(), &full);
            drop(e);
            let e = Embedded::open(root.clone(), &log, &dir.path().join("p")).unwrap();
            assert_eq!(
                e.resumed(),
                Resumed {
                    from: n as u64,
                    folded: 0
                },
                "nothing folded again"
            );
            assert_eq!(e.state(), &full);
            full
        };
        // The same projections over another (shorter) log: its checkpoint is ahead, rebuild.
        let short = log_of(&dir.path().join("log2"), &b, n - 2, b.now);
        let e = Embedded::open(root.clone(), &short, &dir.path().join("p")).unwrap();
        assert_eq!(e.resumed().from, 0);
        assert_eq!(e.state().last_seq, n as u64 - 2);
        assert_ne!(e.state(), &whole);
        drop(e);
        // A log as long but different (other times, other hashes): rebuild.
        let log3 = log_of(&dir.path().join("log3"), &b, n, b.now + 1);
        let e = Embedded::open(root, &log3, &dir.path().join("p")).unwrap();
        assert_eq!(e.resumed().from, 0);
        assert_eq!(e.state().last_hash, log3.head().hash);
    }
}
