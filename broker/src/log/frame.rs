//! Frame packing: the pure byte layout of record frames and index frames (no IO).
//!
//! A *record frame* holds consecutive records `first_seq .. first_seq + count`:
//!
//! ```text
//! u8  version (= 1)
//! u64 first_seq            (big-endian, as every integer here)
//! u32 count                (≥ 1)
//! [32] prev                (the `prev` of the first record)
//! u32 × count  offsets     (of each entry, from the start of the frame)
//! entries, each: u64 received_at, [32] hash, u32 len, len bytes of event (the COSE_Mac0)
//! ```
//!
//! `prev` of record *k > first* is the `hash` of record *k − 1* of the same frame, so a frame
//! is self-contained and a record is found in O(1) through its offset.
//!
//! An *index frame* (same `first_seq` and `count`) holds what the in-memory indexes need per
//! record, so that opening the store never parses CBOR:
//!
//! ```text
//! u8 version (= 1), u64 first_seq, u32 count,
//! entries, each: [16] event id, u64 principal seq, [8] device (the 16 hex digits as bytes),
//!                u8 kid_len, kid_len bytes of kid (UTF-8), u8 flags,
//!                [8] revoked device (only when flags & 1)
//! ```

use pairbus_schemas::{DeviceId, EventId, Kid, PrincipalKind, Record};
use thiserror::Error;

/// Frame format version.
pub const FRAME_VERSION: u8 = 1;
/// A frame is closed once it reaches this many bytes (a single large event may exceed it, up
/// to one event plus the frame overhead). See the module docs of [`crate::log`] for why.
pub const FRAME_TARGET_BYTES: usize = 16 * 1024;
/// Longest run of records per frame.
pub const FRAME_MAX_RECORDS: usize = 256;

const RECORD_HEADER: usize = 1 + 8 + 4 + 32;
const ENTRY_HEADER: usize = 8 + 32 + 4;
const INDEX_HEADER: usize = 1 + 8 + 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The frame ends before a field it announces.
    #[error("frame truncated at byte {0}")]
    Truncated(usize),
    /// An unknown frame version.
    #[error("unknown frame version {0}")]
    Version(u8),
    /// A field has an impossible value.
    #[error("bad frame: {0}")]
    Bad(&'static str),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(FrameError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// A decoded view over a record frame (borrowing its bytes).
#[derive(Debug, Clone, Copy)]
pub struct RecordFrame<'a> {
    buf: &'a [u8],
    /// Seq of the first record.
    pub first_seq: u64,
    /// Number of records.
    pub count: u32,
    /// `prev` of the first record.
    pub prev: [u8; 32],
}

/// One record as stored in a frame (borrowing the event bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// When the broker received the event, Unix ms.
    pub received_at: u64,
    /// The stored hash.
    pub hash: [u8; 32],
    /// The COSE_Mac0 bytes.
    pub event: &'a [u8],
}

impl<'a> RecordFrame<'a> {
    /// Checks the header and the offset table.
    pub fn parse(buf: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(buf, 0);
        let v = r.u8()?;
        if v != FRAME_VERSION {
            return Err(FrameError::Version(v));
        }
        let first_seq = r.u64()?;
        let count = r.u32()?;
        let prev = r.array()?;
        if first_seq == 0 || count == 0 {
            return Err(FrameError::Bad("first_seq and count must be ≥ 1"));
        }
        if first_seq.checked_add(u64::from(count)).is_none() {
            return Err(FrameError::Bad("seq overflow"));
        }
        // The offset table must fit.
        r.take((count as usize).saturating_mul(4))?;
        Ok(RecordFrame {
            buf,
            first_seq,
            count,
            prev,
        })
    }

    /// The whole frame's bytes (what [`Located::event`] ranges index into).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Seq one past the last record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }

