//! The fast decoder is never more lenient than the strict decoder of pairbus-schemas, and the
//! lite decoding the fold uses differs from the full one only in the fields it drops.

use pairbus_projector::decode::{decode_event, decode_event_lite, decode_payload, split_cose};
use pairbus_projector::testkit::fleet;
use pairbus_schemas::vectors::{root, sample_events};
use pairbus_schemas::{seal, Body, Event, MAX_EVENT_SIZE};
use proptest::prelude::*;

fn payloads() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = sample_events().iter().map(Event::encode).collect();
    let log = fleet(4, 60);
    for r in &log.records {
        out.push(split_cose(&r.event).unwrap().1.to_vec());
    }
    out
}

fn strip(mut e: Event) -> Event {
    match &mut e.body {
        Body::Action(a) => {
            a.metadata.clear();
            a.ip = None;
            a.user_agent = None;
        }
        Body::CommandIssued(c) => c.params.clear(),
        Body::CommandCompleted(c) => c.result.clear(),
        _ => {}
    }
    e
}

#[test]
fn lite_equals_full_minus_dropped_fields() {
    for e in sample_events() {
        let cose = seal(&e, &root().derive(&e.src));
        let full = decode_event(&cose).unwrap();
        assert_eq!(full, e);
        let lite = decode_event_lite(&cose).unwrap();
        assert_eq!(strip(lite), strip(full));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Flip, insert or delete bytes anywhere: whatever the fast path accepts, the strict
    /// decoder accepts too, with the same event.
    #[test]
    fn fast_path_is_never_more_lenient(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let all = payloads();
        let mut p = all[which.index(all.len())].clone();
        for (at, byte, kind) in edits {
            let i = at.index(p.len().max(1));
            match kind {
                0 if !p.is_empty() => p[i] ^= byte | 1,
                1 => p.insert(i.min(p.len()), byte),
                _ if !p.is_empty() => { p.remove(i); }
                _ => {}
            }
        }
        if let Some(fast) = decode_payload(&p) {
            prop_assert_eq!(Event::decode(&p, MAX_EVENT_SIZE), Ok(fast));
        }
    }
}
