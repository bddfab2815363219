//! [`SledLog`]: the [`LogStore`] over sled 0.34.7 (IO lives here; decisions do not).

use super::cache::FrameCache;
use super::frame::{
    decode_index_frame, visit_index_frame, FrameBuilder, FrameError, RecordFrame,
    FRAME_TARGET_BYTES,
};
use super::index::{plan_batch, Decision, Indexes};
use super::store::{AppendOutcome, Head, LogError, LogStore, VerifiedEvent};
use super::verify::{VerifyReport, Walker};
use pairbus_schemas::messages::Checkpoint;
use pairbus_schemas::{DeviceId, Key, Kid, Record, RootSecret, GENESIS};
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::watch;

/// Key prefix of record frames (`f` + first seq, u64 big-endian).
pub const FRAME_PREFIX: u8 = b'f';
/// Key prefix of index frames (`i` + first seq, u64 big-endian).
pub const INDEX_PREFIX: u8 = b'i';
/// Key prefix of signed checkpoints (`c` + seq, u64 big-endian).
pub const CHECKPOINT_PREFIX: u8 = b'c';
/// Key of the layout tag.
pub const META_KEY: &[u8] = b"m";
/// Value of the layout tag.
pub const LAYOUT_TAG: &[u8] = b"pairbus-log/1";
/// sled segment size. sled writes any log message larger than `segment_size / 4` to its own
/// file under `blobs/`, which it never fsyncs; a leaf holds up to 17 entries before it splits,
/// so 8 MiB segments (2 MiB threshold) keep every node of 17 frames (≤ ~80 KiB each) inline.
pub const SEGMENT_SIZE: usize = 8 << 20;

/// The 9-byte key `prefix || seq (u64 BE)`.
pub fn key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of_key(k: &[u8]) -> Option<u64> {
    let b: [u8; 8] = k.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// How to open a [`SledLog`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The sled directory (`conf`, `db`, `blobs/`, `snap.*` live in it).
    pub path: PathBuf,
    /// Sign a checkpoint once this many records were appended since the last one.
    pub checkpoint_every: u64,
    /// … or once this many ms passed since the last one (checked at each commit).
    pub checkpoint_interval_ms: u64,
    /// sled page cache size in bytes.
    pub cache_capacity: u64,
    /// Bytes of record frames kept for point reads (`get`, `by_device`); 0 turns it off. One
    /// slot per 16 KiB: frames holding one large event (up to ~80 KiB) can exceed the budget.
    /// Cached frames share their memory with sled's page cache while sled holds them.
    pub frame_cache_bytes: usize,
}

impl LogConfig {
    /// Defaults: a checkpoint every 10,000 records or 60 s, 1 GiB of sled cache, 256 MiB of
    /// frame cache.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LogConfig {
            path: path.into(),
            checkpoint_every: 10_000,
            checkpoint_interval_ms: 60_000,
            cache_capacity: 1 << 30,
            frame_cache_bytes: 256 << 20,
        }
    }

    /// The sled configuration the log uses (also for tools that open the tree directly).
    pub fn sled_config(&self) -> sled::Config {
        sled::Config::new()
            .path(&self.path)
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(None)
            .cache_capacity(self.cache_capacity)
            .mode(sled::Mode::HighThroughput)
    }

    /// Opens the sled database with [`LogConfig::sled_config`]. sled releases its file lock
    /// only when its background threads have let go of a dropped handle, a moment after the
    /// drop: a lock conflict is retried for up to 5 s before it is returned as an error.
    pub fn open_sled(&self) -> Result<sled::Db, LogError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.sled_config().open() {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return Ok(other?),
            }
        }
    }
}

#[derive(Debug)]
struct Writer {
    next_seq: u64,
    head_hash: [u8; 32],
    last_checkpoint_seq: u64,
    last_checkpoint_at: u64,
    poisoned: bool,
    synced_blobs: HashSet<OsString>,
}

#[derive(Debug, Default)]
struct Shared {
    indexes: Indexes,
    /// First seq of every frame, increasing.
    frames: Vec<u64>,
    /// The last signed checkpoint.
    checkpoint: Option<Checkpoint>,
    /// The durable head (read without waiting for a commit in progress).
    head: Head,
}

/// The event log over sled: one tree, key prefixes, one `Batch` + one flush + one real sync
/// per commit. See the [module docs](crate::log) for the layout and the guarantees.
pub struct SledLog {
    config: LogConfig,
    db: sled::Db,
    db_file: File,
    root: RootSecret,
    broker_key: Key,
    writer: Mutex<Writer>,
    shared: RwLock<Shared>,
    cache: Arc<FrameCache>,
    /// The background warm-up of the frame cache started by `open`, if still joinable.
    warming: Mutex<Option<Warming>>,
    durable: AtomicU64,
    head_tx: watch::Sender<u64>,
}

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog")
            .field("path", &self.config.path)
            .field("durable", &self.durable.load(Ordering::Acquire))
            .finish()
    }
}

