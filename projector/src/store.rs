//! The persistence shell: projections in sled, with a checkpoint written atomically with them.
//!
//! One tree, `projector`, holds everything. A save writes its frames first, one insert each,
//! then one [`sled::Batch`] with the changed device cards and commands, the bookkeeping and the
//! checkpoint: after a crash the tree is either before or after that batch, never between. A
//! frame counts only once the checkpoint has reached the save it belongs to (its key starts
//! with that save's last seq): frames past the checkpoint are an interrupted save's and are
//! ignored, and removed when the store is opened by [`Persistent`].
//!
//! Why not the frames in the batch too: sled 0.34 applies every batch under one write lock
//! shared by *every* database in the process, the broker's log included. A batch of ≈ 50
//! frames of 60 KiB held it for 30–70 ms, and every group commit of the log waited behind it
//! (BENCHMARKS.md, "Session 4"). Single inserts take that lock's shared side, briefly.
//!
//! Keys (values are JSON, the documented view shapes where they are views):
//!
//! | key | value |
//! |---|---|
//! | `v` | the format of this table: `3` |
//! | `c` | checkpoint `{"last_seq", "last_hash"}` (hex) |
//! | `d/<device_id>` | device card |
//! | `f/<last_seq u64 BE><part u32 BE>` | a *frame*: a JSON array of the trail entries (by device, each device's in trail order), then the trail entries of undecodable records and the alerts, that one save added: `{"T":[device_id, index, entry]}`, `{"U":[index, entry]}`, `{"A":[index, alert]}`; at most ≈ 64 KiB each |
//! | `m/<command id, 16 bytes>` | an issued command: `{"id", "issuer", "target", "command", "expires_at", "seq", "completed": [seq, outcome] or null}` |
//! | `k` | the rest of the fold's bookkeeping (principal seqs, requests, offers, used nonces, stats) |
//!
//! [`Store::save`] writes what the effects since the last save name (cards, commands, new
//! trail entries and alerts as frames) plus the bookkeeping and the checkpoint; [`Store::load`]
//! reads it all back. A restart loads, then feeds the records after `last_seq`. The folding
//! thread only copies what a save needs ([`Store::prepare`]); JSON is made where the save is
//! written. Commands have keys of their own (format 3) because they are never forgotten: in
//! `k` (format 2), every save re-encoded all of them, 150–220 ms on the folding thread at
//! 200,000 commands.
//!
//! Why frames: one sled insert costs ≈ 10 µs of CPU, and trail entries and alerts are one or
//! two per event, so storing each under its own key (format 1) made the save cost more than
//! the fold (BENCHMARKS.md). A frame holds every entry of one save, written once, never
//! rewritten. A table in another format (no `v`, or another value) is cleared when opened, and
//! the projections are rebuilt from the log.

