//! The broker's answers and service messages: commit confirmations, rejections, signed
//! checkpoints and replay requests/replies (DESIGN.md, Topics).

use crate::cbor::{decode_strict, encode_canonical, MapWriter};
use crate::fields::{bytes, map, uint, DecodeError, Fields};
use crate::ids::EventId;
use crate::keys::Key;
use ciborium::value::Value;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Size limit of the small CBOR service messages.
pub const MAX_MESSAGE_SIZE: usize = 1024;

/// Whether a confirmed event was new or had been committed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitStatus {
    /// Appended now.
    Committed,
    /// Already in the log (same event id): stored once.
    AlreadyCommitted,
}

impl CommitStatus {
    /// The status on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitStatus::Committed => "committed",
            CommitStatus::AlreadyCommitted => "already_committed",
        }
    }
}

/// `pairbus/v1/committed/<kind>/<id>`: CBOR `{"id": bstr16, "seq": uint, "status": tstr}`,
/// `seq` being the event's position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The event's id.
    pub id: EventId,
    /// Its log seq.
    pub seq: u64,
    /// New or already there.
    pub status: CommitStatus,
}

impl Committed {
    /// Deterministic CBOR (written directly, keys in deterministic order `id`, `seq`,
    /// `status`; a test checks it against the generic canonicaliser).
    pub fn encode(&self) -> Vec<u8> {
        // 1 + 3 + 17 + 4 + 9 + 7 + 18 bytes at most.
        let mut out = Vec::with_capacity(64);
        MapWriter::new(&mut out, 3)
            .bytes("id", &self.id.0)
            .uint("seq", self.seq)
            .text("status", self.status.as_str());
        out
    }

    /// Strict decoding.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::new(decode_strict(data, MAX_MESSAGE_SIZE)?, "")?;
        let id = EventId(f.bytes_n("id")?);
        let seq = f.uint("seq")?;
        if seq == 0 {
            return Err(DecodeError::invalid("seq", "log positions start at 1"));
        }
        let status = match f.text("status")?.as_str() {
            "committed" => CommitStatus::Committed,
            "already_committed" => CommitStatus::AlreadyCommitted,
            _ => {
                return Err(DecodeError::invalid(
                    "status",
                    "must be `committed` or `already_committed`",
                ))
            }
        };
        f.finish()?;
        Ok(Committed { id, seq, status })
    }
}

/// The reason codes of `pairbus/v1/rejected/…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not a valid envelope or event (including signer rules).
    Malformed,
    /// Over the size limit.
    TooLarge,
    /// The MAC does not verify.
    BadMac,
    /// The kid names no known principal.
    UnknownKid,
    /// The principal has been revoked.
    Revoked,
    /// The event's kid is not the principal of the topic it came on.
    TopicMismatch,
    /// The principal's `seq` is already taken by a different event.
    SeqConflict,
}

impl RejectReason {
    /// The code on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::BadMac => "bad_mac",
            RejectReason::UnknownKid => "unknown_kid",
            RejectReason::Revoked => "revoked",
            RejectReason::TopicMismatch => "topic_mismatch",
            RejectReason::SeqConflict => "seq_conflict",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl crate::envelope::EnvelopeError {
    /// The rejection code this error is reported with.
    pub fn reason(&self) -> RejectReason {
        use crate::envelope::EnvelopeError as E;
        match self {
            E::TooLarge { .. } => RejectReason::TooLarge,
            E::BadMac(_) => RejectReason::BadMac,
            E::UnknownKid(_) => RejectReason::UnknownKid,
            E::Payload(DecodeError::Cbor(crate::cbor::CborError::TooLarge { .. })) => {
                RejectReason::TooLarge
            }
            _ => RejectReason::Malformed,
        }
    }
}

/// `pairbus/v1/rejected/<kind>/<id>`: JSON `{"reason", "detail", "event_id"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// The code.
    pub reason: RejectReason,
    /// A human-readable explanation.
    pub detail: String,
    /// The event id in hex, when the event got far enough to have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Rejection {
    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain struct serializes")
    }
}

/// `pairbus/v1/checkpoints`: a chain head MAC'd with the `broker` key.
///
/// `mac = HMAC-SHA256(broker key, "pairbus/v1/checkpoint|" || seq u64 BE || hash || at u64 BE)`;
/// on the wire, CBOR `{"seq", "hash", "at", "mac"}` (`at` in Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// When the checkpoint was made, Unix ms.
    pub at: u64,
    /// The broker's MAC.
    pub mac: [u8; 32],
}

const CHECKPOINT_PREFIX: &[u8] = b"pairbus/v1/checkpoint|";

impl Checkpoint {
    /// Signs a chain head with the broker key.
    pub fn sign(seq: u64, hash: [u8; 32], at: u64, broker_key: &Key) -> Self {
        let mac = broker_key.mac(&[
            CHECKPOINT_PREFIX,
            &seq.to_be_bytes(),
            &hash,
            &at.to_be_bytes(),
        ]);
        Checkpoint { seq, hash, at, mac }
    }

