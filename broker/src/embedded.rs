//! The projector embedded in `serve`: every committed record is folded in-process, the audit
//! views are published on the operator plane, and events are relayed to the devices they
//! concern.
//!
//! The projections are persisted in their own sled database, `<data>/projections`
//! ([`pairbus_projector::store`]: the views and a checkpoint, the last applied seq and hash,
//! written in one atomic batch). They are saved every [`SAVE_EVERY_RECORDS`] records, at
//! least every [`SAVE_EVERY`] while records come, and at shutdown. At start they resume from
//! the checkpoint and fold only the records after it; they are rebuilt from genesis only when
//! there is no checkpoint, when it is ahead of the log, or when its hash is not the log's hash
//! at that position (another log, e.g. a data folder restored from a backup).

use crate::ingest::Publish;
use crate::log::{LogError, LogStore};
use crate::mqtt::auth::PlaneKind;
use crate::relay;
use pairbus_projector::publish::publications;
use pairbus_projector::store::{Persistent, Store, StoreError};
use pairbus_projector::{Config, Projections, Projector, Status};
use pairbus_schemas::{Event, Record, RootSecret, Topic};
use std::path::Path;
use std::time::{Duration, Instant};

/// Records applied between two saves at most.
pub const SAVE_EVERY_RECORDS: usize = 100_000;
/// Time between two saves at most while records come. A save writes the changed views and
/// the fold's whole bookkeeping (one JSON value, every principal's seq): not at every commit.
/// After a crash, at most this much of the log is folded again at start.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// Why the embedded projections could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Reading the log failed.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// The projections store failed.
    #[error("projections store: {0}")]
    Store(#[from] StoreError),
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

    /// Saves what was applied since the last save (at shutdown; also done as records come).
    pub fn save(&mut self) -> Result<(), StoreError> {
        self.saved_at = Instant::now();
        self.fold.commit()
    }

    /// Folds one newly committed record, publishes what changed and relays the event.
    pub fn on_commit(&mut self, record: &Record, event: &Event, out: &mut dyn Publish) {
        let targets = relay::targets(event, self.state());
        let fx = match self.fold.apply(record) {
            Ok(fx) => fx,
            Err(e) => {
                // The views in memory are right; only their save failed (retried later).
                tracing::error!(error = %e, seq = record.seq, "saving the projections failed");
                Vec::new()
            }
        };
        if self.saved_at.elapsed() >= SAVE_EVERY {
            if let Err(e) = self.save() {
                tracing::error!(error = %e, "saving the projections failed");
            }
        }
        let state = &self.fold.projections;
        let accepted = state
            .trails
            .get(&event.device)
            .and_then(|t| t.last())
            .is_some_and(|e| e.seq == record.seq && e.status == Status::Accepted);
        // Views first, then relays. The two planes are separate routers, so this narrows but
        // does not close the window in which a device has heard a relay while an operator still
        // reads the previous retained view; the new view follows within the same commit.
        for p in publications(state, &fx, std::slice::from_ref(record)) {
            out.publish(
                PlaneKind::Operator,
                p.topic.to_string(),
                p.payload,
                p.retain,
            );
        }
        if accepted {
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
