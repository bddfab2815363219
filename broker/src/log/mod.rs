//! # The event log: append-only, hash-chained, group-committed, over sled 0.34.7
//!
//! The system of record (DESIGN.md, Guarantees). The broker's ingest verifies each event's
//! COSE_Mac0, wraps it in a [`VerifiedEvent`], and hands batches to
//! [`LogStore::append_batch`]; each call is **one group commit**: the events are decided
//! (dedupe, seq conflicts, revocations), the appended ones get consecutive global seqs with
//! `prev`/`hash` per DESIGN.md, everything the commit writes goes into **one sled `Batch` in one
//! tree**, then **one `flush()` and one real `fdatasync`** on `<dir>/db` run before the call
//! returns. Only then are the records visible to readers and reported `Committed`.
//!
//! ```no_run
//! # use pairbus_broker::log::*;
//! # use pairbus_schemas::RootSecret;
//! # use std::sync::Arc;
//! # async fn demo(root: RootSecret, bytes: Vec<u8>, now_ms: u64) -> Result<(), LogError> {
//! let log = Arc::new(SledLog::open(LogConfig::new("data/log"), root.clone())?);
//! let ev = VerifiedEvent::open(bytes, pairbus_schemas::MAX_EVENT_SIZE, &root).expect("valid");
//! for outcome in log.append_batch(vec![ev], now_ms)? {
//!     match outcome {
//!         AppendOutcome::Committed(record) => { /* publish committed/ and log */ }
//!         AppendOutcome::AlreadyCommitted(seq) => { /* answer already_committed */ }
//!         AppendOutcome::SeqConflict { .. } | AppendOutcome::Revoked => { /* reject */ }
//!     }
//! }
//! let mut t = tail(log.clone(), 1);
//! while let Some(record) = t.next().await { let _record = record?; }
//! # Ok(()) }
//! ```
//!
//! ## On-disk layout (sled default tree, layout tag `m` = `pairbus-log/1`)
//!
//! | key | value |
//! |---|---|
//! | `m` | `pairbus-log/1` |
//! | `f` ‖ first_seq (u64 BE) | a **record frame**: the records `first_seq..first_seq+count` of one commit, ≤ 16 KiB (see [`frame`]) |
//! | `i` ‖ first_seq (u64 BE) | the matching **index frame**: per record the event id, kid, principal seq, device, revoked device |
//! | `c` ‖ seq (u64 BE) | a signed [`Checkpoint`](pairbus_schemas::messages::Checkpoint) `{seq, hash, at, mac}` (CBOR) |
//!
//! A commit writes its record frames, their index frames and at most one checkpoint in the
//! same `Batch`, so after any crash either all of a commit is there or none of it. Frames
//! are keyed by their first seq: frame *n+1* starts where frame *n* ends, and the record
//! `prev` inside a frame is the hash of the record before it, so frames are self-contained.
//!
//! Indexes are **derived data**: idempotency (event id → seq), principal ((kid, seq) → event
//! id), per-device (device → seqs) and the revoked-device set live in memory and are rebuilt
//! at open from the index frames (no CBOR parsing, no MAC checks, no allocation per device
//! record: entries are read in place by [`frame::visit_index_frame`]). They are updated only
//! after a commit is durable, so dedupe and lookups are exact whenever the store is open.
//! The maps hash with foldhash (random seed per process); devices and device kids are keyed
//! by their 64-bit number ([`frame::device_number`]), other kids by an interned number.
//!
//! ## Point reads
//!
//! `get` and `by_device` read single records out of frames (a device's records are spread
//! over the log in arrival order). A bounded, direct-mapped **frame cache**
//! ([`LogConfig::frame_cache_bytes`], 256 MiB by default) keeps frames by frame number as
//! reference-counted sled values: filled with each durable commit's frames (unless a reader
//! holds the cache at that moment: a commit never waits for readers), on a miss, and at open
//! by a background thread that reads the newest frames it can hold in one sequential pass
//! (joined when the log drops; [`SledLog::wait_for_frame_cache`]); never invalidated (frames
//! are immutable), a hit always the frame asked for. The slots sit behind one reader-writer
//! lock: `by_device` takes it once and borrows every frame, with no lock or reference count
//! per record, and reads in short passes (frames, then every offset table, then every entry
//! header and `prev`, then the copies), each preceded by a tight loop that only loads the
//! bytes the pass will read, so the cache misses of its many records overlap.
//!
//! ## Durability
//!
//! sled 0.34.7's `flush()` ends in `sync_file_range`, which does not flush the drive cache,
//! so after it the store calls `sync_data()` (fdatasync) on a handle it keeps on `<dir>/db`.
//! At open it fsyncs `db`, `conf`, the directory and its parent once. sled writes any log
//! message over `segment_size / 4` to `blobs/` files it never fsyncs: frames are kept ≤ 16
//! KiB (one large event can make one frame up to ~80 KiB) and the segment size is 8 MiB, so
//! even a fully consolidated leaf (17 entries) stays inline; as a safety net every commit
//! also fsyncs any blob file that appears. The background flusher is off (no concurrent
//! flushes, sled #1308). If anything fails after the batch reached sled, the store is
//! **poisoned**: it refuses appends until reopened (reads still work), since the on-disk
//! state is then unknown; nothing of the failed batch was reported durable.
//!
//! ## Checkpoints and verification
//!
//! Every `checkpoint_every` records or `checkpoint_interval_ms` (checked at commit) the
//! commit also stores the head `{seq, hash, at}` MAC'd with the `broker` key.
//! [`LogStore::verify`] walks the chain from genesis: frame continuity, `prev` links, every
//! hash, every event's MAC with the key derived from the root secret, the index entries
//! against the events, and every checkpoint (MAC, and hash equal to the record's hash). It
//! reports the first bad seq and why in a [`VerifyReport`].

mod cache;
pub mod frame;
pub mod index;
mod sled_store;
mod store;
mod tail;
mod verify;

pub use sled_store::{
    key, LogConfig, SledLog, CHECKPOINT_PREFIX, FRAME_PREFIX, INDEX_PREFIX, LAYOUT_TAG, META_KEY,
    SEGMENT_SIZE,
};
pub use store::{AppendOutcome, Head, LogError, LogStore, VerifiedEvent};
pub use tail::{tail, Tail, TAIL_CHUNK};
pub use verify::{BadSeq, Problem, VerifyReport};
