//! Counting what rumqttd dropped before ingest read it.
//!
//! rumqttd 0.20 answers PUBACK as soon as a publish is in its router's in-memory log for the
//! matching filter. When ingest reads that log more slowly than devices fill it (a flat-out
//! burst), the router drops its oldest segments and moves the reader's cursor past them,
//! saying so only in a warning of its own. Each message ingest reads carries its absolute
//! offset in the filter's log, contiguous per filter: a jump forward is the number of messages
//! acknowledged to devices but never seen by ingest (the agents re-send them, since no
//! `committed/` confirmation came).

use std::collections::HashMap;

/// The last offset seen per filter; [`Gaps::observe`] says how many were skipped.
#[derive(Debug, Default)]
pub struct Gaps {
    last: HashMap<Vec<u8>, u64>,
}

/// The filter a message read on an `in/` topic came through: its topic up to and including
/// the principal kind (`pairbus/v1/in/device/`), one per subscription of the ingest links.
pub fn filter_key(topic: &[u8]) -> &[u8] {
    // pairbus / v1 / in / <kind> / <id>: keep everything before the id.
    match topic.iter().rposition(|&b| b == b'/') {
        Some(i) => &topic[..=i],
        None => topic,
    }
}

impl Gaps {
    /// Records that the message at absolute `offset` of `filter`'s log was read; returns how
    /// many messages before it were never read (0 for the first message seen on a filter, or
    /// for an offset not after the last one).
    pub fn observe(&mut self, filter: &[u8], offset: u64) -> u64 {
        match self.last.get_mut(filter) {
            Some(last) => {
                let skipped = offset.saturating_sub(last.saturating_add(1));
                if offset > *last {
                    *last = offset;
                }
                skipped
            }
            None => {
                self.last.insert(filter.to_vec(), offset);
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_offsets_skip_nothing_and_jumps_are_counted_per_filter() {
        let mut g = Gaps::default();
        let dev = filter_key(b"pairbus/v1/in/device/0011223344556677");
        let op = filter_key(b"pairbus/v1/in/operator/admin");
        assert_eq!(dev, b"pairbus/v1/in/device/");
        assert_eq!(g.observe(dev, 0), 0);
        assert_eq!(g.observe(dev, 1), 0);
        assert_eq!(
            g.observe(op, 7),
            0,
            "first sight of a filter is its baseline"
        );
        assert_eq!(g.observe(dev, 2), 0);
        assert_eq!(g.observe(dev, 10), 7, "3..=9 never read");
        assert_eq!(g.observe(op, 8), 0);
        assert_eq!(g.observe(dev, 10), 0, "a repeat is not a gap");
        assert_eq!(g.observe(dev, 11), 0);
    }
}
