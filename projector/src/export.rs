//! Log export files, read with chain verification (the offline mode's input).
//!
//! Two formats:
//! - `cbor-seq`: a CBOR sequence (RFC 8742), the concatenation of encoded log records
//!   (`{seq, prev, hash, received_at, event}`, as on `pairbus/v1/log`);
//! - `jsonl`: one JSON object per line, `{"seq", "prev", "hash", "received_at", "event"}`, byte
//!   fields as lower-case hex.
//!
//! While reading, every record's hash is recomputed and its link checked: positions follow each
//! other without gaps and each `prev` is the previous `hash` (the first record's `prev` must be
//! genesis when it is record 1; a partial export may start later). A broken chain stops the read
//! with an error naming the record. MACs are not re-checked (that needs the fleet root secret:
//! the broker's `verify` does it).

use crate::cbor::Reader;
use crate::decode::Obj;
use pairbus_schemas::record::MAX_RECORD_SIZE;
use pairbus_schemas::{Record, GENESIS};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// An export file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 8742 CBOR sequence of records.
    CborSeq,
    /// One JSON record per line, hex byte fields.
    Jsonl,
}

impl Format {
    /// Parses `cbor-seq` or `jsonl`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cbor-seq" | "cbor" => Some(Format::CborSeq),
            "jsonl" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// Guesses from the content: JSON lines start with `{`, a record map with 0xa5.
    pub fn detect(data: &[u8]) -> Self {
        match data.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Jsonl,
            _ => Format::CborSeq,
        }
    }
}

/// Why an export could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading or writing failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An item is not a record.
    #[error("item {index} (byte {offset}): {detail}")]
    Decode {
        /// 0-based item number.
        index: usize,
        /// Byte offset (cbor-seq) or line number (jsonl).
        offset: usize,
        /// What is wrong.
        detail: String,
    },
    /// The hash chain is broken.
    #[error("record {seq}: {detail}")]
    Chain {
        /// The record's position.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}

/// The JSON-lines form of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord {
    /// Log position.
    pub seq: u64,
    /// Previous hash, hex.
    pub prev: String,
    /// This record's hash, hex.
    pub hash: String,
    /// Broker time, Unix ms.
    pub received_at: u64,
    /// COSE_Mac0 bytes, hex.
    pub event: String,
}

impl JsonRecord {
    /// The JSON form of `r`.
    pub fn from_record(r: &Record) -> Self {
        JsonRecord {
            seq: r.seq,
            prev: hex::encode(r.prev),
            hash: hex::encode(r.hash),
            received_at: r.received_at,
            event: hex::encode(&r.event),
        }
    }

    /// Back to a record.
    pub fn to_record(&self) -> Result<Record, String> {
        let h32 = |s: &str, what: &str| -> Result<[u8; 32], String> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).map_err(|e| format!("{what}: {e}"))?;
            Ok(out)
        };
        if self.seq == 0 {
            return Err("seq starts at 1".into());
        }
        Ok(Record {
            seq: self.seq,
            prev: h32(&self.prev, "prev")?,
            hash: h32(&self.hash, "hash")?,
            received_at: self.received_at,
            event: hex::decode(&self.event).map_err(|e| format!("event: {e}"))?,
        })
    }
}

/// Reads a record in its deterministic encoding (`{seq, hash, prev, event, received_at}` in
/// that key order) without building a CBOR value tree; `None` sends the caller to the strict
/// [`Record::decode`] (which decodes or names the error).
fn fast_record(item: &[u8]) -> Option<Record> {
    if item.len() > MAX_RECORD_SIZE {
        return None;
    }
    let mut r = Reader::new(item);
    let mut o = Obj::open(&mut r)?;
    let seq = o.key(b"seq")?.uint()?;
    let hash = o.key(b"hash")?.bytes_n()?;
    let prev = o.key(b"prev")?.bytes_n()?;
    let event = o.key(b"event")?.bytes()?.to_vec();
    let received_at = o.key(b"received_at")?.uint()?;
    o.end()?;
    (r.is_empty() && seq > 0).then_some(Record {
        seq,
        prev,
        hash,
        received_at,
        event,
    })
}

/// Checks links and hashes as records arrive.
#[derive(Debug, Default)]
pub struct ChainCheck {
    last: Option<(u64, [u8; 32])>,
}

