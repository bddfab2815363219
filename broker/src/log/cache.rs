//! A bounded, direct-mapped cache of record frames (sled values), for point reads.
//!
//! `get` and `by_device` read one record out of many different frames (a device's records
//! are spread over the log in arrival order), so their cost is one sled lookup per record.
//! This cache maps a frame's *number* (its position in the log's frame list) to the frame's
//! bytes as a [`sled::IVec`] (reference-counted: a cached frame shares its bytes with sled's
//! own page cache while sled holds it). Slot = frame number mod slot count; a slot remembers
//! which frame it holds, so a hit is always the right frame. Frames never change once
//! written, so the cache is never invalidated.
//!
//! All slots sit behind one reader-writer lock: a reader of many frames takes it once
//! ([`FrameCache::read`]) and borrows the frames' bytes through the [`CacheView`] — no lock
//! and no reference-count update per frame (an atomic on a cold cache line per record was
//! most of `by_device`'s cost: it serializes the memory accesses the reader could otherwise
//! overlap). Writers replace slots in bulk and drop the frames they evict after unlocking.

use sled::IVec;
use std::sync::{RwLock, RwLockReadGuard, TryLockError};

type Slots = Vec<Option<(u64, IVec)>>;

/// The frame cache. With `0` slots it caches nothing.
#[derive(Debug)]
pub(crate) struct FrameCache {
    slots: RwLock<Slots>,
}

/// The cache held for reading: frames borrowed from it stay valid while it lives (writers
/// wait, or skip, until it is dropped).
pub(crate) struct CacheView<'a> {
    slots: RwLockReadGuard<'a, Slots>,
}

impl CacheView<'_> {
    /// The cached bytes of frame number `frame_no`, if held.
    pub(crate) fn get(&self, frame_no: u64) -> Option<&IVec> {
        let n = self.slots.len() as u64;
        if n == 0 {
            return None;
        }
        match &self.slots[(frame_no % n) as usize] {
            Some((no, v)) if *no == frame_no => Some(v),
            _ => None,
        }
    }
}

impl FrameCache {
    /// A cache of about `bytes` bytes of frames of `frame_bytes` each.
    pub(crate) fn new(bytes: usize, frame_bytes: usize) -> Self {
        let n = bytes / frame_bytes.max(1);
        FrameCache {
            slots: RwLock::new((0..n).map(|_| None).collect()),
        }
    }

    /// How many frames it can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.read().slots.len()
    }

    /// The cache for reading (one lock for any number of lookups).
    pub(crate) fn read(&self) -> CacheView<'_> {
        CacheView {
            slots: self.slots.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The cached bytes of frame number `frame_no`, if held.
    pub(crate) fn get(&self, frame_no: u64) -> Option<IVec> {
        self.read().get(frame_no).cloned()
    }

    /// Caches every `(frame number, bytes)` of `frames`, in order (each replaces whatever
    /// shared its slot), waiting for readers to finish.
    pub(crate) fn put_all(&self, frames: Vec<(u64, IVec)>) {
        let slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        drop(Self::fill(slots, frames, false));
    }

    /// [`put_all`](Self::put_all), except that a slot holding a newer frame (a higher number)
    /// keeps it: for filling the cache with older frames while commits add new ones.
    pub(crate) fn put_older(&self, frames: Vec<(u64, IVec)>) {
        let slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        drop(Self::fill(slots, frames, true));
    }

    /// [`put_all`](Self::put_all) unless a reader holds the cache: then nothing is cached
    /// (the frames are read from sled, and cached, on their first miss). For the commit path,
    /// which must not wait for readers. Returns whether the frames were cached.
    pub(crate) fn try_put_all(&self, frames: Vec<(u64, IVec)>) -> bool {
        let slots = match self.slots.try_write() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        drop(Self::fill(slots, frames, false));
        true
    }

    /// Puts `frames` into the locked slots (unless `keep_newer` and the slot holds a higher
    /// frame number); returns the evicted or unused frames, to be dropped by the caller once
    /// the lock is released.
    fn fill(
        mut slots: std::sync::RwLockWriteGuard<'_, Slots>,
        frames: Vec<(u64, IVec)>,
        keep_newer: bool,
    ) -> Vec<(u64, IVec)> {
        let n = slots.len() as u64;
        if n == 0 {
            return frames;
        }
        let mut evicted = Vec::with_capacity(frames.len());
        for (no, bytes) in frames {
            let slot = &mut slots[(no % n) as usize];
            match slot {
                Some((held, _)) if keep_newer && *held > no => evicted.push((no, bytes)),
                _ => evicted.extend(slot.replace((no, bytes))),
            }
        }
        drop(slots);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(no: u64, b: &[u8]) -> Vec<(u64, IVec)> {
        vec![(no, IVec::from(b))]
    }

    #[test]
    fn a_hit_is_always_the_frame_asked_for() {
        let c = FrameCache::new(4 * 100, 100);
        assert_eq!(c.capacity(), 4);
        assert!(c.get(1).is_none());
        c.put_all(vec![
            (1, IVec::from(&b"one"[..])),
            (2, IVec::from(&b"two"[..])),
        ]);
        assert_eq!(c.get(1).as_deref(), Some(&b"one"[..]));
        // Frame 5 shares frame 1's slot (4 slots): it replaces it, and 1 is then a miss.
        assert!(c.try_put_all(one(5, b"five")));
        assert!(c.get(1).is_none());
        assert_eq!(c.get(5).as_deref(), Some(&b"five"[..]));
        assert_eq!(c.get(2).as_deref(), Some(&b"two"[..]));
        assert!(c.get(6).is_none());
        let view = c.read();
        assert_eq!(view.get(5).map(|v| &v[..]), Some(&b"five"[..]));
        assert!(view.get(1).is_none());
    }

    #[test]
    fn the_commit_path_skips_caching_while_a_reader_holds_the_cache() {
        let c = FrameCache::new(4 * 100, 100);
        let view = c.read();
        assert!(!c.try_put_all(one(1, b"one")));
        assert!(view.get(1).is_none());
        drop(view);
        assert!(c.get(1).is_none());
        assert!(c.try_put_all(one(1, b"one")));
        assert_eq!(c.get(1).as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn filling_with_older_frames_keeps_newer_ones() {
        let c = FrameCache::new(4 * 100, 100);
        c.put_all(one(6, b"six"));
        // 2 shares 6's slot and is older: kept out; 1 and 3 take free slots; 7 replaces 3.
        c.put_older(vec![
            (1, IVec::from(&b"one"[..])),
            (2, IVec::from(&b"two"[..])),
            (3, IVec::from(&b"three"[..])),
        ]);
        c.put_older(one(7, b"seven"));
        assert_eq!(c.get(6).as_deref(), Some(&b"six"[..]));
        assert!(c.get(2).is_none());
        assert_eq!(c.get(1).as_deref(), Some(&b"one"[..]));
        assert!(c.get(3).is_none());
        assert_eq!(c.get(7).as_deref(), Some(&b"seven"[..]));
        // The plain put replaces whatever is there.
        c.put_all(one(2, b"two"));
        assert_eq!(c.get(2).as_deref(), Some(&b"two"[..]));
        assert!(c.get(6).is_none());
    }

    #[test]
    fn a_zero_sized_cache_holds_nothing() {
        let c = FrameCache::new(0, 100);
        assert_eq!(c.capacity(), 0);
        c.put_all(one(1, b"one"));
        assert!(c.try_put_all(one(2, b"two")));
        assert!(c.get(1).is_none());
        assert!(c.read().get(2).is_none());
    }
}