    /// The `i`-th entry (0-based).
    pub fn entry(&self, i: u32) -> Result<Entry<'a>, FrameError> {
        self.entry_at(self.offset(i)?)
    }

    /// Where in a frame the `i`-th entry's offset is stored (the offset table's slot `i`).
    pub fn offset_table_at(i: usize) -> usize {
        RECORD_HEADER + 4 * i
    }

    /// Where the `i`-th entry starts, from the offset table (checked to lie past the table).
    pub fn offset(&self, i: u32) -> Result<usize, FrameError> {
        if i >= self.count {
            return Err(FrameError::Bad("entry index out of range"));
        }
        let mut t = Reader::new(self.buf, RECORD_HEADER + 4 * i as usize);
        let off = t.u32()? as usize;
        if off < RECORD_HEADER + 4 * self.count as usize {
            return Err(FrameError::Bad("offset points into the header"));
        }
        Ok(off)
    }

    /// The entry starting at byte `off` (an [`offset`](Self::offset)).
    pub fn entry_at(&self, off: usize) -> Result<Entry<'a>, FrameError> {
        if off < RECORD_HEADER + 4 * self.count as usize {
            return Err(FrameError::Bad("offset points into the header"));
        }
        let mut r = Reader::new(self.buf, off);
        let received_at = r.u64()?;
        let hash = r.array()?;
        let len = r.u32()? as usize;
        let event = r.take(len)?;
        Ok(Entry {
            received_at,
            hash,
            event,
        })
    }

    /// The `i`-th record's fields with the position of its event bytes in the frame (what a
    /// reader that copies the event later needs; borrows nothing).
    pub fn locate(&self, i: u32) -> Result<Located, FrameError> {
        let prev_at = i.checked_sub(1).map(|p| self.offset(p)).transpose()?;
        self.locate_at(self.offset(i)?, prev_at)
    }

    /// [`locate`](Self::locate) from the entry's offset and its predecessor's (`None` for the
    /// first entry): lets a reader of many frames fetch all offset tables before the entries.
    pub fn locate_at(&self, off: usize, prev_at: Option<usize>) -> Result<Located, FrameError> {
        let e = self.entry_at(off)?;
        let prev = match prev_at {
            None => self.prev,
            Some(p) => self.entry_at(p)?.hash,
        };
        let start = e.event.as_ptr() as usize - self.buf.as_ptr() as usize;
        Ok(Located {
            received_at: e.received_at,
            hash: e.hash,
            prev,
            event: start..start + e.event.len(),
        })
    }

    /// The `prev` of the `i`-th record.
    pub fn prev_of(&self, i: u32) -> Result<[u8; 32], FrameError> {
        if i == 0 {
            Ok(self.prev)
        } else {
            Ok(self.entry(i - 1)?.hash)
        }
    }

    /// The record `seq`, as a [`Record`] (copies the event bytes).
    pub fn record(&self, seq: u64) -> Result<Record, FrameError> {
        if seq < self.first_seq || seq >= self.end_seq() {
            return Err(FrameError::Bad("seq outside the frame"));
        }
        let i = (seq - self.first_seq) as u32;
        let e = self.entry(i)?;
        Ok(Record {
            seq,
            prev: self.prev_of(i)?,
            hash: e.hash,
            received_at: e.received_at,
            event: e.event.to_vec(),
        })
    }

    /// The hash of the last record of the frame.
    pub fn last_hash(&self) -> Result<[u8; 32], FrameError> {
        Ok(self.entry(self.count - 1)?.hash)
    }
}

/// Where a record is in its frame: see [`RecordFrame::locate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// When the broker received the event, Unix ms.
    pub received_at: u64,
    /// The stored hash.
    pub hash: [u8; 32],
    /// The `prev` of the record.
    pub prev: [u8; 32],
    /// The event's bytes within the frame.
    pub event: std::ops::Range<usize>,
}

/// The per-record facts the in-memory indexes are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The event id (idempotency key).
    pub id: EventId,
    /// The signing principal.
    pub kid: Kid,
    /// The principal's own `seq` of the event.
    pub kid_seq: u64,
    /// The device the event is about.
    pub device: DeviceId,
    /// `Some(D)` when the event is a `device.revoked` about D.
    pub revokes: Option<DeviceId>,
}

impl IndexEntry {
    /// A borrowed view.
    pub fn as_ref(&self) -> IndexRef<'_> {
        IndexRef {
            id: self.id,
            kid: &self.kid,
            kid_seq: self.kid_seq,
            device: &self.device,
            revokes: self.revokes.as_ref(),
        }
    }
}

/// A borrowed [`IndexEntry`] (what the write path uses: no allocation per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRef<'a> {
    /// The event id.
    pub id: EventId,
    /// The signing principal.
    pub kid: &'a Kid,
    /// The principal's own seq.
    pub kid_seq: u64,
    /// The device the event is about.
    pub device: &'a DeviceId,
    /// The revoked device, for a `device.revoked`.
    pub revokes: Option<&'a DeviceId>,
}