    /// Checks the MAC in constant time.
    pub fn verify(&self, broker_key: &Key) -> bool {
        broker_key.verify(
            &[
                CHECKPOINT_PREFIX,
                &self.seq.to_be_bytes(),
                &self.hash,
                &self.at.to_be_bytes(),
            ],
            &self.mac,
        )
    }

    /// Deterministic CBOR.
    pub fn encode(&self) -> Vec<u8> {
        encode_canonical(map(vec![
            ("seq", uint(self.seq)),
            ("hash", bytes(&self.hash)),
            ("at", uint(self.at)),
            ("mac", bytes(&self.mac)),
        ]))
        .expect("distinct keys")
    }

    /// Strict decoding (the MAC is not checked here).
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::new(decode_strict(data, MAX_MESSAGE_SIZE)?, "")?;
        let c = Checkpoint {
            seq: f.uint("seq")?,
            hash: f.bytes_n("hash")?,
            at: f.uint("at")?,
            mac: f.bytes_n("mac")?,
        };
        f.finish()?;
        Ok(c)
    }
}

/// `pairbus/v1/replay/request`: JSON `{"request_id", "from_seq", "to_seq"?, "device"?, "types"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Names the reply topic `pairbus/v1/replay/reply/<request_id>`.
    pub request_id: String,
    /// First log seq wanted.
    pub from_seq: u64,
    /// Last log seq wanted (inclusive); open-ended when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
    /// Only this device's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Only these event types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
}

/// The last message of a replay reply: CBOR `{"end": true, "count": n}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayEnd {
    /// How many records were sent.
    pub count: u64,
}

impl ReplayEnd {
    /// Deterministic CBOR.
    pub fn encode(&self) -> Vec<u8> {
        encode_canonical(map(vec![
            ("end", Value::Bool(true)),
            ("count", uint(self.count)),
        ]))
        .expect("distinct keys")
    }

    /// Strict decoding.
    pub fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::new(decode_strict(data, MAX_MESSAGE_SIZE)?, "")?;
        if !f.bool("end")? {
            return Err(DecodeError::invalid("end", "must be true"));
        }
        let count = f.uint("count")?;
        f.finish()?;
        Ok(ReplayEnd { count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Kid;
    use crate::keys::RootSecret;

    proptest::proptest! {
        #[test]
        fn committed_encode_is_the_canonical_encoding(
            id in proptest::array::uniform16(proptest::num::u8::ANY),
            seq in proptest::prop_oneof![0u64..30, 0u64..70_000, proptest::num::u64::ANY],
            already in proptest::bool::ANY,
        ) {
            let status = if already { CommitStatus::AlreadyCommitted } else { CommitStatus::Committed };
            let c = Committed { id: EventId(id), seq, status };
            let reference = encode_canonical(map(vec![
                ("seq", uint(c.seq)),
                ("status", crate::fields::text(c.status.as_str())),
                ("id", bytes(&c.id.0)),
            ]))
            .unwrap();
            proptest::prop_assert_eq!(c.encode(), reference);
        }
    }

    #[test]
    fn committed_round_trip() {
        let c = Committed {
            id: EventId([5; 16]),
            seq: 9,
            status: CommitStatus::AlreadyCommitted,
        };
        assert_eq!(Committed::decode(&c.encode()).unwrap(), c);
        let zero = Committed { seq: 0, ..c };
        assert!(Committed::decode(&zero.encode()).is_err());
    }

    #[test]
    fn checkpoint_mac_covers_every_field() {
        let key = RootSecret::from_bytes([1; 32]).derive(&Kid::broker());
        let c = Checkpoint::sign(10, [2; 32], 1000, &key);
        assert!(c.verify(&key));
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        for tweak in [
            |c: &mut Checkpoint| c.seq += 1,
            |c: &mut Checkpoint| c.hash[0] ^= 1,
            |c: &mut Checkpoint| c.at += 1,
            |c: &mut Checkpoint| c.mac[31] ^= 1,
        ] {
            let mut bad = c.clone();
            tweak(&mut bad);
            assert!(!bad.verify(&key));
        }
    }

    #[test]
    fn rejection_json_shape() {
        let r = Rejection {
            reason: RejectReason::SeqConflict,
            detail: "seq 4 already used".into(),
            event_id: Some("00".repeat(16)),
        };
        let j = r.to_json();
        assert!(j.contains(r#""reason":"seq_conflict""#), "{j}");
        assert_eq!(serde_json::from_str::<Rejection>(&j).unwrap(), r);
    }

    #[test]
    fn replay_messages() {
        let r: ReplayRequest = serde_json::from_str(r#"{"request_id":"a1","from_seq":1}"#).unwrap();
        assert_eq!(r.to_seq, None);
        assert!(
            serde_json::from_str::<ReplayRequest>(r#"{"request_id":"a","from_seq":1,"x":2}"#)
                .is_err()
        );
        let e = ReplayEnd { count: 3 };
        assert_eq!(ReplayEnd::decode(&e.encode()).unwrap(), e);
    }
}
