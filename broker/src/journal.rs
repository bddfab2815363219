//! The refusals journal: every refused event, kept in its own bounded sled database (never in
//! the log) so investigators can see attempts that left no record: forged events, replays,
//! cloned devices (`seq_conflict`). When full, the oldest entries are dropped first.
//!
//! Entries are JSON `{"n", "at", "principal", "reason", "detail", "event_id"?}` keyed by their
//! number `n` (u64 BE). The journal is flushed by sled in the background: it is evidence, not
//! the system of record, and a crash may lose its last moments.

use pairbus_schemas::messages::Rejection;
use pairbus_schemas::Kid;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Default bound on the number of entries.
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// One refused event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Entry number, increasing.
    pub n: u64,
    /// When it was refused, Unix ms.
    pub at: u64,
    /// The principal of the topic it came on.
    pub principal: String,
    /// The rejection as published.
    #[serde(flatten)]
    pub rejection: Rejection,
}

impl Entry {
    /// The entry as an alert of the projector (`seq_conflict`: a possible cloned device), or
    /// `None` if its principal does not parse (an entry of another version).
    pub fn alert(&self) -> Option<pairbus_projector::Alert> {
        let kid = Kid::parse(&self.principal).ok()?;
        Some(pairbus_projector::refusals::alert(
            &kid,
            &self.rejection,
            self.at,
        ))
    }
}

/// The journal.
pub struct Journal {
    tree: sled::Db,
    capacity: u64,
    next: std::sync::atomic::AtomicU64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, keeping at most `capacity` entries.
    pub fn open(path: &Path, capacity: u64) -> Result<Self, sled::Error> {
        let tree = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(1000))
            .open()?;
        let next = match tree.last()? {
            Some((k, _)) => {
                <[u8; 8]>::try_from(k.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
                    + 1
            }
            None => 1,
        };
        Ok(Journal {
            tree,
            capacity: capacity.max(1),
            next: std::sync::atomic::AtomicU64::new(next),
        })
    }

    /// Records one refusal, dropping the oldest entries beyond the capacity.
    pub fn record(
        &self,
        at: u64,
        principal: &Kid,
        rejection: &Rejection,
    ) -> Result<(), sled::Error> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry {
            n,
            at,
            principal: principal.to_string(),
            rejection: rejection.clone(),
        };
        let value = serde_json::to_vec(&entry).unwrap_or_default();
        self.tree.insert(n.to_be_bytes(), value)?;
        while self.tree.len() as u64 > self.capacity {
            if self.tree.pop_min()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The newest `limit` entries, oldest first.
    pub fn latest(&self, limit: usize) -> Result<Vec<Entry>, sled::Error> {
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.tree.iter().rev().take(limit) {
            let (_, v) = kv?;
            // Entries are written by this module only; skip one that does not parse.
            if let Ok(e) = serde_json::from_slice(&v) {
                out.push(e);
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::messages::RejectReason;

    fn rej(i: u64) -> Rejection {
        Rejection {
            reason: RejectReason::SeqConflict,
            detail: format!("attempt {i}"),
            event_id: None,
        }
    }

    #[test]
    fn keeps_the_newest_entries_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kid = Kid::parse("device:0123456789abcdef").unwrap();
        {
            let j = Journal::open(dir.path(), 3).unwrap();
            for i in 0..5 {
                j.record(1000 + i, &kid, &rej(i)).unwrap();
            }
            let all = j.latest(10).unwrap();
            assert_eq!(all.iter().map(|e| e.n).collect::<Vec<_>>(), vec![3, 4, 5]);
            assert_eq!(all[2].rejection.detail, "attempt 4");
            assert_eq!(j.latest(1).unwrap()[0].n, 5);
        }
        let j = Journal::open(dir.path(), 3).unwrap();
        j.record(2000, &kid, &rej(9)).unwrap();
        let all = j.latest(10).unwrap();
        assert_eq!(all.iter().map(|e| e.n).collect::<Vec<_>>(), vec![4, 5, 6]);
        let json = serde_json::to_value(&all[2]).unwrap();
        assert_eq!(json["reason"], "seq_conflict");
        assert_eq!(json["principal"], "device:0123456789abcdef");
    }
}