/// A device id as a number: its 16 hex digits read as a big-endian u64 (how index frames
/// store it, and what the per-device and revoked indexes key on: no string hashing).
pub fn device_number(d: &DeviceId) -> u64 {
    device_number_of(d.as_str())
}

/// [`device_number`] of the text of a device id (16 lower-case hex digits, as a [`DeviceId`]
/// guarantees; any other byte counts as 0).
pub(crate) fn device_number_of(hex16: &str) -> u64 {
    hex16.bytes().fold(0u64, |n, b| {
        let nibble = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => 0,
        };
        (n << 4) | u64::from(nibble)
    })
}

fn device_bytes(d: &DeviceId) -> [u8; 8] {
    device_number(d).to_be_bytes()
}

fn device_from_bytes(b: [u8; 8]) -> Result<DeviceId, FrameError> {
    DeviceId::parse(&hex::encode(b)).map_err(|_| FrameError::Bad("device id"))
}

/// Encodes one index entry onto `out`.
pub fn push_index_entry(out: &mut Vec<u8>, e: IndexRef<'_>) {
    out.extend_from_slice(&e.id.0);
    out.extend_from_slice(&e.kid_seq.to_be_bytes());
    out.extend_from_slice(&device_bytes(e.device));
    // Kids are at most "operator:" + 64 characters, well under 255: written in place, then
    // the length byte is patched (no temporary String per record). Same text as `Display`.
    let len_at = out.len();
    out.push(0);
    match e.kid.kind() {
        PrincipalKind::Broker => out.extend_from_slice(b"broker"),
        kind => {
            out.extend_from_slice(kind.as_str().as_bytes());
            out.push(b':');
            out.extend_from_slice(e.kid.name().as_bytes());
        }
    }
    let kid_len = (out.len() - len_at - 1).min(255);
    out.truncate(len_at + 1 + kid_len);
    out[len_at] = kid_len as u8;
    match e.revokes {
        Some(d) => {
            out.push(1);
            out.extend_from_slice(&device_bytes(d));
        }
        None => out.push(0),
    }
}

/// One index entry as stored, borrowed from its frame: what opening the store reads (no
/// allocation for device principals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawIndexEntry<'a> {
    /// The event id.
    pub id: EventId,
    /// The principal's own seq.
    pub kid_seq: u64,
    /// The device the event is about, as a [`device_number`].
    pub device: u64,
    /// The kid's text (checked to be a valid kid).
    pub kid: &'a str,
    /// The kid's device number when the kid is a device's.
    pub kid_device: Option<u64>,
    /// The revoked device's number, for a `device.revoked`.
    pub revokes: Option<u64>,
}

/// The device number of a `device:<16 lower-case hex digits>` kid text.
fn device_kid_number(kid: &str) -> Option<u64> {
    let hex = kid.strip_prefix("device:")?;
    (hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| device_number_of(hex))
}

/// Walks an index frame, calling `f` with each entry's seq and entry, in order; returns
/// `(first_seq, count)`. Every field is checked (kids parse, flags known, no trailing bytes);
/// on an error some entries may already have been passed to `f`.
pub fn visit_index_frame<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u64, RawIndexEntry<'a>),
) -> Result<(u64, u32), FrameError> {
    let mut r = Reader::new(buf, 0);
    let v = r.u8()?;
    if v != FRAME_VERSION {
        return Err(FrameError::Version(v));
    }
    let first_seq = r.u64()?;
    let count = r.u32()?;
    if first_seq == 0 || count == 0 {
        return Err(FrameError::Bad("first_seq and count must be ≥ 1"));
    }
    if first_seq.checked_add(u64::from(count)).is_none() {
        return Err(FrameError::Bad("seq overflow"));
    }
    for i in 0..count {
        let id = EventId(r.array()?);
        let kid_seq = r.u64()?;
        let device = u64::from_be_bytes(r.array()?);
        let kid_len = r.u8()? as usize;
        let kid =
            std::str::from_utf8(r.take(kid_len)?).map_err(|_| FrameError::Bad("kid utf-8"))?;
        let kid_device = device_kid_number(kid);
        if kid_device.is_none() && Kid::parse(kid).is_err() {
            return Err(FrameError::Bad("kid"));
        }
        let revokes = match r.u8()? {
            0 => None,
            1 => Some(u64::from_be_bytes(r.array()?)),
            _ => return Err(FrameError::Bad("flags")),
        };
        f(
            first_seq + u64::from(i),
            RawIndexEntry {
                id,
                kid_seq,
                device,
                kid,
                kid_device,
                revokes,
            },
        );
    }
    if r.pos != buf.len() {
        return Err(FrameError::Bad("trailing bytes in index frame"));
    }
    Ok((first_seq, count))
}

