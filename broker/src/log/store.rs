//! The store's public types: the input of an append, its per-event outcomes, errors, and the
//! [`LogStore`] trait that any log engine implements.

use super::frame::{FrameError, IndexEntry, IndexRef};
use super::verify::VerifyReport;
use pairbus_schemas::{
    open_event, Body, DeviceId, EnvelopeError, Event, EventId, Kid, Record, RootSecret,
};
use std::ops::Range;
use thiserror::Error;

/// An event whose COSE_Mac0 has been verified, with the facts the log indexes.
///
/// Build it with [`VerifiedEvent::open`] (verifies the MAC with the key derived from the root
/// secret) or [`VerifiedEvent::from_event`] when the caller has just opened the event itself.
/// The log trusts it: it does not re-check the MAC at append time ([`LogStore::verify`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// The event id (idempotency key).
    pub id: EventId,
    /// The signer, `src` = the envelope's kid.
    pub kid: Kid,
    /// The signer's own counter.
    pub kid_seq: u64,
    /// The device the event is about.
    pub device: DeviceId,
    /// `Some(D)` for a `device.revoked` about device D: once committed, `device:D` is refused.
    pub revokes: Option<DeviceId>,
    /// The COSE_Mac0 bytes exactly as received (stored as the record's `event`).
    pub bytes: Vec<u8>,
}

impl VerifiedEvent {
    /// Opens and verifies `bytes` (at most `limit` bytes) with the key derived from `root`.
    pub fn open(bytes: Vec<u8>, limit: usize, root: &RootSecret) -> Result<Self, EnvelopeError> {
        let event = open_event(&bytes, limit, |kid| Some(root.derive(kid)))?;
        Ok(Self::from_event(&event, bytes))
    }

    /// Wraps an event the caller has verified (`bytes` must be the envelope it was opened from).
    pub fn from_event(event: &Event, bytes: Vec<u8>) -> Self {
        let revokes = matches!(event.body, Body::Revoked(_)).then(|| event.device.clone());
        VerifiedEvent {
            id: event.id,
            kid: event.src.clone(),
            kid_seq: event.seq,
            device: event.device.clone(),
            revokes,
            bytes,
        }
    }

    /// Builds one from its parts (tests, tools).
    pub fn from_parts(
        id: EventId,
        kid: Kid,
        kid_seq: u64,
        device: DeviceId,
        revokes: Option<DeviceId>,
        bytes: Vec<u8>,
    ) -> Self {
        VerifiedEvent {
            id,
            kid,
            kid_seq,
            device,
            revokes,
            bytes,
        }
    }

    pub(crate) fn index_ref(&self) -> IndexRef<'_> {
        IndexRef {
            id: self.id,
            kid: &self.kid,
            kid_seq: self.kid_seq,
            device: &self.device,
            revokes: self.revokes.as_ref(),
        }
    }

    pub(crate) fn index_entry(&self) -> IndexEntry {
        IndexEntry {
            id: self.id,
            kid: self.kid.clone(),
            kid_seq: self.kid_seq,
            device: self.device.clone(),
            revokes: self.revokes.clone(),
        }
    }
}

/// The answer for one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Appended and durable: the record as it is stored (publish it on `pairbus/v1/log`).
    Committed(Record),
    /// The same event id is already in the log at this seq: nothing written (`already_committed`).
    AlreadyCommitted(u64),
    /// The signer's `(kid, seq)` is held by a different event (`seq_conflict`).
    SeqConflict {
        /// The id of the event that holds the slot.
        existing: EventId,
    },
    /// The signer is a revoked device (`revoked`).
    Revoked,
}

impl AppendOutcome {
    /// The log seq the event is stored at, for `Committed` and `AlreadyCommitted`.
    pub fn seq(&self) -> Option<u64> {
        match self {
            AppendOutcome::Committed(r) => Some(r.seq),
            AppendOutcome::AlreadyCommitted(s) => Some(*s),
            _ => None,
        }
    }
}

/// The head of the chain: the last durable record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    /// Its seq (0 for an empty log).
    pub seq: u64,
    /// Its hash ([`pairbus_schemas::GENESIS`] for an empty log).
    pub hash: [u8; 32],
}

/// Errors of the log store. Integrity problems found by `verify` are not errors: they are
/// reported in [`VerifyReport`].
#[derive(Debug, Error)]
pub enum LogError {
    /// A file-system operation failed (disk full, permissions, …).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// An earlier commit failed after writing: the on-disk state is unknown until the store
    /// is reopened (which recovers from disk). Appends are refused; reads still work.
    #[error("the log is poisoned by an earlier failed commit; reopen it")]
    Poisoned,
    /// Stored data could not be decoded where the store needs it to work.
    #[error("corrupt log at {at}: {detail}")]
    Corrupt {
        /// The key or seq concerned.
        at: String,
        /// What is wrong.
        detail: String,
    },
    /// The log would exceed the largest seq.
    #[error("log seq space exhausted")]
    Full,
}

impl LogError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> LogError {
        move |source| LogError::Io { op, source }
    }

    pub(crate) fn corrupt(at: impl std::fmt::Display, e: FrameError) -> LogError {
        LogError::Corrupt {
            at: at.to_string(),
            detail: e.to_string(),
        }
    }
}

/// An append-only, hash-chained event log.
///
/// Contract: [`append_batch`](LogStore::append_batch) returns only after the records it
/// reports `Committed` are durable (flushed and really synced); reads only ever show durable
/// records; seqs start at 1 and have no gaps.
pub trait LogStore: Send + Sync {
    /// Decides and commits a batch as one atomic, durable group commit; one outcome per event,
    /// in order. `received_at` (Unix ms) is stamped on every record and used as the
    /// checkpoint time. On error nothing of the batch is reported durable.
    fn append_batch(
        &self,
        events: Vec<VerifiedEvent>,
        received_at: u64,
    ) -> Result<Vec<AppendOutcome>, LogError>;

    /// The last durable record.
    fn head(&self) -> Head;

    /// The record at `seq`, if durable.
    fn get(&self, seq: u64) -> Result<Option<Record>, LogError>;

    /// The durable records with seq in `range`, in order.
    fn range(&self, range: Range<u64>) -> Result<Vec<Record>, LogError>;

    /// The durable records about `device` with seq in `range`, in order.
    fn by_device(&self, device: &DeviceId, range: Range<u64>) -> Result<Vec<Record>, LogError>;

    /// Re-checks the whole log from genesis (see [`VerifyReport`]).
    fn verify(&self) -> Result<VerifyReport, LogError>;

    /// A receiver of the durable head seq, updated after every commit (used by tails).
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}