use crate::fold::{Effect, IssuedCommand, Offer, Projections};
use crate::model::{Alert, DeviceCard, Trail, TrailCopy, TrailEntry};
use fxhash::{FxHashMap, FxHashSet};
use pairbus_schemas::event::{Command, Outcome};
use pairbus_schemas::{DeviceId, EventId, Kid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not parse (corruption or a foreign database).
    #[error("corrupt projector store at key `{key}`: {detail}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

fn corrupt(key: &[u8], detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    last_seq: u64,
    last_hash: String,
}

#[derive(Serialize, Deserialize)]
struct OfferRow {
    nonce: String,
    manager: String,
    sensor: String,
    expires_at: u64,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct CommandRow {
    id: String,
    issuer: String,
    target: String,
    command: String,
    expires_at: u64,
    seq: u64,
    completed: Option<(u64, String)>,
}

#[derive(Serialize, Deserialize, Default)]
struct Core {
    principals: BTreeMap<String, u64>,
    requests: Vec<(String, String)>,
    offers: Vec<OfferRow>,
    used_nonces: BTreeSet<String>,
    stats: BTreeMap<String, BTreeMap<u64, u64>>,
}

/// The bookkeeping as a save copies it on the folding thread (plain clones); made into its
/// stored form ([`Core`], hex strings, sorted) on the writing thread.
struct CoreCopy {
    principals: FxHashMap<Kid, u64>,
    requests: BTreeSet<(DeviceId, DeviceId)>,
    offers: FxHashMap<[u8; 16], Offer>,
    used_nonces: FxHashSet<[u8; 16]>,
    stats: BTreeMap<String, BTreeMap<u64, u64>>,
}

impl CoreCopy {
    fn of(p: &Projections) -> Self {
        CoreCopy {
            principals: p.principals.clone(),
            requests: p.requests.clone(),
            offers: p.offers.clone(),
            used_nonces: p.used_nonces.clone(),
            stats: p.stats.clone(),
        }
    }
}

fn command_row(id: &EventId, c: &IssuedCommand) -> CommandRow {
    CommandRow {
        id: id.to_hex(),
        issuer: c.issuer.to_string(),
        target: c.target.to_string(),
        command: c.command.as_str().to_owned(),
        expires_at: c.expires_at,
        seq: c.seq,
        completed: c.completed.map(|(s, o)| (s, o.as_str().to_owned())),
    }
}

/// The key of command `id`'s row: `m/` + its 16 bytes.
fn command_key(id: &EventId) -> Vec<u8> {
    let mut k = b"m/".to_vec();
    k.extend_from_slice(&id.0);
    k
}

fn apply_command(p: &mut Projections, r: CommandRow, key: &[u8]) -> Result<(), StoreError> {
    let command = Command::parse(&r.command).ok_or_else(|| corrupt(key, "command"))?;
    let completed = match r.completed {
        None => None,
        Some((s, o)) => Some((
            s,
            Outcome::parse(&o).ok_or_else(|| corrupt(key, "outcome"))?,
        )),
    };
    let id = EventId(hex16(&r.id)?);
    if command_key(&id) != key {
        return Err(corrupt(key, "the row's id is not its key's"));
    }
    p.commands.insert(
        id,
        IssuedCommand {
            issuer: dev(&r.issuer)?,
            target: dev(&r.target)?,
            command,
            expires_at: r.expires_at,
            seq: r.seq,
            completed,
        },
    );
    Ok(())
}

fn core_of(p: &CoreCopy) -> Core {
    let mut offers: Vec<OfferRow> = p
        .offers
        .iter()
        .map(|(n, o)| OfferRow {
            nonce: hex::encode(n),
            manager: o.manager.to_string(),
            sensor: o.sensor.to_string(),
            expires_at: o.expires_at,
            seq: o.seq,
        })
        .collect();
    offers.sort_by(|a, b| a.nonce.cmp(&b.nonce));
    Core {
        principals: p
            .principals
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        requests: p
            .requests
            .iter()
            .map(|(m, s)| (m.to_string(), s.to_string()))
            .collect(),
        offers,
        used_nonces: p.used_nonces.iter().map(hex::encode).collect(),
        stats: p.stats.clone(),
    }
}

fn dev(s: &str) -> Result<DeviceId, StoreError> {
    DeviceId::parse(s).map_err(|e| corrupt(b"k", e))
}

fn hex16(s: &str) -> Result<[u8; 16], StoreError> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).map_err(|e| corrupt(b"k", e))?;
    Ok(out)
}

fn apply_core(p: &mut Projections, c: Core) -> Result<(), StoreError> {
    for (k, v) in c.principals {
        p.principals
            .insert(Kid::parse(&k).map_err(|e| corrupt(b"k", e))?, v);
    }
    for (m, s) in c.requests {
        p.requests.insert((dev(&m)?, dev(&s)?));
    }
    for o in c.offers {
        p.offers.insert(
            hex16(&o.nonce)?,
            Offer {
                manager: dev(&o.manager)?,
                sensor: dev(&o.sensor)?,
                expires_at: o.expires_at,
                seq: o.seq,
            },
        );
    }
    for n in c.used_nonces {
        p.used_nonces.insert(hex16(&n)?);
    }
    p.stats = c.stats;
    Ok(())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // The view types serialize infallibly (string keys, no non-finite floats).
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| corrupt(key, e))
}