/// Decodes an index frame into `(first_seq, entries)`.
pub fn decode_index_frame(buf: &[u8]) -> Result<(u64, Vec<IndexEntry>), FrameError> {
    let mut raw = Vec::new();
    let (first_seq, _) = visit_index_frame(buf, |_, e| raw.push(e))?;
    let out = raw
        .into_iter()
        .map(|e| {
            Ok(IndexEntry {
                id: e.id,
                kid: Kid::parse(e.kid).map_err(|_| FrameError::Bad("kid"))?,
                kid_seq: e.kid_seq,
                device: device_from_bytes(e.device.to_be_bytes())?,
                revokes: e
                    .revokes
                    .map(|d| device_from_bytes(d.to_be_bytes()))
                    .transpose()?,
            })
        })
        .collect::<Result<_, FrameError>>()?;
    Ok((first_seq, out))
}

/// One frame being packed: the record frame and its index frame side by side.
#[derive(Debug)]
pub struct FrameBuilder {
    first_seq: u64,
    prev: [u8; 32],
    entries: Vec<u8>,
    offsets: Vec<u32>,
    index: Vec<u8>,
}

impl FrameBuilder {
    /// Starts a frame whose first record is `first_seq` with `prev`.
    pub fn new(first_seq: u64, prev: [u8; 32]) -> Self {
        FrameBuilder {
            first_seq,
            prev,
            entries: Vec::with_capacity(FRAME_TARGET_BYTES + 1024),
            offsets: Vec::new(),
            index: Vec::new(),
        }
    }

    /// Seq of the first record.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Number of records so far.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// True when no record has been added.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// True when the frame should be closed before adding an event of `event_len` bytes.
    pub fn is_full_for(&self, event_len: usize) -> bool {
        !self.is_empty()
            && (self.offsets.len() >= FRAME_MAX_RECORDS
                || self.entries.len() + ENTRY_HEADER + event_len > FRAME_TARGET_BYTES)
    }

    /// Adds the next record (its seq is `first_seq + len()`).
    pub fn push(&mut self, received_at: u64, hash: &[u8; 32], event: &[u8], ix: IndexRef<'_>) {
        self.offsets.push(self.entries.len() as u32);
        self.entries.extend_from_slice(&received_at.to_be_bytes());
        self.entries.extend_from_slice(hash);
        self.entries
            .extend_from_slice(&(event.len() as u32).to_be_bytes());
        self.entries.extend_from_slice(event);
        push_index_entry(&mut self.index, ix);
    }

    /// The encoded `(record frame, index frame)`.
    pub fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let count = self.offsets.len() as u32;
        let table = RECORD_HEADER + 4 * self.offsets.len();
        let mut rec = Vec::with_capacity(table + self.entries.len());
        rec.push(FRAME_VERSION);
        rec.extend_from_slice(&self.first_seq.to_be_bytes());
        rec.extend_from_slice(&count.to_be_bytes());
        rec.extend_from_slice(&self.prev);
        for o in &self.offsets {
            rec.extend_from_slice(&((*o as usize + table) as u32).to_be_bytes());
        }
        rec.extend_from_slice(&self.entries);
        let mut ix = Vec::with_capacity(INDEX_HEADER + self.index.len());
        ix.push(FRAME_VERSION);
        ix.extend_from_slice(&self.first_seq.to_be_bytes());
        ix.extend_from_slice(&count.to_be_bytes());
        ix.extend_from_slice(&self.index);
        (rec, ix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::GENESIS;
    use proptest::prelude::*;

    fn ix(n: u8) -> IndexEntry {
        IndexEntry {
            id: EventId([n; 16]),
            kid: Kid::parse("device:00112233445566aa").unwrap(),
            kid_seq: u64::from(n) + 1,
            device: DeviceId::parse("00112233445566aa").unwrap(),
            revokes: ((n / 3) * 3 == n).then(|| DeviceId::parse("ffeeddccbbaa0099").unwrap()),
        }
    }

    fn build(first: u64, events: &[Vec<u8>]) -> (Vec<Record>, Vec<u8>, Vec<u8>) {
        let mut prev = GENESIS;
        let mut b = FrameBuilder::new(first, prev);
        let mut recs = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let r = Record::chain(prev, first + i as u64, 1000 + i as u64, e.clone());
            b.push(r.received_at, &r.hash, &r.event, ix(i as u8).as_ref());
            prev = r.hash;
            recs.push(r);
        }
        let (rf, ixf) = b.finish();
        (recs, rf, ixf)
    }

