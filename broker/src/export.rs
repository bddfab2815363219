//! `export`: the log as a file an investigator can take away and the projector can read
//! offline.
//!
//! - `cbor-seq`: an RFC 8742 CBOR sequence of log records, each the deterministic map
//!   `{seq, prev, hash, received_at, event}` exactly as published on `pairbus/v1/log`;
//! - `jsonl`: one JSON object per line, `{"seq", "prev", "hash", "received_at", "event"}`, byte
//!   fields as lower-case hex.

use crate::log::{LogError, LogStore};
use pairbus_schemas::Record;
use std::io::Write;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 8742 CBOR sequence of records.
    CborSeq,
    /// JSON lines with hex byte fields.
    Jsonl,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the log failed.
    #[error("reading the log: {0}")]
    Log(#[from] LogError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// One record as a JSON line (without the newline).
pub fn record_to_json(r: &Record) -> String {
    serde_json::json!({
        "seq": r.seq,
        "prev": hex::encode(r.prev),
        "hash": hex::encode(r.hash),
        "received_at": r.received_at,
        "event": hex::encode(&r.event),
    })
    .to_string()
}

/// Writes records `from..=head` to `out`; returns how many.
pub fn export(
    log: &dyn LogStore,
    from: u64,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    const CHUNK: u64 = 10_000;
    let head = log.head().seq;
    let mut next = from.max(1);
    let mut count = 0;
    while next <= head {
        let end = (next + CHUNK).min(head + 1);
        for r in log.range(next..end)? {
            match format {
                Format::CborSeq => out.write_all(&r.encode())?,
                Format::Jsonl => {
                    out.write_all(record_to_json(&r).as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
            count += 1;
        }
        next = end;
    }
    out.flush()?;
    Ok(count)
}
