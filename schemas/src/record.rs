//! The log record: one committed event, chained to its predecessor by SHA-256.
//!
//! `hash = SHA-256(prev || seq as u64 BE || received_at as u64 BE || event)`, genesis
//! `prev` = 32 zero bytes. On the wire (the `pairbus/v1/log` topic, replay replies, export
//! files) a record is the deterministic CBOR map `{seq, prev, hash, received_at, event}`.

use crate::cbor::{decode_strict, MapWriter};
use crate::event::MAX_EVENT_SIZE;
use crate::fields::{DecodeError, Fields};
use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];
/// Size limit of an encoded record: an envelope at its limit plus the record's own fields.
pub const MAX_RECORD_SIZE: usize = MAX_EVENT_SIZE + 256;

/// One entry of the hash-chained log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Global position in the log, from 1, without gaps.
    pub seq: u64,
    /// The previous record's hash ([`GENESIS`] for seq 1).
    pub prev: [u8; 32],
    /// This record's hash, see [`Record::compute_hash`].
    pub hash: [u8; 32],
    /// When the broker received the event, Unix ms.
    pub received_at: u64,
    /// The COSE_Mac0 bytes exactly as received.
    pub event: Vec<u8>,
}

impl Record {
    /// `SHA-256(prev || seq u64 BE || received_at u64 BE || event)`.
    pub fn compute_hash(prev: &[u8; 32], seq: u64, received_at: u64, event: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(seq.to_be_bytes());
        h.update(received_at.to_be_bytes());
        h.update(event);
        h.finalize().into()
    }

    /// Builds the record that follows `prev`, computing its hash.
    pub fn chain(prev: [u8; 32], seq: u64, received_at: u64, event: Vec<u8>) -> Self {
        let hash = Self::compute_hash(&prev, seq, received_at, &event);
        Record {
            seq,
            prev,
            hash,
            received_at,
            event,
        }
    }

    /// True when `hash` is the hash of the other fields.
    pub fn hash_is_valid(&self) -> bool {
        Self::compute_hash(&self.prev, self.seq, self.received_at, &self.event) == self.hash
    }

    /// The deterministic CBOR encoding (written directly, in deterministic key order: `seq`,
    /// `hash`, `prev`, `event`, `received_at`; a test checks it against the generic
    /// canonicaliser).
    pub fn encode(&self) -> Vec<u8> {
        // Map head, 5 keys of ≤ 12 bytes, two 34-byte hashes, two ≤ 9-byte ints, the event's
        // head (≤ 5 bytes): 128 bytes cover everything but the event itself.
        let mut out = Vec::with_capacity(self.event.len() + 128);
        MapWriter::new(&mut out, 5)
            .uint("seq", self.seq)
            .bytes("hash", &self.hash)
            .bytes("prev", &self.prev)
            .bytes("event", &self.event)
            .uint("received_at", self.received_at);
        out
    }

    /// Strictly decodes a record of at most `limit` bytes. The hash is not checked here: a
    /// reader decides what a broken chain means (see [`Record::hash_is_valid`]).
    pub fn decode(data: &[u8], limit: usize) -> Result<Self, DecodeError> {
        let mut f = Fields::new(decode_strict(data, limit)?, "")?;
        let record = Record {
            seq: f.uint("seq")?,
            prev: f.bytes_n("prev")?,
            hash: f.bytes_n("hash")?,
            received_at: f.uint("received_at")?,
            event: f.bytes("event")?,
        };
        f.finish()?;
        if record.seq == 0 {
            return Err(DecodeError::invalid("seq", "starts at 1"));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_the_documented_rule() {
        let r = Record::chain(GENESIS, 1, 1_700_000_000_000, b"ev".to_vec());
        let mut input = Vec::new();
        input.extend_from_slice(&[0; 32]);
        input.extend_from_slice(&1u64.to_be_bytes());
        input.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        input.extend_from_slice(b"ev");
        assert_eq!(r.hash, <[u8; 32]>::from(Sha256::digest(&input)));
        assert!(r.hash_is_valid());
        let mut bad = r.clone();
        bad.received_at += 1;
        assert!(!bad.hash_is_valid());
    }

    /// The generic encoding: the map built as a `Value` and canonicalised.
    fn reference(r: &Record) -> Vec<u8> {
        use crate::fields::{bytes, map, uint};
        crate::cbor::encode_canonical(map(vec![
            ("seq", uint(r.seq)),
            ("prev", bytes(&r.prev)),
            ("hash", bytes(&r.hash)),
            ("received_at", uint(r.received_at)),
            ("event", bytes(&r.event)),
        ]))
        .unwrap()
    }

    proptest::proptest! {
        #[test]
        fn encode_is_the_canonical_encoding(
            seq in proptest::prop_oneof![0u64..30, 0u64..70_000, proptest::num::u64::ANY],
            received_at in proptest::prop_oneof![0u64..300, proptest::num::u64::ANY],
            prev in proptest::array::uniform32(proptest::num::u8::ANY),
            hash in proptest::array::uniform32(proptest::num::u8::ANY),
            event in proptest::collection::vec(proptest::num::u8::ANY, 0..70_000),
        ) {
            let r = Record { seq, prev, hash, received_at, event };
            proptest::prop_assert_eq!(r.encode(), reference(&r));
        }
    }

    #[test]
    fn encode_decode_round_trip_and_strictness() {
        let r = Record::chain([7; 32], 42, 5, vec![1, 2, 3]);
        let bytes = r.encode();
        assert_eq!(Record::decode(&bytes, MAX_RECORD_SIZE).unwrap(), r);
        assert!(Record::decode(&bytes, 10).is_err());
        assert!(matches!(
            Record::decode(&bytes[..bytes.len() - 1], MAX_RECORD_SIZE),
            Err(DecodeError::Cbor(_))
        ));
    }
}
