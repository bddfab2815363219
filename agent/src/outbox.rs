//! The durable outbox (sled): every event gets its id and its principal's next `seq` and is
//! written and flushed here before it is sent; it leaves only when the broker's `committed/`
//! confirmation for its id arrives, or is moved aside when the broker refuses it.
//!
//! Layout (one sled database per identity):
//! - `meta`: `next_seq` (u64 BE), the principal's next sequence number (starts at 1);
//! - `pending`: seq (u64 BE) → event id (16 bytes) ‖ COSE_Mac0 bytes, so iteration is in seq order;
//! - `ids`: event id → seq (u64 BE);
//! - `refused`: seq (u64 BE) → JSON [`RefusedEvent`];
//! - `state`: the principal's local state (JSON values: device state, activations made).
//!
//! Enqueueing is one sled transaction over all of these (state changes included), then a
//! flush (fsync): a `kill -9` after `enqueue` returns loses nothing and changes no id or seq.

use crate::draft::Draft;
use crate::error::AgentError;
use pairbus_schemas::envelope::seal;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::ids::EventId;
use pairbus_schemas::Event;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NEXT_SEQ: &[u8] = b"next_seq";

/// An event waiting for its confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// The event id.
    pub id: EventId,
    /// The principal's seq.
    pub seq: u64,
    /// The sealed COSE_Mac0 bytes, exactly as first sent.
    pub cose: Vec<u8>,
}

/// An event the broker refused, kept aside with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedEvent {
    /// Event id, hex.
    pub id: String,
    /// The principal's seq.
    pub seq: u64,
    /// The broker's reason code.
    pub reason: String,
    /// The broker's explanation.
    pub detail: String,
    /// The COSE bytes, hex.
    pub cose: String,
}

/// The next seq after the stored counter: 1 for a fresh outbox.
pub fn next_seq(stored: Option<u64>) -> u64 {
    stored.unwrap_or(1).max(1)
}

/// The seqs to (re-)send now, in seq order: those never sent in this session and those sent
/// more than `timeout` ago. `pending` is in seq order.
pub fn resend_due(
    pending: &[u64],
    sent_at: &HashMap<u64, Instant>,
    now: Instant,
    timeout: Duration,
) -> Vec<u64> {
    pending
        .iter()
        .copied()
        .filter(|seq| match sent_at.get(seq) {
            None => true,
            Some(t) => now.saturating_duration_since(*t) >= timeout,
        })
        .collect()
}

