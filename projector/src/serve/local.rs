//! The standalone projector's own sled database: the persisted projections (tree `projector`,
//! see [`crate::store`]), its copy of the log records (tree `records`: `history` details and
//! `replay`) and the broker refusals it heard (tree `refusals`, bounded), shared between the
//! follower and the HTTP API as a [`Backend`].

use crate::api::{Backend, MAX_REFUSAL_ALERTS};
use crate::follow::Counters;
use crate::model::Alert;
use crate::store::{Persistent, StoreError};
use crate::Projections;
use pairbus_schemas::record::MAX_RECORD_SIZE;
use pairbus_schemas::{Record, RootSecret};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the follower reports (for `/healthz` and `/metrics`).
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The follower's mode: `disconnected`, `catching_up`, `live` or `halted`.
    pub mode: &'static str,
    /// Why it halted.
    pub halted: Option<String>,
    /// Its counters.
    pub counters: Counters,
    /// Messages that could not be decoded (records, replay markers, refusals), dropped.
    pub garbage: u64,
    /// Refusals heard on `pairbus/v1/rejected/#`.
    pub refusals: u64,
}

struct Shared {
    persistent: Mutex<Persistent>,
    records: sled::Tree,
    refusals: sled::Tree,
    root: RootSecret,
    replays: Mutex<()>,
    head: AtomicU64,
    status: Mutex<Status>,
}

/// A handle on the local state (cheap to clone).
#[derive(Clone)]
pub struct Local(Arc<Shared>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere left consistent data (each change is one call): keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Local {
    /// Opens the trees of `db` and loads the persisted projections.
    pub fn open(
        db: &sled::Db,
        projector: crate::Projector,
        root: RootSecret,
    ) -> Result<Self, StoreError> {
        let store = crate::store::Store::in_db(db.clone())?;
        let persistent = Persistent::with_store(projector, store, super::SAVE_EVERY_RECORDS)?;
        let head = persistent.projections.last_seq;
        Ok(Local(Arc::new(Shared {
            persistent: Mutex::new(persistent),
            records: db.open_tree("records")?,
            refusals: db.open_tree("refusals")?,
            root,
            replays: Mutex::new(()),
            head: AtomicU64::new(head),
            status: Mutex::new(Status {
                mode: "disconnected",
                ..Status::default()
            }),
        })))
    }

    /// The last applied position and its hash (the checkpoint after a restart).
    pub fn last(&self) -> (u64, [u8; 32]) {
        let p = lock(&self.0.persistent);
        (p.projections.last_seq, p.projections.last_hash)
    }

    /// Stores and folds records the follower decided to apply (in order). The record copies
    /// are written first: the projections' checkpoint (saved every
    /// [`super::SAVE_EVERY_RECORDS`] records and by [`Local::commit`]) flushes them too.
    pub fn apply(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for r in records {
            batch.insert(&r.seq.to_be_bytes(), r.encode());
        }
        self.0.records.apply_batch(batch)?;
        let mut p = lock(&self.0.persistent);
        for r in records {
            p.apply(r)?;
        }
        self.0.head.store(p.projections.last_seq, Ordering::Release);
        Ok(())
    }

    /// Saves what was applied since the last save, with its checkpoint.
    pub fn commit(&self) -> Result<(), StoreError> {
        lock(&self.0.persistent).commit()
    }

    /// Keeps a refusal alert (the oldest are dropped beyond [`MAX_REFUSAL_ALERTS`]).
    pub fn refusal(&self, alert: &Alert) -> Result<(), StoreError> {
        let t = &self.0.refusals;
        let n = match t.last()? {
            Some((k, _)) => <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                .saturating_add(1),
            None => 1,
        };
        t.insert(
            n.to_be_bytes(),
            serde_json::to_vec(alert).unwrap_or_default(),
        )?;
        while t.len() > MAX_REFUSAL_ALERTS {
            if t.pop_min()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Updates the reported status.
    pub fn set_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.0.status));
    }

    /// The reported status.
    pub fn status(&self) -> Status {
        lock(&self.0.status).clone()
    }
}

impl Backend for Local {
    fn read<R>(&self, f: impl FnOnce(&Projections) -> R) -> R {
        f(&lock(&self.0.persistent).projections)
    }

    fn record(&self, seq: u64) -> Option<Record> {
        if seq > self.head() {
            return None;
        }
        let bytes = self.0.records.get(seq.to_be_bytes()).ok()??;
        Record::decode(&bytes, MAX_RECORD_SIZE).ok()
    }

    fn range(&self, seqs: Range<u64>) -> Result<Vec<Record>, String> {
        let mut out = Vec::with_capacity((seqs.end.saturating_sub(seqs.start)) as usize);
        let (lo, hi) = (seqs.start.to_be_bytes(), seqs.end.to_be_bytes());
        for kv in self.0.records.range(lo..hi) {
            let (_, v) = kv.map_err(|e| e.to_string())?;
            let r = Record::decode(&v, MAX_RECORD_SIZE).map_err(|e| e.to_string())?;
            out.push(r);
        }
        let expected = seqs.start..seqs.start + out.len() as u64;
        if out.iter().map(|r| r.seq).ne(expected) || out.len() as u64 != seqs.end - seqs.start {
            return Err(format!(
                "records {}..{} are not all in the local copy",
                seqs.start, seqs.end
            ));
        }
        Ok(out)
    }

    fn head(&self) -> u64 {
        self.0.head.load(Ordering::Acquire)
    }

    fn root(&self) -> &RootSecret {
        &self.0.root
    }

    fn replays(&self) -> &Mutex<()> {
        &self.0.replays
    }

    fn refusals(&self) -> Vec<Alert> {
        self.0
            .refusals
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }
}