fn sync_path(p: &Path, op: &'static str) -> Result<(), LogError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(LogError::io(op))
}

impl SledLog {
    /// Opens (or creates) the log at `config.path`; `root` derives the keys `verify` checks
    /// and the `broker` key that signs checkpoints. Rebuilds the indexes from the index frames.
    pub fn open(config: LogConfig, root: RootSecret) -> Result<Self, LogError> {
        let _span = tracing::info_span!("log.open", path = %config.path.display()).entered();
        std::fs::create_dir_all(&config.path).map_err(LogError::io("create log directory"))?;
        let started = std::time::Instant::now();
        let db = config.open_sled()?;
        let sled_ms = started.elapsed().as_millis() as u64;
        match db.get(META_KEY)? {
            Some(tag) if tag.as_ref() == LAYOUT_TAG => {}
            Some(tag) => {
                return Err(LogError::Corrupt {
                    at: "layout tag".into(),
                    detail: format!("unknown layout {:?}", String::from_utf8_lossy(&tag)),
                })
            }
            None if db.is_empty() => {
                db.insert(META_KEY, LAYOUT_TAG)?;
                db.flush()?;
            }
            None => {
                return Err(LogError::Corrupt {
                    at: "layout tag".into(),
                    detail: "missing in a non-empty database".into(),
                })
            }
        }
        let db_file = File::open(config.path.join("db")).map_err(LogError::io("open db file"))?;
        // Make the files and their directory entries durable once.
        db_file.sync_all().map_err(LogError::io("fsync db"))?;
        sync_path(&config.path.join("conf"), "fsync conf")?;
        sync_path(&config.path, "fsync log directory")?;
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_path(parent, "fsync parent directory")?;
        }
        let synced_ms = started.elapsed().as_millis() as u64;