    #[test]
    fn round_trip_records_and_index() {
        let events: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let (recs, rf, ixf) = build(7, &events);
        let f = RecordFrame::parse(&rf).unwrap();
        assert_eq!((f.first_seq, f.count, f.end_seq()), (7, 5, 12));
        for r in &recs {
            assert_eq!(&f.record(r.seq).unwrap(), r);
        }
        assert_eq!(f.last_hash().unwrap(), recs[4].hash);
        assert!(f.record(6).is_err() && f.record(12).is_err());
        let (first, entries) = decode_index_frame(&ixf).unwrap();
        assert_eq!(first, 7);
        assert_eq!(entries, (0..5u8).map(ix).collect::<Vec<_>>());
        let mut raw = Vec::new();
        assert_eq!(
            visit_index_frame(&ixf, |seq, e| raw.push((seq, e))).unwrap(),
            (7, 5)
        );
        for (i, (seq, e)) in raw.into_iter().enumerate() {
            let want = ix(i as u8);
            assert_eq!(seq, 7 + i as u64);
            assert_eq!(
                (e.id, e.kid_seq, e.kid),
                (want.id, want.kid_seq, "device:00112233445566aa")
            );
            assert_eq!(e.device, device_number(&want.device));
            assert_eq!(e.kid_device, Some(0x0011_2233_4455_66aa));
            assert_eq!(e.revokes, want.revokes.as_ref().map(device_number));
        }
    }

    #[test]
    fn index_entries_keep_every_kind_of_kid() {
        for kid in [
            "broker",
            "operator:admin",
            "factory:line-1",
            "device:00112233445566aa",
        ] {
            let e = IndexEntry {
                kid: Kid::parse(kid).unwrap(),
                ..ix(4)
            };
            let mut b = FrameBuilder::new(9, GENESIS);
            b.push(1, &[7; 32], &[1, 2, 3], e.as_ref());
            let (_, ixf) = b.finish();
            assert_eq!(decode_index_frame(&ixf).unwrap(), (9, vec![e]));
        }
    }

    #[test]
    fn fullness() {
        let mut b = FrameBuilder::new(1, GENESIS);
        assert!(
            !b.is_full_for(1 << 20),
            "an empty frame always takes one event"
        );
        b.push(0, &[0; 32], &[0; 100], ix(1).as_ref());
        assert!(!b.is_full_for(1000));
        assert!(b.is_full_for(FRAME_TARGET_BYTES));
    }

    proptest! {
        #[test]
        fn any_frame_round_trips(first in 1u64..1_000_000, sizes in proptest::collection::vec(0usize..300, 1..40)) {
            let events: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8; *n]).collect();
            let (recs, rf, _) = build(first, &events);
            let f = RecordFrame::parse(&rf).unwrap();
            for r in &recs {
                prop_assert_eq!(&f.record(r.seq).unwrap(), r);
                let at = f.locate((r.seq - first) as u32).unwrap();
                prop_assert_eq!((at.prev, at.hash, at.received_at), (r.prev, r.hash, r.received_at));
                prop_assert_eq!(&rf[at.event], &r.event[..]);
            }
        }

        #[test]
        fn corrupted_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), flip in any::<usize>()) {
            let (_, mut rf, mut ixf) = build(3, &[vec![1; 20], vec![2; 30]]);
            if !rf.is_empty() { let i = flip % rf.len(); rf[i] ^= 0x5a; }
            if !ixf.is_empty() { let i = flip % ixf.len(); ixf[i] ^= 0x5a; }
            for buf in [&bytes, &rf] {
                if let Ok(f) = RecordFrame::parse(buf) {
                    for i in 0..f.count.min(1000) {
                        let _ = f.entry(i);
                        if let Ok(at) = f.locate(i) {
                            prop_assert!(at.event.end <= buf.len());
                        }
                    }
                }
            }
            let _ = decode_index_frame(&bytes);
            let _ = decode_index_frame(&ixf);
            let _ = visit_index_frame(&ixf, |_, _| {});
        }
    }
}