/// The value of `v`: the layout described in the module docs.
const FORMAT: &[u8] = b"3";

/// A frame is closed once its JSON is this long (one more item may follow).
const FRAME_BYTES: usize = 60 * 1024;

/// One element of a frame, as written (borrowing a prepared save's copies).
#[derive(Serialize)]
enum ItemOut<'a> {
    T(&'a str, usize, &'a TrailEntry),
    U(usize, &'a TrailEntry),
    A(usize, &'a Alert),
}

/// One element of a frame, as read.
#[derive(Deserialize)]
enum ItemIn {
    T(String, usize, TrailEntry),
    U(usize, TrailEntry),
    A(usize, Alert),
}

/// The first key of the frames of the save that ended at `last_seq` (`f/` + seq, big-endian;
/// the part number follows).
fn frame_key(last_seq: u64) -> Vec<u8> {
    let mut k = b"f/".to_vec();
    k.extend_from_slice(&last_seq.to_be_bytes());
    k
}

/// Writes items into frames of about [`FRAME_BYTES`], keyed by the save's last seq and part.
struct Frames {
    last_seq: u64,
    part: u32,
    buf: Vec<u8>,
    done: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Frames {
    fn new(last_seq: u64) -> Self {
        Frames {
            last_seq,
            part: 0,
            buf: Vec::new(),
            done: Vec::new(),
        }
    }

    fn push(&mut self, item: &ItemOut<'_>) {
        self.buf.push(if self.buf.is_empty() { b'[' } else { b',' });
        // The view types serialize infallibly (string keys, no non-finite floats).
        let _ = serde_json::to_writer(&mut self.buf, item);
        if self.buf.len() >= FRAME_BYTES {
            self.close();
        }
    }

    fn close(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.buf.push(b']');
        let mut k = frame_key(self.last_seq);
        k.extend_from_slice(&self.part.to_be_bytes());
        self.part += 1;
        self.done.push((k, std::mem::take(&mut self.buf)));
    }

    fn finish(mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.close();
        self.done
    }
}

/// Puts `item` at `index` of `list`: the next one is appended, an earlier one replaced (a
/// later save wins); a gap means frames are missing.
fn place<T>(list: &mut Vec<T>, index: usize, item: T, key: &[u8]) -> Result<(), StoreError> {
    match index.cmp(&list.len()) {
        std::cmp::Ordering::Less => list[index] = item,
        std::cmp::Ordering::Equal => list.push(item),
        std::cmp::Ordering::Greater => {
            return Err(corrupt(key, format!("entry {index} after {}", list.len())))
        }
    }
    Ok(())
}

/// Projections persisted in a sled database (a handle: clones share the database).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store in the folder `path`. sled releases its file lock only
    /// when its background threads have let go of a dropped handle, a moment after the drop, so
    /// a lock conflict is retried for up to 5 s (as the broker's log does).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(path.as_ref()) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        Store::in_db(db)
    }

    /// Uses the tree `projector` of an already open database (the broker's own, so that the
    /// log and the projections live in one data folder and one sled instance).
    pub fn in_db(db: sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("projector")?;
        Ok(Store { db, tree })
    }

    /// The last applied log position and hash, if any record was saved.
    pub fn checkpoint(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let Some(v) = self.tree.get(b"c")? else {
            return Ok(None);
        };
        let c: Checkpoint = parse(b"c", &v)?;
        let mut h = [0u8; 32];
        hex::decode_to_slice(&c.last_hash, &mut h).map_err(|e| corrupt(b"c", e))?;
        Ok(Some((c.last_seq, h)))
    }

    /// Writes the changes named by `effects` (everything applied since the last save), the
    /// fold's bookkeeping and the checkpoint of `p` (atomically, see the module docs), then
    /// flushes.
    pub fn save(&self, p: &Projections, effects: &[Effect]) -> Result<(), StoreError> {
        self.write(Store::prepare(p, effects))
    }

    /// Writes a save prepared by [`Store::prepare`] (atomically, then flushes). Saves must be
    /// written in the order they were prepared: each holds only the changes since the one
    /// before it.
    pub fn write(&self, save: PreparedSave) -> Result<(), StoreError> {
        // The JSON and sled's batch (a hash map of reference-counted keys and values) are made
        // on this side: together they cost more than the fold of the same records.
        let mut frames = Frames::new(save.last_seq);
        for copy in &save.trails {
            let d = copy.owner().as_str();
            for (index, e) in copy.entries() {
                frames.push(&ItemOut::T(d, index, &e));
            }
        }
        for item in &save.items {
            match item {
                Item::U(index, e) => frames.push(&ItemOut::U(*index, e)),
                Item::A(index, a) => frames.push(&ItemOut::A(*index, a)),
            }
        }
        // Frames first, outside the batch (see the module docs): they count once `c` is written.
        for (k, v) in frames.finish() {
            self.tree.insert(k, v)?;
        }
        let mut batch = sled::Batch::default();
        for c in &save.cards {
            batch.insert(format!("d/{}", c.device_id).into_bytes(), json(c));
        }
        batch.insert(b"v".to_vec(), FORMAT.to_vec());
        for (id, c) in &save.commands {
            batch.insert(command_key(id), json(&command_row(id, c)));
        }
        batch.insert(b"k".to_vec(), json(&core_of(&save.core)));
        batch.insert(b"c".to_vec(), json(&save.checkpoint));
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The batch [`Store::save`] writes, built without touching the database, so that the
    /// fold can go on while another thread writes it ([`Store::write`]).
    pub fn prepare(p: &Projections, effects: &[Effect]) -> PreparedSave {
        let mut items = Vec::new();
        let mut cards: BTreeSet<&DeviceId> = BTreeSet::new();
        // Each device's first new trail entry: trails only grow, so a save holds every entry
        // from there on (copied as compact slots, rebuilt on the writing thread).
        let mut trails: HashMap<&DeviceId, usize> = HashMap::new();
        let mut commands: BTreeSet<&EventId> = BTreeSet::new();
        for fx in effects {
            match fx {
                Effect::DeviceChanged(d) => {
                    cards.insert(d);
                }
                Effect::Trail {
                    device: Some(d),
                    index,
                } => {
                    let first = trails.entry(d).or_insert(*index);
                    *first = (*first).min(*index);
                }
                Effect::Trail {
                    device: None,
                    index,
                } => {
                    if let Some(e) = p.unattributed.get(*index) {
                        items.push(Item::U(*index, e.clone()));
                    }
                }
                Effect::Alert(i) => {
                    if let Some(a) = p.alerts.get(*i) {
                        items.push(Item::A(*i, a.clone()));
                    }
                }
                Effect::GraphChanged => {}
                Effect::CommandChanged(id) => {
                    commands.insert(id);
                }
            }
        }
        let mut trails: Vec<TrailCopy> = trails
            .into_iter()
            .filter_map(|(d, first)| p.trails.get(d).map(|t| t.copy_from(first)))
            .collect();
        // A stable order, so that a save's frames do not depend on a hash map's.
        trails.sort_unstable_by(|a, b| a.owner().cmp(b.owner()));
        PreparedSave {
            trails,
            items,
            cards: cards
                .into_iter()
                .filter_map(|d| p.devices.get(d).cloned())
                .collect(),
            commands: commands
                .into_iter()
                .filter_map(|id| p.commands.get(id).map(|c| (*id, c.clone())))
                .collect(),
            core: CoreCopy::of(p),
            checkpoint: Checkpoint {
                last_seq: p.last_seq,
                last_hash: hex::encode(p.last_hash),
            },
            last_seq: p.last_seq,
        }
    }

    /// Whether the table is empty or in this version's format (see the module docs).
    pub fn is_current_format(&self) -> Result<bool, StoreError> {
        Ok(match self.tree.get(b"v")? {
            Some(v) => v.as_ref() == FORMAT,
            None => self.tree.is_empty(),
        })
    }

    /// Removes the frames of a save that was interrupted before its checkpoint was written
    /// (frames past the checkpoint; all frames if there is none), so that a later save with
    /// the same last seq cannot be read together with them. Returns how many were removed.
    pub fn discard_unfinished(&self) -> Result<usize, StoreError> {
        let from = self
            .checkpoint()?
            .map_or(0, |(seq, _)| seq.saturating_add(1));
        let mut removed = 0;
        // `f0` is the first key after every `f/…` key.
        for k in self.tree.range(frame_key(from)..b"f0".to_vec()).keys() {
            self.tree.remove(k?)?;
            removed += 1;
        }
        if removed > 0 {
            self.db.flush()?;
        }
        Ok(removed)
    }

    /// Empties the store (the projections will be rebuilt from genesis).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.tree.clear()?;
        self.db.flush()?;
        Ok(())
    }

    /// Writes all of `p` (a first save, or after a rebuild).
    pub fn save_all(&self, p: &Projections) -> Result<(), StoreError> {
        self.tree.clear()?;
        let mut fx: Vec<Effect> = p
            .devices
            .keys()
            .cloned()
            .map(Effect::DeviceChanged)
            .collect();
        for (d, t) in &p.trails {
            fx.extend((0..t.len()).map(|index| Effect::Trail {
                device: Some(d.clone()),
                index,
            }));
        }
        fx.extend((0..p.unattributed.len()).map(|index| Effect::Trail {
            device: None,
            index,
        }));
        fx.extend((0..p.alerts.len()).map(Effect::Alert));
        fx.extend(p.commands.keys().copied().map(Effect::CommandChanged));
        self.save(p, &fx)
    }

    /// Reads the projections back (empty projections if nothing was saved).
    pub fn load(&self) -> Result<Projections, StoreError> {
        let mut p = Projections::new();
        if let Some((seq, hash)) = self.checkpoint()? {
            p.last_seq = seq;
            p.last_hash = hash;
        }
        if let Some(v) = self.tree.get(b"k")? {
            apply_core(&mut p, parse(b"k", &v)?)?;
        }
        for kv in self.tree.scan_prefix(b"m/") {
            let (k, v) = kv?;
            apply_command(&mut p, parse(&k, &v)?, &k)?;
        }
        for kv in self.tree.scan_prefix(b"d/") {
            let (k, v) = kv?;
            let card: DeviceCard = parse(&k, &v)?;
            p.devices.insert(card.device_id.clone(), card);
        }
        for kv in self
            .tree
            .range(frame_key(0)..frame_key(p.last_seq.saturating_add(1)))
        {
            let (k, v) = kv?;
            let items: Vec<ItemIn> = parse(&k, &v)?;
            for item in items {
                match item {
                    ItemIn::T(d, index, e) => {
                        let d = DeviceId::parse(&d).map_err(|e| corrupt(&k, e))?;
                        let trail = p
                            .trails
                            .entry(d)
                            .or_insert_with_key(|k| Trail::new(k.clone()));
                        if index == trail.len() {
                            trail.push(e);
                        } else {
                            return Err(corrupt(
                                &k,
                                format!("trail entry {index} after {}", trail.len()),
                            ));
                        }
                    }
                    ItemIn::U(index, e) => place(&mut p.unattributed, index, e, &k)?,
                    ItemIn::A(index, a) => place(&mut p.alerts, index, a, &k)?,
                }
            }
        }
        Ok(p)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// One save of the projections, ready to be written ([`Store::prepare`], [`Store::write`]):
/// copies of what changed, so that the fold can go on while another thread serialises and
/// writes it.
pub struct PreparedSave {
    trails: Vec<TrailCopy>,
    items: Vec<Item>,
    cards: Vec<DeviceCard>,
    commands: Vec<(EventId, IssuedCommand)>,
    core: CoreCopy,
    checkpoint: Checkpoint,
    last_seq: u64,
}

/// A new trail entry of an undecodable record, or alert, of a save.
enum Item {
    U(usize, TrailEntry),
    A(usize, Alert),
}

impl PreparedSave {
    /// The checkpoint it saves: the last log position applied.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl std::fmt::Debug for PreparedSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSave")
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

/// The fold with its store: applies records and saves every `batch` records (and on
/// [`Persistent::commit`]), so that a restart resumes from the last checkpoint.
#[derive(Debug)]
pub struct Persistent {
    /// The fold.
    pub projector: crate::Projector,
    /// The current projections (ahead of the store by the unsaved records).
    pub projections: Projections,
    store: Store,
    pending: Vec<Effect>,
    unsaved: usize,
    batch: usize,
}

impl Persistent {
    /// Opens the store and loads its projections; `batch` records are saved at a time.
    pub fn open(
        projector: crate::Projector,
        path: impl AsRef<Path>,
        batch: usize,
    ) -> Result<Self, StoreError> {
        Persistent::with_store(projector, Store::open(path)?, batch)
    }

    /// The fold over an opened store (see [`Store::in_db`]).
    pub fn with_store(
        projector: crate::Projector,
        store: Store,
        batch: usize,
    ) -> Result<Self, StoreError> {
        if !store.is_current_format()? {
            // Written by another version: start over; the caller folds the log from genesis.
            store.clear()?;
        }
        let discarded = store.discard_unfinished()?;
        if discarded > 0 {
            tracing::warn!(
                frames = discarded,
                "removed the frames of a save of the projections that did not finish"
            );
        }
        let projections = store.load()?;
        Ok(Persistent {
            projector,
            projections,
            store,
            pending: Vec::new(),
            unsaved: 0,
            batch: batch.max(1),
        })
    }

    /// The next log position wanted.
    pub fn next_seq(&self) -> u64 {
        self.projections.next_seq()
    }

    /// Applies a record; returns its effects (saved when the batch is full).
    pub fn apply(&mut self, rec: &pairbus_schemas::Record) -> Result<Vec<Effect>, StoreError> {
        let fx = self.projector.apply(&mut self.projections, rec);
        // A stale (already applied) record has no effects; every applied one has a trail entry.
        if !fx.is_empty() {
            self.pending.extend(fx.iter().cloned());
            self.unsaved += 1;
        }
        if self.unsaved >= self.batch {
            self.commit()?;
        }
        Ok(fx)
    }

    /// Forgets the projections, in memory and in the store: the next record folded must be
    /// the log's first (a checkpoint that is not a position of the log being followed).
    pub fn rebuild_from_scratch(&mut self) -> Result<(), StoreError> {
        self.store.clear()?;
        self.projections = Projections::new();
        self.pending.clear();
        self.unsaved = 0;
        Ok(())
    }

    /// Records applied since the last save.
    pub fn unsaved(&self) -> usize {
        self.unsaved
    }

    /// Sets how many records [`Persistent::apply`] applies before saving by itself
    /// (`usize::MAX`: never, the caller saves with [`Persistent::commit`] or
    /// [`Persistent::take_save`]).
    pub fn set_save_every(&mut self, records: usize) {
        self.batch = records.max(1);
    }

    /// A handle on the store (to write prepared saves from another thread).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Prepares the save of everything applied since the last one and forgets it here, as if
    /// saved: the caller must [`Store::write`] it, in order with the other saves. `None` when
    /// nothing was applied since the last save.
    pub fn take_save(&mut self) -> Option<PreparedSave> {
        if self.unsaved == 0 {
            return None;
        }
        let save = Store::prepare(&self.projections, &self.pending);
        self.pending.clear();
        self.unsaved = 0;
        Some(save)
    }

    /// Saves everything applied so far with its checkpoint.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if self.unsaved == 0 {
            return Ok(());
        }
        self.store.save(&self.projections, &self.pending)?;
        self.pending.clear();
        self.unsaved = 0;
        Ok(())
    }
}