        // Size the maps for the records the index frames hold (no rehashing while rebuilding):
        // the last index frame's first seq, bounded by what the db file could hold (every
        // record takes well over 64 bytes there), so a damaged key cannot ask for a huge map.
        let db_len = db_file.metadata().map(|m| m.len()).unwrap_or(0);
        let expected = db
            .scan_prefix([INDEX_PREFIX])
            .keys()
            .next_back()
            .transpose()?
            .and_then(|k| seq_of_key(&k))
            .unwrap_or(0)
            .min(db_len / 64);
        let mut shared = Shared {
            indexes: Indexes::with_capacity(expected as usize),
            ..Shared::default()
        };
        let mut next = 1u64;
        for item in db.scan_prefix([INDEX_PREFIX]) {
            let (k, v) = item?;
            let at = || format!("index frame {:?}", seq_of_key(&k));
            let first = seq_of_key(&k).filter(|&f| f == next);
            if first.is_none() {
                return Err(LogError::Corrupt {
                    at: at(),
                    detail: format!("expected a frame at seq {next}"),
                });
            }
            let mut bad = None;
            let (first, count) = visit_index_frame(&v, |seq, e| {
                if bad.is_none() {
                    bad = shared.indexes.insert_raw(seq, e).err();
                }
            })
            .map_err(|e| LogError::corrupt(at(), e))?;
            if let Some(e) = bad {
                return Err(LogError::corrupt(at(), e));
            }
            if first != next {
                return Err(LogError::Corrupt {
                    at: at(),
                    detail: format!("frame says seq {first}, expected {next}"),
                });
            }
            shared.frames.push(first);
            next = first + u64::from(count);
        }
        let head_hash = match shared.frames.last() {
            None => GENESIS,
            Some(&first) => {
                let last_key = db
                    .scan_prefix([FRAME_PREFIX])
                    .keys()
                    .next_back()
                    .transpose()?;
                if last_key.as_deref() != Some(&key(FRAME_PREFIX, first)[..]) {
                    return Err(LogError::Corrupt {
                        at: format!("frame {first}"),
                        detail: "record frames and index frames disagree".into(),
                    });
                }
                let v = db
                    .get(key(FRAME_PREFIX, first))?
                    .ok_or_else(|| LogError::Corrupt {
                        at: format!("frame {first}"),
                        detail: "missing".into(),
                    })?;
                let f = RecordFrame::parse(&v).map_err(|e| LogError::corrupt(first, e))?;
                if f.end_seq() != next {
                    return Err(LogError::Corrupt {
                        at: format!("frame {first}"),
                        detail: "record count differs from its index frame".into(),
                    });
                }
                f.last_hash().map_err(|e| LogError::corrupt(first, e))?
            }
        };
        let mut last_checkpoint_seq = 0;
        let mut last_checkpoint_at = 0;
        if let Some(item) = db.scan_prefix([CHECKPOINT_PREFIX]).next_back() {
            let (k, v) = item?;
            let c = Checkpoint::decode(&v).map_err(|e| LogError::Corrupt {
                at: format!("checkpoint {:?}", seq_of_key(&k)),
                detail: e.to_string(),
            })?;
            last_checkpoint_seq = c.seq;
            last_checkpoint_at = c.at;
            shared.checkpoint = Some(c);
        }
        let head = next - 1;
        shared.head = Head {
            seq: head,
            hash: head_hash,
        };
        tracing::info!(
            head,
            frames = shared.frames.len(),
            sled_ms,
            fsync_ms = synced_ms - sled_ms,
            rebuild_ms = started.elapsed().as_millis() as u64 - synced_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "log opened (indexes rebuilt)"
        );
        let cache = Arc::new(FrameCache::new(
            config.frame_cache_bytes,
            FRAME_TARGET_BYTES,
        ));
        let warming = Warming::start(&db, &shared.frames, &cache);
        let (head_tx, _) = watch::channel(head);
        Ok(SledLog {
            broker_key: root.derive(&Kid::broker()),
            root,
            db,
            db_file,
            writer: Mutex::new(Writer {
                next_seq: next,
                head_hash,
                last_checkpoint_seq,
                last_checkpoint_at,
                poisoned: false,
                synced_blobs: HashSet::new(),
            }),
            shared: RwLock::new(shared),
            cache,
            warming: Mutex::new(warming),
            durable: AtomicU64::new(head),
            head_tx,
            config,
        })
    }

    /// Waits until the frame cache holds the newest frames it can: `open` starts reading
    /// them from sled in a background thread (so that the first point reads after a restart
    /// do not each go to sled) and returns without waiting. For benchmarks and tests; reads
    /// are correct at any time.
    pub fn wait_for_frame_cache(&self) {
        let w = self
            .warming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = w {
            w.join();
        }
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The last signed checkpoint (publish it retained on `pairbus/v1/checkpoints`).
    pub fn latest_checkpoint(&self) -> Option<Checkpoint> {
        self.read_shared().checkpoint.clone()
    }

    /// All stored checkpoints, in seq order.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, LogError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([CHECKPOINT_PREFIX]) {
            let (k, v) = item?;
            out.push(Checkpoint::decode(&v).map_err(|e| LogError::Corrupt {
                at: format!("checkpoint {:?}", seq_of_key(&k)),
                detail: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// The log seq of an event id, if committed (the idempotency index).
    pub fn seq_of(&self, id: &pairbus_schemas::EventId) -> Option<u64> {
        let s = self.read_shared().indexes.seq_of(id)?;
        (s <= self.durable_seq()).then_some(s)
    }

    /// True when `kid` is a device revoked by a committed `device.revoked`.
    pub fn is_revoked(&self, kid: &Kid) -> bool {
        self.read_shared().indexes.is_revoked(kid)
    }

    fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    fn read_shared(&self) -> std::sync::RwLockReadGuard<'_, Shared> {
        // A panic while holding the lock cannot leave `Shared` half-updated in a way readers
        // care about (updates are single inserts), so a poisoned lock is still readable.
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    fn frame_of(&self, seq: u64) -> Option<u64> {
        self.frame_no_of(seq).map(|(_, first)| first)
    }

    /// The frame holding `seq`: its number (position in the frame list) and first seq.
    fn frame_no_of(&self, seq: u64) -> Option<(u64, u64)> {
        frame_containing(&self.read_shared().frames, seq)
    }

    /// The bytes of frame number `no` (first seq `first`), from the frame cache or sled.
    fn load_frame(&self, no: u64, first: u64) -> Result<sled::IVec, LogError> {
        if let Some(v) = self.cache.get(no) {
            return Ok(v);
        }
        let v = self.read_frame(first)?;
        self.cache.put_all(vec![(no, v.clone())]);
        Ok(v)
    }

    /// The bytes of the frame starting at `first`, from sled.
    fn read_frame(&self, first: u64) -> Result<sled::IVec, LogError> {
        self.db
            .get(key(FRAME_PREFIX, first))?
            .ok_or_else(|| LogError::Corrupt {
                at: format!("frame {first}"),
                detail: "indexed frame missing".into(),
            })
    }

    /// Appends the durable records with seq in `range` to `out`, in order; returns how many.
    pub fn read_into(&self, range: Range<u64>, out: &mut Vec<Record>) -> Result<usize, LogError> {
        let end = range.end.min(self.durable_seq() + 1);
        let start = range.start.max(1);
        if start >= end {
            return Ok(0);
        }
        let Some(first) = self.frame_of(start) else {
            return Ok(0);
        };
        let before = out.len();
        for item in self
            .db
            .range(key(FRAME_PREFIX, first)..key(FRAME_PREFIX, end))
        {
            let (k, v) = item?;
            let f = RecordFrame::parse(&v).map_err(|e| LogError::corrupt(first, e))?;
            let at = seq_of_key(&k).unwrap_or(0);
            for seq in f.first_seq.max(start)..f.end_seq().min(end) {
                out.push(f.record(seq).map_err(|e| LogError::corrupt(at, e))?);
            }
        }
        Ok(out.len() - before)
    }

    /// Counts and checks the size of the durable records in `range` without copying them
    /// (the catch-up read path without allocation; used by the benchmark).
    pub fn scan_bytes(&self, range: Range<u64>) -> Result<(u64, u64), LogError> {
        let end = range.end.min(self.durable_seq() + 1);
        let start = range.start.max(1);
        let (mut n, mut bytes) = (0u64, 0u64);
        let Some(first) = self.frame_of(start) else {
            return Ok((0, 0));
        };
        for item in self
            .db
            .range(key(FRAME_PREFIX, first)..key(FRAME_PREFIX, end))
        {
            let (_, v) = item?;
            let f = RecordFrame::parse(&v).map_err(|e| LogError::corrupt(first, e))?;
            for seq in f.first_seq.max(start)..f.end_seq().min(end) {
                let e = f
                    .entry((seq - f.first_seq) as u32)
                    .map_err(|e| LogError::corrupt(seq, e))?;
                n += 1;
                bytes += e.event.len() as u64;
            }
        }
        Ok((n, bytes))
    }

    /// fsyncs any blob file sled wrote (never expected with [`SEGMENT_SIZE`]; a safety net).
    fn sync_blobs(&self, w: &mut Writer) -> Result<(), LogError> {
        let dir = self.config.path.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LogError::io("list blobs")(e)),
        };
        let mut new = false;
        for entry in entries {
            let entry = entry.map_err(LogError::io("list blobs"))?;
            if w.synced_blobs.insert(entry.file_name()) {
                tracing::warn!(blob = ?entry.file_name(), "sled wrote a blob; fsyncing it");
                sync_path(&entry.path(), "fsync blob")?;
                new = true;
            }
        }
        if new {
            sync_path(&dir, "fsync blobs directory")?;
        }
        Ok(())
    }

    /// Writes one group commit: packs the appended events (their bytes are moved out of
    /// `events`) into frames, adds a checkpoint if due, applies one `Batch`, flushes, syncs.
    fn commit(
        &self,
        w: &mut Writer,
        events: &mut [VerifiedEvent],
        plan: &[Decision],
        received_at: u64,
    ) -> Result<Committed, LogError> {
        let appended = plan
            .iter()
            .filter(|d| matches!(d, Decision::Append(_)))
            .count() as u64;
        let mut records = Vec::with_capacity(appended as usize);
        let mut frames = Vec::new();
        let mut batch = sled::Batch::default();
        let mut prev = w.head_hash;
        let mut fb: Option<FrameBuilder> = None;
        let flush_frame =
            |fb: FrameBuilder, batch: &mut sled::Batch, frames: &mut Vec<(u64, sled::IVec)>| {
                let first = fb.first_seq();
                let (rec, ix) = fb.finish();
                let rec = sled::IVec::from(rec);
                batch.insert(&key(FRAME_PREFIX, first), rec.clone());
                batch.insert(&key(INDEX_PREFIX, first), ix);
                frames.push((first, rec));
            };
        for (e, d) in events.iter_mut().zip(plan) {
            let Decision::Append(seq) = *d else { continue };
            let r = Record::chain(prev, seq, received_at, std::mem::take(&mut e.bytes));
            if fb.as_ref().is_some_and(|b| b.is_full_for(r.event.len())) {
                if let Some(b) = fb.take() {
                    flush_frame(b, &mut batch, &mut frames);
                }
            }
            let b = fb.get_or_insert_with(|| FrameBuilder::new(seq, prev));
            b.push(received_at, &r.hash, &r.event, e.index_ref());
            prev = r.hash;
            records.push(r);
        }
        if let Some(b) = fb.take() {
            flush_frame(b, &mut batch, &mut frames);
        }
        let head = w.next_seq + appended - 1;
        let checkpoint = (appended > 0
            && (head - w.last_checkpoint_seq >= self.config.checkpoint_every
                || received_at.saturating_sub(w.last_checkpoint_at)
                    >= self.config.checkpoint_interval_ms))
            .then(|| Checkpoint::sign(head, prev, received_at, &self.broker_key));
        if let Some(c) = &checkpoint {
            batch.insert(&key(CHECKPOINT_PREFIX, c.seq), c.encode());
        }
        // From here on a failure leaves sled's state unknown: the caller poisons the store.
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        // Blob files first (never expected), so the log never points at an unsynced blob.
        self.sync_blobs(w)?;
        self.db_file
            .sync_data()
            .map_err(LogError::io("fdatasync db"))?;
        w.next_seq = head + 1;
        w.head_hash = prev;
        if let Some(c) = &checkpoint {
            w.last_checkpoint_seq = c.seq;
            w.last_checkpoint_at = c.at;
        }
        Ok(Committed {
            records,
            frames,
            checkpoint,
        })
    }
}

/// The background warm-up of the frame cache: a thread reading the newest record frames the
/// cache can hold, in one sequential pass over sled. Stopped and joined when the log drops.
#[derive(Debug)]
struct Warming {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Warming {
    /// Starts warming `cache` with the newest of `frames` (first seqs; numbers are positions),
    /// or returns `None` when there is nothing to warm or no thread could be started.
    fn start(db: &sled::Db, frames: &[u64], cache: &Arc<FrameCache>) -> Option<Self> {
        let n = cache.capacity().min(frames.len());
        if n == 0 {
            return None;
        }
        let from = frames.len() - n;
        let (db, frames, cache) = (db.clone(), frames[from..].to_vec(), cache.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("log-cache-warm".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match warm_cache(&db, &frames, from as u64, &cache, &stopped) {
                    Ok(cached) => tracing::info!(
                        cached_frames = cached,
                        warm_ms = started.elapsed().as_millis() as u64,
                        "frame cache warmed"
                    ),
                    Err(e) => tracing::warn!(error = %e, "frame cache warm-up stopped"),
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "frame cache warm-up not started"))
            .ok()?;
        Some(Warming { stop, thread })
    }

    /// Waits for the warm-up to finish.
    fn join(self) {
        if self.thread.join().is_err() {
            tracing::warn!("frame cache warm-up panicked");
        }
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        let w = self
            .warming
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(w) = w {
            w.stop.store(true, Ordering::Relaxed);
            w.join();
        }
    }
}

/// Frames the warm-up caches per write lock of the cache (4 MiB): readers and commits never
/// wait long for it.
const WARM_CHUNK: usize = 256;

/// Puts the record frames starting at `frames` (first seqs; the first is frame number
/// `first_no`) into `cache`, read in one sequential pass over sled, unless `stop` is set;
/// returns how many it cached. A frame whose key is not the expected one ends the warm-up
/// without caching it (reads then find the problem). Never replaces a newer frame (one
/// committed meanwhile) with an older one.
fn warm_cache(
    db: &sled::Db,
    frames: &[u64],
    first_no: u64,
    cache: &FrameCache,
    stop: &AtomicBool,
) -> Result<usize, LogError> {
    let (Some(&first), Some(&last)) = (frames.first(), frames.last()) else {
        return Ok(0);
    };
    let (mut cached, mut chunk) = (0, Vec::with_capacity(WARM_CHUNK));
    for (item, (i, &want)) in db
        .range(key(FRAME_PREFIX, first)..=key(FRAME_PREFIX, last))
        .zip(frames.iter().enumerate())
    {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (k, v) = item?;
        if k.as_ref() != key(FRAME_PREFIX, want) {
            break;
        }
        chunk.push((first_no + i as u64, v));
        if chunk.len() == WARM_CHUNK {
            cached += chunk.len();
            cache.put_older(std::mem::take(&mut chunk));
        }
    }
    cached += chunk.len();
    cache.put_older(chunk);
    Ok(cached)
}

/// Bytes from an entry's start that `by_device` loads ahead of reading it: the header and a
/// typical event (≈ 240 bytes; a longer event's tail is read by the copy itself).
const ENTRY_SPAN: usize = 320;

/// Loads one byte at each `(bytes, index)` (out-of-range indexes are skipped) and discards
/// them: a loop with nothing else in it keeps many cache misses in flight at once, so the
/// pass that then reads those places finds them in the CPU cache. No effect on results.
fn touch<'a>(places: impl Iterator<Item = (&'a [u8], usize)>) {
    let mut acc = 0u8;
    for (b, i) in places {
        acc ^= b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(acc);
}

/// The frame holding `seq` in a list of frame first seqs: its number and first seq.
fn frame_containing(frames: &[u64], seq: u64) -> Option<(u64, u64)> {
    let i = frames.partition_point(|&f| f <= seq).checked_sub(1)?;
    Some((i as u64, frames[i]))
}

/// The number of the frame holding `seq`, searching forward from frame number `from` by
/// galloping: for increasing seqs (a device's records) each lookup costs O(log distance)
/// instead of a binary search over the whole list. Any `from` gives the right answer.
fn frame_containing_from(frames: &[u64], from: usize, seq: u64) -> Option<usize> {
    if frames.get(from).is_none_or(|&f| f > seq) {
        return frame_containing(frames, seq).map(|(i, _)| i as usize);
    }
    // Invariant: frames[lo] <= seq.
    let (mut lo, mut step) = (from, 1);
    let hi = loop {
        let probe = lo.saturating_add(step);
        if probe >= frames.len() || frames[probe] > seq {
            break probe.min(frames.len());
        }
        lo = probe;
        step *= 2;
    };
    Some(lo + frames[lo..hi].partition_point(|&f| f <= seq) - 1)
}

/// What a durable commit produced, for the in-memory state and the caller.
struct Committed {
    records: Vec<Record>,
    /// First seq and bytes of every frame written.
    frames: Vec<(u64, sled::IVec)>,
    checkpoint: Option<Checkpoint>,
}

impl LogStore for SledLog {
    fn append_batch(
        &self,
        mut events: Vec<VerifiedEvent>,
        received_at: u64,
    ) -> Result<Vec<AppendOutcome>, LogError> {
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if w.poisoned {
            return Err(LogError::Poisoned);
        }
        let plan = plan_batch(&self.read_shared().indexes, &events, w.next_seq);
        let appended = plan
            .iter()
            .filter(|d| matches!(d, Decision::Append(_)))
            .count() as u64;
        if appended == 0 {
            return Ok(plan
                .into_iter()
                .filter_map(|d| match d {
                    Decision::Skip(o) => Some(o),
                    Decision::Append(_) => None,
                })
                .collect());
        }
        if w.next_seq.checked_add(appended).is_none() {
            return Err(LogError::Full);
        }
        let span = tracing::info_span!(
            "log.commit",
            first_seq = w.next_seq,
            events = events.len(),
            appended
        );
        let _enter = span.enter();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit(&mut w, &mut events, &plan, received_at)
        }));
        let Committed {
            records,
            frames,
            checkpoint,
        } = match result {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "commit failed; log poisoned");
                w.poisoned = true;
                return Err(e);
            }
            Err(panic) => {
                w.poisoned = true;
                let detail = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(%detail, "storage engine panicked during commit; log poisoned");
                return Err(LogError::Io {
                    op: "commit (storage engine panicked)",
                    source: std::io::Error::other(detail),
                });
            }
        };
        let head = w.next_seq - 1;
        let mut to_cache = Vec::with_capacity(frames.len());
        {
            let mut s = self.shared.write().unwrap_or_else(|e| e.into_inner());
            s.indexes.apply(&events, &plan);
            for (first, bytes) in frames {
                to_cache.push((s.frames.len() as u64, bytes));
                s.frames.push(first);
            }
            if checkpoint.is_some() {
                s.checkpoint = checkpoint;
            }
            s.head = Head {
                seq: head,
                hash: w.head_hash,
            };
        }
        // Never waits for readers: frames not cached now are cached on their first miss.
        self.cache.try_put_all(to_cache);
        self.durable.store(head, Ordering::Release);
        self.head_tx.send_replace(head);
        tracing::debug!(head, "committed");
        drop(w);
        let mut records = records.into_iter();
        Ok(plan
            .into_iter()
            .map(|d| match d {
                Decision::Skip(o) => o,
                Decision::Append(seq) => match records.next() {
                    Some(r) => AppendOutcome::Committed(r),
                    // Unreachable: one record per Append, in order.
                    None => AppendOutcome::AlreadyCommitted(seq),
                },
            })
            .collect())
    }

    fn head(&self) -> Head {
        self.read_shared().head
    }

    fn get(&self, seq: u64) -> Result<Option<Record>, LogError> {
        if seq == 0 || seq > self.durable_seq() {
            return Ok(None);
        }
        let Some((no, first)) = self.frame_no_of(seq) else {
            return Ok(None);
        };
        let v = self.load_frame(no, first)?;
        let f = RecordFrame::parse(&v).map_err(|e| LogError::corrupt(first, e))?;
        f.record(seq)
            .map(Some)
            .map_err(|e| LogError::corrupt(seq, e))
    }

    fn range(&self, range: Range<u64>) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        self.read_into(range, &mut out)?;
        Ok(out)
    }

    fn by_device(&self, device: &DeviceId, range: Range<u64>) -> Result<Vec<Record>, LogError> {
        let end = range.end.min(self.durable_seq() + 1);
        // (seq, index into `frames`) of every wanted record and (number, first seq) of every
        // distinct frame they sit in, under the read lock.
        let mut wanted: Vec<(u64, usize)> = Vec::new();
        let mut frames: Vec<(u64, u64)> = Vec::new();
        {
            let s = self.read_shared();
            let all = s.indexes.device_seqs(device);
            let lo = all.partition_point(|&x| x < range.start);
            let hi = all.partition_point(|&x| x < end).max(lo);
            wanted.reserve(hi - lo);
            frames.reserve(hi - lo);
            let mut at = 0;
            for &seq in &all[lo..hi] {
                let Some(no) = frame_containing_from(&s.frames, at, seq) else {
                    continue;
                };
                at = no;
                if frames.last().map(|f| f.0) != Some(no as u64) {
                    frames.push((no as u64, s.frames[no]));
                }
                wanted.push((seq, frames.len() - 1));
            }
        }
        // The records sit in different frames, so the cost is memory latency: short passes
        // with independent loads (no lock, atomic or allocation per frame) let the CPU
        // overlap the cache misses of many records instead of taking them one by one.
        // 1. The frames: borrowed from the cache (one read lock), the others from sled.
        let view = self.cache.read();
        let mut loaded: Vec<(u64, sled::IVec)> = Vec::new();
        for &(no, first) in &frames {
            if view.get(no).is_none() {
                loaded.push((no, self.read_frame(first)?));
            }
        }
        let mut from_sled = loaded.iter();
        let mut bytes: Vec<&[u8]> = Vec::with_capacity(frames.len());
        for &(no, first) in &frames {
            bytes.push(match view.get(no) {
                Some(v) => v,
                None => match from_sled.next() {
                    Some((n, v)) if *n == no => v,
                    // Unreachable: the cache cannot change while `view` is held.
                    _ => return Err(LogError::corrupt(first, FrameError::Bad("frame cache"))),
                },
            });
        }
        // Each pass starts with a tight loop that only loads the bytes the pass will read
        // (`touch`): many independent loads in flight, so the pass itself hits the cache.
        touch(bytes.iter().map(|b| (*b, 0)));
        let mut parsed = Vec::with_capacity(frames.len());
        for (b, &(_, first)) in bytes.iter().zip(&frames) {
            parsed.push(RecordFrame::parse(b).map_err(|e| LogError::corrupt(first, e))?);
        }
        // 2. Where each record is in its frame: first the offset tables,
        touch(wanted.iter().map(|&(seq, fi)| {
            let f = &parsed[fi];
            let table = RecordFrame::offset_table_at(seq.wrapping_sub(f.first_seq) as usize);
            (f.as_bytes(), table)
        }));
        let mut offsets = Vec::with_capacity(wanted.len());
        for &(seq, fi) in &wanted {
            let f = &parsed[fi];
            let i = seq
                .checked_sub(f.first_seq)
                .filter(|&i| i < u64::from(f.count))
                .ok_or_else(|| LogError::Corrupt {
                    at: format!("frame {}", f.first_seq),
                    detail: format!("does not hold seq {seq}"),
                })? as u32;
            let off = f.offset(i).map_err(|e| LogError::corrupt(seq, e))?;
            let prev_at = i.checked_sub(1).map(|p| f.offset(p)).transpose();
            let prev_at = prev_at.map_err(|e| LogError::corrupt(seq, e))?;
            offsets.push((off, prev_at));
        }
        //    then the entries (`prev`, header, and every cache line up to the next entry);
        touch(
            wanted
                .iter()
                .zip(&offsets)
                .flat_map(|(&(_, fi), &(off, prev_at))| {
                    let b = parsed[fi].as_bytes();
                    let prev = prev_at.map(|p| (b, p + 8));
                    let lines = (off..(off + ENTRY_SPAN).min(b.len())).step_by(64);
                    prev.into_iter().chain(lines.map(move |at| (b, at)))
                }),
        );
        let mut located = Vec::with_capacity(wanted.len());
        for (&(seq, fi), &(off, prev_at)) in wanted.iter().zip(&offsets) {
            let at = parsed[fi]
                .locate_at(off, prev_at)
                .map_err(|e| LogError::corrupt(seq, e))?;
            located.push(at);
        }
        // 3. the copies.
        let out = wanted
            .iter()
            .zip(located)
            .map(|(&(seq, fi), at)| Record {
                seq,
                prev: at.prev,
                hash: at.hash,
                received_at: at.received_at,
                event: parsed[fi].as_bytes()[at.event].to_vec(),
            })
            .collect();
        drop(parsed);
        drop(view);
        if !loaded.is_empty() {
            self.cache.put_all(loaded);
        }
        Ok(out)
    }

    fn verify(&self) -> Result<VerifyReport, LogError> {
        let _span = tracing::info_span!("log.verify").entered();
        let mut walker = Walker::new(&self.root);
        // The head and the checkpoints are read with no commit in flight (the writer lock),
        // so every stored checkpoint must be at or below that head.
        let head = {
            let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            for item in self.db.scan_prefix([CHECKPOINT_PREFIX]) {
                let (_, v) = item?;
                walker.checkpoint(
                    Checkpoint::decode(&v).map_err(|e| e.to_string()),
                    &self.broker_key,
                );
            }
            self.durable_seq()
        };
        let mut index = self.db.scan_prefix([INDEX_PREFIX]);
        // Only frames that start at or below the head: a commit racing the walk is not seen.
        let frames = (head > 0)
            .then(|| {
                self.db
                    .range(key(FRAME_PREFIX, 1)..=key(FRAME_PREFIX, head))
            })
            .into_iter()
            .flatten();
        for item in frames {
            if walker.failed() {
                break;
            }
            let (k, v) = item?;
            let ix = match index.next().transpose()? {
                Some((ik, iv)) if ik.get(1..) == k.get(1..) => decode_index_frame(&iv)
                    .map(|(_, e)| e)
                    .map_err(|e| e.to_string()),
                Some(_) => Err("index frame keys differ from record frame keys".into()),
                None => Err("index frame missing".into()),
            };
            walker.frame(&v, ix);
        }
        let report = walker.finish(head);
        tracing::info!(records = report.records, ok = report.is_ok(), "verified");
        Ok(report)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::EventId;

    /// Opening fills the frame cache with the newest frames it can hold, each under its own
    /// number and equal to the frame in sled; older frames stay out.
    #[test]
    fn open_warms_the_frame_cache_with_the_newest_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LogConfig::new(dir.path());
        config.frame_cache_bytes = 5 * FRAME_TARGET_BYTES;
        let root = pairbus_schemas::vectors::root();
        {
            let log = SledLog::open(config.clone(), root.clone()).unwrap();
            let events = (0..200u64)
                .map(|i| {
                    let d = DeviceId::parse(&format!("{:016x}", i % 3)).unwrap();
                    VerifiedEvent::from_parts(
                        EventId((i as u128 + 1).to_be_bytes()),
                        d.kid(),
                        i + 1,
                        d,
                        None,
                        vec![i as u8; 1000],
                    )
                })
                .collect();
            log.append_batch(events, 1).unwrap();
        }
        let log = SledLog::open(config, root).unwrap();
        log.wait_for_frame_cache();
        let frames = log.read_shared().frames.clone();
        assert!(frames.len() > 5, "{} frames", frames.len());
        for (no, &first) in frames.iter().enumerate() {
            let cached = log.cache.get(no as u64);
            if no < frames.len() - 5 {
                assert!(cached.is_none(), "frame {no} cached");
            } else {
                assert_eq!(cached, Some(log.read_frame(first).unwrap()), "frame {no}");
            }
        }
    }

    #[test]
    fn galloping_finds_the_same_frame_as_a_binary_search() {
        let mut rng_state = 7u64;
        let mut next = move |m: u64| {
            rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (rng_state >> 33) % m
        };
        // Frames of 1 to 40 records from seq 1.
        let mut frames = vec![1u64];
        while frames.len() < 500 {
            let last = *frames.last().unwrap();
            frames.push(last + 1 + next(40));
        }
        let end = frames[499] + 10;
        assert_eq!(frame_containing_from(&frames, 0, 0), None);
        assert_eq!(frame_containing_from(&[], 0, 5), None);
        for gap in [1, 3, 50, 2000] {
            let (mut seq, mut at) = (1, 0);
            while seq < end {
                let want = frame_containing(&frames, seq).map(|(i, _)| i as usize);
                assert_eq!(frame_containing_from(&frames, at, seq), want, "seq {seq}");
                // Any start answers right, even one past the frame (a stale cursor).
                let any = next(frames.len() as u64 + 2) as usize;
                assert_eq!(frame_containing_from(&frames, any, seq), want, "seq {seq}");
                at = want.unwrap();
                seq += 1 + next(gap);
            }
        }
    }
}
