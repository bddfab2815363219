//! A bounded, direct-mapped cache of record frames (sled values), for point reads.
//!
//! `get` and `by_device` read one record out of many different frames (a device's records
//! are spread over the log in arrival order), so their cost is one sled lookup per record.
//! This cache maps a frame's *number* (its position in the log's frame list) to the frame's
//! bytes as a [`sled::IVec`] (reference-counted: a cached frame shares its bytes with sled's
//! own page cache while sled holds it). Slot = frame number mod slot count, one small lock per
//! slot; a slot remembers which frame it holds, so a hit is always the right frame. Frames
//! never change once written, so the cache is never invalidated.

use sled::IVec;
use std::sync::Mutex;

/// The frame cache. With `0` slots it caches nothing.
#[derive(Debug)]
pub(crate) struct FrameCache {
    slots: Vec<Mutex<Option<(u64, IVec)>>>,
}

impl FrameCache {
    /// A cache of about `bytes` bytes of frames of `frame_bytes` each.
    pub(crate) fn new(bytes: usize, frame_bytes: usize) -> Self {
        let n = bytes / frame_bytes.max(1);
        FrameCache {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, frame_no: u64) -> Option<&Mutex<Option<(u64, IVec)>>> {
        let n = self.slots.len() as u64;
        (n > 0).then(|| &self.slots[(frame_no % n) as usize])
    }

    /// The cached bytes of frame number `frame_no`, if held.
    pub(crate) fn get(&self, frame_no: u64) -> Option<IVec> {
        let slot = self
            .slot(frame_no)?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((n, v)) if *n == frame_no => Some(v.clone()),
            _ => None,
        }
    }

    /// Caches frame number `frame_no` (replacing whatever shared its slot).
    pub(crate) fn put(&self, frame_no: u64, bytes: IVec) {
        if let Some(slot) = self.slot(frame_no) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((frame_no, bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_is_always_the_frame_asked_for() {
        let c = FrameCache::new(4 * 100, 100);
        assert!(c.get(1).is_none());
        c.put(1, IVec::from(&b"one"[..]));
        c.put(2, IVec::from(&b"two"[..]));
        assert_eq!(c.get(1).as_deref(), Some(&b"one"[..]));
        // Frame 5 shares frame 1's slot (4 slots): it replaces it, and 1 is then a miss.
        c.put(5, IVec::from(&b"five"[..]));
        assert!(c.get(1).is_none());
        assert_eq!(c.get(5).as_deref(), Some(&b"five"[..]));
        assert_eq!(c.get(2).as_deref(), Some(&b"two"[..]));
        assert!(c.get(6).is_none());
    }

    #[test]
    fn a_zero_sized_cache_holds_nothing() {
        let c = FrameCache::new(0, 100);
        c.put(1, IVec::from(&b"one"[..]));
        assert!(c.get(1).is_none());
    }
}