/// The durable outbox of one principal.
#[derive(Clone)]
pub struct Outbox {
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    pending: sled::Tree,
    ids: sled::Tree,
    refused: sled::Tree,
    state: sled::Tree,
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn from_be(b: &[u8]) -> Result<u64, AgentError> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| AgentError::Corrupt(format!("{} bytes where a u64 was expected", b.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn tx_err(e: TransactionError<AgentError>) -> AgentError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => AgentError::Outbox(e),
    }
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`. Fails with [`AgentError::OutboxLocked`] when
    /// another process holds it.
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        // sled releases its file lock asynchronously after the last handle is dropped (or the
        // holder dies): retry briefly before reporting the outbox as locked.
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(ref io))
                    if io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().contains("lock") =>
                {
                    attempt += 1;
                    if attempt >= 20 {
                        return Err(AgentError::OutboxLocked(dir.to_owned()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(other) => return Err(AgentError::Outbox(other)),
            }
        };
        Ok(Outbox {
            path: dir.to_owned(),
            meta: db.open_tree("meta")?,
            pending: db.open_tree("pending")?,
            ids: db.open_tree("ids")?,
            refused: db.open_tree("refused")?,
            state: db.open_tree("state")?,
            db,
        })
    }

    /// Where the outbox lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives each draft its id, the next seq and `ts = now_ms`, seals it with the identity's
    /// key, stores it with the `state` updates (`key → Some(JSON)` to set, `None` to delete)
    /// in one transaction, and flushes to disk. Returns the events in seq order.
    #[tracing::instrument(skip_all, fields(kid = %identity.kid, n = drafts.len()))]
    pub fn enqueue(
        &self,
        identity: &Identity,
        drafts: Vec<Draft>,
        state: &[(&str, Option<Vec<u8>>)],
        now_ms: u64,
        mut random: impl FnMut() -> [u8; 10],
    ) -> Result<Vec<Event>, AgentError> {
        for d in &drafts {
            if !d.signable_by(&identity.kid) {
                return Err(AgentError::Invalid(format!(
                    "{} may not sign `{}` about device {}",
                    identity.kid,
                    d.body.event_type(),
                    d.device
                )));
            }
        }
        // Ids are drawn outside the transaction closure (which sled may retry).
        let ids: Vec<EventId> = drafts
            .iter()
            .map(|_| EventId::new_v7(now_ms, random()))
            .collect();
        let events = (&self.meta, &self.pending, &self.ids, &self.state)
            .transaction(|(meta, pending, idx, st)| {
                let stored = match meta.get(NEXT_SEQ)? {
                    Some(v) => Some(from_be(&v).map_err(ConflictableTransactionError::Abort)?),
                    None => None,
                };
                let mut seq = next_seq(stored);
                let mut out = Vec::with_capacity(drafts.len());
                for (draft, id) in drafts.iter().zip(&ids) {
                    let ev = draft
                        .clone()
                        .into_event(identity.kid.clone(), *id, seq, now_ms);
                    let cose = seal(&ev, &identity.key);
                    let mut value = Vec::with_capacity(16 + cose.len());
                    value.extend_from_slice(&id.0);
                    value.extend_from_slice(&cose);
                    pending.insert(&be(seq), value)?;
                    idx.insert(&id.0, &be(seq))?;
                    out.push(ev);
                    seq += 1;
                }
                meta.insert(NEXT_SEQ, &be(seq))?;
                for (k, v) in state {
                    match v {
                        Some(v) => {
                            st.insert(k.as_bytes(), v.as_slice())?;
                        }
                        None => {
                            st.remove(k.as_bytes())?;
                        }
                    }
                }
                Ok(out)
            })
            .map_err(tx_err)?;
        self.db.flush()?;
        for ev in &events {
            tracing::debug!(id = %ev.id, seq = ev.seq, r#type = %ev.event_type(), "enqueued");
        }
        Ok(events)
    }

    /// Every pending event, in seq order.
    pub fn pending(&self) -> Result<Vec<PendingEvent>, AgentError> {
        self.pending
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode_pending(&k, &v)
            })
            .collect()
    }

    /// One pending event by seq.
    pub fn get(&self, seq: u64) -> Result<Option<PendingEvent>, AgentError> {
        match self.pending.get(be(seq))? {
            Some(v) => Ok(Some(decode_pending(&be(seq), &v)?)),
            None => Ok(None),
        }
    }

    /// How many events are pending.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> Result<u64, AgentError> {
        Ok(next_seq(match self.meta.get(NEXT_SEQ)? {
            Some(v) => Some(from_be(&v)?),
            None => None,
        }))
    }

    /// The broker confirmed `id`: removes it. Returns its seq if it was pending (a repeated
    /// or unknown confirmation returns `None`).
    pub fn confirm(&self, id: &EventId) -> Result<Option<u64>, AgentError> {
        let seq = (&self.pending, &self.ids)
            .transaction(|(pending, idx)| {
                let Some(seq) = idx.remove(&id.0)? else {
                    return Ok(None);
                };
                let seq = from_be(&seq).map_err(ConflictableTransactionError::Abort)?;
                pending.remove(&be(seq))?;
                Ok(Some(seq))
            })
            .map_err(tx_err)?;
        Ok(seq)
    }

    /// The broker refused `id`: moves it aside with the reason. Returns its seq if it was pending.
    pub fn refuse(
        &self,
        id: &EventId,
        reason: &str,
        detail: &str,
    ) -> Result<Option<u64>, AgentError> {
        let seq = (&self.pending, &self.ids, &self.refused)
            .transaction(|(pending, idx, refused)| {
                let Some(seq) = idx.remove(&id.0)? else {
                    return Ok(None);
                };
                let seq = from_be(&seq).map_err(ConflictableTransactionError::Abort)?;
                let cose = pending
                    .remove(&be(seq))?
                    .map(|v| hex::encode(v.get(16..).unwrap_or_default()))
                    .unwrap_or_default();
                let entry = RefusedEvent {
                    id: id.to_hex(),
                    seq,
                    reason: reason.to_owned(),
                    detail: detail.to_owned(),
                    cose,
                };
                let json = serde_json::to_vec(&entry).map_err(|e| {
                    ConflictableTransactionError::Abort(AgentError::Corrupt(e.to_string()))
                })?;
                refused.insert(&be(seq), json)?;
                Ok(Some(seq))
            })
            .map_err(tx_err)?;
        self.db.flush()?;
        Ok(seq)
    }

    /// The events the broker refused, in seq order.
    pub fn refused(&self) -> Result<Vec<RefusedEvent>, AgentError> {
        self.refused
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|e| AgentError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// A state value (JSON) by key.
    pub fn state_get<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, AgentError> {
        match self.state.get(key.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| AgentError::Corrupt(format!("state `{key}`: {e}"))),
            None => Ok(None),
        }
    }

    /// Sets a state value (JSON) durably, outside any enqueue.
    pub fn state_put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), AgentError> {
        let v = serde_json::to_vec(value).map_err(|e| AgentError::Corrupt(e.to_string()))?;
        self.state.insert(key.as_bytes(), v)?;
        self.db.flush()?;
        Ok(())
    }

    /// Flushes everything to disk.
    pub fn flush(&self) -> Result<(), AgentError> {
        self.db.flush()?;
        Ok(())
    }

    /// The event type of a pending event, for display (the bytes are our own).
    pub fn describe(p: &PendingEvent) -> String {
        crate::relayed::payload_of(&p.cose)
            .ok()
            .and_then(|pl| Event::decode(&pl, usize::MAX).ok())
            .map(|e| e.event_type().as_str().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    }
}

fn decode_pending(k: &[u8], v: &[u8]) -> Result<PendingEvent, AgentError> {
    let seq = from_be(k)?;
    if v.len() < 16 {
        return Err(AgentError::Corrupt(format!("pending seq {seq}: too short")));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&v[..16]);
    Ok(PendingEvent {
        id: EventId(id),
        seq,
        cose: v[16..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::draft;
    use pairbus_schemas::event::Metadata;
    use pairbus_schemas::ids::DeviceId;
    use pairbus_schemas::keys::RootSecret;
    use pairbus_schemas::open_event;

    fn identity() -> Identity {
        let dev = DeviceId::parse("0123456789abcdef").unwrap();
        let kid = dev.kid();
        Identity {
            key: RootSecret::from_bytes([7; 32]).derive(&kid),
            kid,
            broker: "127.0.0.1:1".into(),
        }
    }

    fn act(n: usize) -> Draft {
        draft::action(
            DeviceId::parse("0123456789abcdef").unwrap(),
            format!("a{n}"),
            Metadata::new(),
            None,
            None,
        )
    }

    fn rnd() -> impl FnMut() -> [u8; 10] {
        let mut i = 0u8;
        move || {
            i += 1;
            [i; 10]
        }
    }

    #[test]
    fn pure_seq_and_resend_rules() {
        assert_eq!(next_seq(None), 1);
        assert_eq!(next_seq(Some(7)), 7);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let sent: HashMap<u64, Instant> = [(1, t0), (2, later)].into();
        assert_eq!(
            resend_due(&[1, 2, 3], &sent, later, Duration::from_secs(5)),
            vec![1, 3]
        );
        assert_eq!(
            resend_due(&[1, 2, 3], &sent, t0, Duration::from_secs(5)),
            vec![3]
        );
    }

    #[test]
    fn enqueue_confirm_refuse_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity();
        let root = RootSecret::from_bytes([7; 32]);
        let ids;
        {
            let ob = Outbox::open(dir.path()).unwrap();
            let evs = ob
                .enqueue(
                    &id,
                    vec![act(1), act(2)],
                    &[("k", Some(b"1".to_vec()))],
                    1000,
                    rnd(),
                )
                .unwrap();
            assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
            let evs3 = ob.enqueue(&id, vec![act(3)], &[], 2000, rnd()).unwrap();
            assert_eq!(evs3[0].seq, 3);
            ids = [evs[0].id, evs[1].id, evs3[0].id];
            // The stored bytes are the signed event.
            let p = ob.pending().unwrap();
            assert_eq!(p.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
            let opened = open_event(&p[0].cose, 65536, |k| Some(root.derive(k))).unwrap();
            assert_eq!(opened, evs[0]);
            assert_eq!(ob.state_get::<u32>("k").unwrap(), Some(1));
            // A device may not enqueue an operator's event.
            assert!(ob
                .enqueue(
                    &id,
                    vec![draft::revoked(id.kid.device_id().unwrap(), "x".into())],
                    &[],
                    0,
                    rnd()
                )
                .is_err());
            assert_eq!(ob.next_seq().unwrap(), 4);
        }
        let ob = Outbox::open(dir.path()).unwrap();
        assert_eq!(ob.pending_len(), 3);
        assert_eq!(ob.confirm(&ids[1]).unwrap(), Some(2));
        assert_eq!(
            ob.confirm(&ids[1]).unwrap(),
            None,
            "second confirmation is a no-op"
        );
        assert_eq!(ob.refuse(&ids[0], "bad_mac", "no").unwrap(), Some(1));
        assert_eq!(
            ob.pending()
                .unwrap()
                .iter()
                .map(|p| p.seq)
                .collect::<Vec<_>>(),
            vec![3]
        );
        let r = ob.refused().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].seq, r[0].reason.as_str()), (1, "bad_mac"));
        // Seqs never go back, even when everything is confirmed.
        ob.confirm(&ids[2]).unwrap();
        assert_eq!(
            ob.enqueue(&id, vec![act(4)], &[], 3000, rnd()).unwrap()[0].seq,
            4
        );
    }
}