impl ChainCheck {
    /// Checks `r` against the previous record.
    pub fn check(&mut self, r: &Record) -> Result<(), ExportError> {
        let fail = |detail: String| ExportError::Chain { seq: r.seq, detail };
        match self.last {
            None if r.seq == 1 && r.prev != GENESIS => {
                return Err(fail("record 1 must have the genesis prev".into()))
            }
            None => {}
            Some((seq, hash)) => {
                if r.seq != seq + 1 {
                    return Err(fail(format!("follows record {seq}: positions skip")));
                }
                if r.prev != hash {
                    return Err(fail(format!(
                        "prev {} is not the hash of record {seq} ({})",
                        hex::encode(r.prev),
                        hex::encode(hash)
                    )));
                }
            }
        }
        if !r.hash_is_valid() {
            return Err(fail("hash does not match the record's contents".into()));
        }
        self.last = Some((r.seq, r.hash));
        Ok(())
    }
}

/// Reads and verifies every record of an export held in memory. `progress` is told the number
/// of bytes consumed from time to time.
pub fn read_records(
    data: &[u8],
    format: Format,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Record>, ExportError> {
    let mut out = Vec::new();
    let mut chain = ChainCheck::default();
    match format {
        Format::CborSeq => {
            let mut r = Reader::new(data);
            let mut offset = 0usize;
            while !r.is_empty() {
                let item = r.skip().ok_or_else(|| ExportError::Decode {
                    index: out.len(),
                    offset,
                    detail: "not a well-formed deterministic CBOR item".into(),
                })?;
                let rec = match fast_record(item) {
                    Some(rec) => rec,
                    None => {
                        Record::decode(item, MAX_RECORD_SIZE).map_err(|e| ExportError::Decode {
                            index: out.len(),
                            offset,
                            detail: e.to_string(),
                        })?
                    }
                };
                chain.check(&rec)?;
                offset += item.len();
                out.push(rec);
                if out.len() % 65_536 == 0 {
                    progress(offset);
                }
            }
        }
        Format::Jsonl => {
            let mut offset = 0usize;
            for (line_no, line) in data.split(|b| *b == b'\n').enumerate() {
                offset += line.len() + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let rec = serde_json::from_slice::<JsonRecord>(line)
                    .map_err(|e| e.to_string())
                    .and_then(|j| j.to_record())
                    .map_err(|detail| ExportError::Decode {
                        index: out.len(),
                        offset: line_no + 1,
                        detail,
                    })?;
                chain.check(&rec)?;
                out.push(rec);
                if out.len() % 65_536 == 0 {
                    progress(offset.min(data.len()));
                }
            }
        }
    }
    progress(data.len());
    Ok(out)
}

/// Writes records in `format`.
pub fn write_records(
    w: &mut impl Write,
    records: &[Record],
    format: Format,
) -> Result<(), ExportError> {
    for r in records {
        match format {
            Format::CborSeq => w.write_all(&r.encode())?,
            Format::Jsonl => {
                serde_json::to_writer(&mut *w, &JsonRecord::from_record(r))
                    .map_err(std::io::Error::other)?;
                w.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::LogBuilder;

    fn log() -> Vec<Record> {
        let mut l = LogBuilder::new();
        let d = l.configured(1, "a");
        l.action(&d, "login");
        l.push_raw(b"x".to_vec());
        l.records
    }

    #[test]
    fn both_formats_round_trip_and_detect() {
        for f in [Format::CborSeq, Format::Jsonl] {
            let mut buf = Vec::new();
            write_records(&mut buf, &log(), f).unwrap();
            assert_eq!(Format::detect(&buf), f);
            assert_eq!(read_records(&buf, f, |_| {}).unwrap(), log());
        }
    }

    #[test]
    fn fast_record_reader_agrees_with_the_strict_one() {
        for r in log() {
            let bytes = r.encode();
            assert_eq!(fast_record(&bytes), Some(r.clone()));
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x21;
                if let Some(fast) = fast_record(&b) {
                    assert_eq!(Record::decode(&b, MAX_RECORD_SIZE), Ok(fast));
                }
            }
        }
    }

    #[test]
    fn broken_chains_are_refused_with_the_record_named() {
        let mut recs = log();
        recs[2].received_at += 1;
        let mut buf = Vec::new();
        write_records(&mut buf, &recs, Format::CborSeq).unwrap();
        let err = read_records(&buf, Format::CborSeq, |_| {}).unwrap_err();
        assert!(matches!(err, ExportError::Chain { seq: 3, .. }), "{err}");

        let mut recs = log();
        recs.remove(1);
        let mut buf = Vec::new();
        write_records(&mut buf, &recs, Format::Jsonl).unwrap();
        let err = read_records(&buf, Format::Jsonl, |_| {}).unwrap_err();
        assert!(matches!(err, ExportError::Chain { seq: 3, .. }), "{err}");

        let mut buf = Vec::new();
        write_records(&mut buf, &log(), Format::CborSeq).unwrap();
        buf.truncate(buf.len() - 3);
        assert!(matches!(
            read_records(&buf, Format::CborSeq, |_| {}),
            Err(ExportError::Decode { index: 4, .. })
        ));
    }
}
