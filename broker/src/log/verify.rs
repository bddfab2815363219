//! `verify`: the pure checks over a walk of the log from genesis (the store feeds it frames).

use super::frame::{IndexEntry, RecordFrame};
use pairbus_schemas::messages::Checkpoint;
use pairbus_schemas::{open_event, Key, Kid, Record, RootSecret, GENESIS, MAX_EVENT_SIZE};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// What is wrong with a record or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A frame or index frame could not be decoded.
    Undecodable(String),
    /// The seq is not the one that follows the previous record (a gap or an overlap).
    Discontinuity {
        /// The seq expected here.
        expected: u64,
    },
    /// The record's `prev` is not the previous record's hash.
    BrokenLink,
    /// The stored hash is not the hash of the record's fields.
    BadHash,
    /// The event does not open with its signer's derived key (or is malformed).
    BadEvent(String),
    /// The index entry stored beside the record disagrees with the event.
    IndexMismatch(&'static str),
    /// A checkpoint's MAC does not verify with the broker key.
    CheckpointMac,
    /// A checkpoint names a hash that is not the record's hash.
    CheckpointHash,
    /// A checkpoint names a seq beyond the head.
    CheckpointBeyondHead,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Undecodable(e) => write!(f, "undecodable frame: {e}"),
            Problem::Discontinuity { expected } => write!(f, "expected seq {expected} here"),
            Problem::BrokenLink => f.write_str("prev is not the previous record's hash"),
            Problem::BadHash => f.write_str("hash does not match the record"),
            Problem::BadEvent(e) => write!(f, "event does not verify: {e}"),
            Problem::IndexMismatch(field) => write!(f, "index entry disagrees on {field}"),
            Problem::CheckpointMac => f.write_str("checkpoint MAC does not verify"),
            Problem::CheckpointHash => f.write_str("checkpoint hash is not the record's hash"),
            Problem::CheckpointBeyondHead => f.write_str("checkpoint beyond the head"),
        }
    }
}

/// The first problem found, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSeq {
    /// The seq of the bad record (or of the bad checkpoint).
    pub seq: u64,
    /// What is wrong.
    pub problem: Problem,
}

/// The result of [`super::LogStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked before stopping.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last good record.
    pub head: super::Head,
    /// The first problem, `None` when the whole log verifies.
    pub first_bad: Option<BadSeq>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Walks the chain; feed frames in key order, then checkpoints, then call [`Walker::finish`].
pub struct Walker<'r> {
    root: &'r RootSecret,
    keys: HashMap<Kid, Key>,
    next: u64,
    prev: [u8; 32],
    checked: u64,
    checkpoint_hashes: BTreeMap<u64, [u8; 32]>,
    checkpoints: u64,
    bad: Option<BadSeq>,
}

impl<'r> Walker<'r> {
    /// A walk from genesis.
    pub fn new(root: &'r RootSecret) -> Self {
        Walker {
            root,
            keys: HashMap::new(),
            next: 1,
            prev: GENESIS,
            checked: 0,
            checkpoint_hashes: BTreeMap::new(),
            checkpoints: 0,
            bad: None,
        }
    }

    /// True once a problem has been found (the walk can stop).
    pub fn failed(&self) -> bool {
        self.bad.is_some()
    }

    fn fail(&mut self, seq: u64, problem: Problem) {
        if self.bad.is_none() {
            self.bad = Some(BadSeq { seq, problem });
        }
    }

    /// Checks one record frame and its index frame (`index` = `None` if it failed to decode).
    pub fn frame(&mut self, frame: &[u8], index: Result<Vec<IndexEntry>, String>) {
        if self.failed() {
            return;
        }
        let f = match RecordFrame::parse(frame) {
            Ok(f) => f,
            Err(e) => return self.fail(self.next, Problem::Undecodable(e.to_string())),
        };
        if f.first_seq != self.next {
            return self.fail(
                f.first_seq.min(self.next),
                Problem::Discontinuity {
                    expected: self.next,
                },
            );
        }
        let index = match index {
            Ok(ix) if ix.len() == f.count as usize => ix,
            Ok(_) => return self.fail(f.first_seq, Problem::IndexMismatch("count")),
            Err(e) => return self.fail(f.first_seq, Problem::Undecodable(e)),
        };
        for (i, ix) in (0..f.count).zip(index) {
            let seq = f.first_seq + u64::from(i);
            let record = match f.record(seq) {
                Ok(r) => r,
                Err(e) => return self.fail(seq, Problem::Undecodable(e.to_string())),
            };
            if let Err(p) = self.record(&record, &ix) {
                return self.fail(seq, p);
            }
        }
    }

    fn record(&mut self, r: &Record, ix: &IndexEntry) -> Result<(), Problem> {
        if r.prev != self.prev {
            return Err(Problem::BrokenLink);
        }
        if !r.hash_is_valid() {
            return Err(Problem::BadHash);
        }
        let root = self.root;
        let keys = &mut self.keys;
        let event = open_event(&r.event, MAX_EVENT_SIZE, |kid| {
            Some(
                keys.entry(kid.clone())
                    .or_insert_with(|| root.derive(kid))
                    .clone(),
            )
        })
        .map_err(|e| Problem::BadEvent(e.to_string()))?;
        let expected = super::VerifiedEvent::from_event(&event, Vec::new()).index_entry();
        for (ok, field) in [
            (expected.id == ix.id, "id"),
            (expected.kid == ix.kid, "kid"),
            (expected.kid_seq == ix.kid_seq, "seq"),
            (expected.device == ix.device, "device"),
            (expected.revokes == ix.revokes, "revokes"),
        ] {
            if !ok {
                return Err(Problem::IndexMismatch(field));
            }
        }
        if let Some(h) = self.checkpoint_hashes.get(&r.seq) {
            if *h != r.hash {
                return Err(Problem::CheckpointHash);
            }
        }
        self.prev = r.hash;
        self.next = r.seq + 1;
        self.checked += 1;
        Ok(())
    }

    /// Registers a stored checkpoint before the walk (its MAC is checked now, its hash
    /// against the record when the walk reaches it, and its seq against the head at the end).
    pub fn checkpoint(&mut self, c: Result<Checkpoint, String>, broker_key: &Key) {
        match c {
            Err(e) => self.fail(0, Problem::Undecodable(e)),
            Ok(c) if !c.verify(broker_key) => self.fail(c.seq, Problem::CheckpointMac),
            Ok(c) => {
                self.checkpoints += 1;
                self.checkpoint_hashes.insert(c.seq, c.hash);
            }
        }
    }

    /// The report; `expected_head` is the store's durable head (checkpoints must have been
    /// read while no commit was in flight, so that none is beyond it).
    pub fn finish(mut self, expected_head: u64) -> VerifyReport {
        if !self.failed() {
            if let Some((&seq, _)) = self.checkpoint_hashes.range(self.next..).next() {
                self.fail(seq, Problem::CheckpointBeyondHead);
            } else if self.next != expected_head + 1 {
                self.fail(
                    self.next,
                    Problem::Discontinuity {
                        expected: expected_head + 1,
                    },
                );
            }
        }
        VerifyReport {
            records: self.checked,
            checkpoints: self.checkpoints,
            head: super::Head {
                seq: self.next - 1,
                hash: self.prev,
            },
            first_bad: self.bad,
        }
    }
}
