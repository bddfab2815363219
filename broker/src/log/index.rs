//! The in-memory indexes and the pure admission decisions over them (no IO).
//!
//! The indexes are derived data: they are rebuilt from the index frames when the store opens,
//! and updated only after a commit is durable. [`plan_batch`] decides, for a batch of verified
//! events, which are appended and which are refused, without touching the indexes; the store
//! applies the plan with [`Indexes::apply`] once the commit has been synced.

use super::frame::IndexRef;
use super::store::{AppendOutcome, VerifiedEvent};
use pairbus_schemas::{DeviceId, EventId, Kid};
use std::collections::{HashMap, HashSet};

/// The three exact indexes plus the revoked set.
#[derive(Debug, Default)]
pub struct Indexes {
    /// Idempotency: event id → log seq.
    ids: HashMap<EventId, u64>,
    /// Interned kids (the principal index keys on a small number).
    kids: HashMap<Kid, u32>,
    /// Principal: (kid, principal seq) → event id.
    principal: HashMap<(u32, u64), EventId>,
    /// Per device: log seqs in increasing order.
    devices: HashMap<DeviceId, Vec<u64>>,
    /// Devices revoked by a committed `device.revoked`.
    revoked: HashSet<DeviceId>,
    /// Number of records indexed.
    len: u64,
}

/// What [`plan_batch`] decided for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Append it at this log seq.
    Append(u64),
    /// Refuse or answer it without writing anything.
    Skip(AppendOutcome),
}

impl Indexes {
    /// Number of records indexed.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The log seq of an event id.
    pub fn seq_of(&self, id: &EventId) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// The event id that holds `(kid, kid_seq)`.
    pub fn principal_slot(&self, kid: &Kid, kid_seq: u64) -> Option<EventId> {
        let k = self.kids.get(kid)?;
        self.principal.get(&(*k, kid_seq)).copied()
    }

    /// True when `kid` is a device whose revocation is committed.
    pub fn is_revoked(&self, kid: &Kid) -> bool {
        kid.device_id().is_some_and(|d| self.revoked.contains(&d))
    }

    /// The log seqs of a device's records, in increasing order.
    pub fn device_seqs(&self, device: &DeviceId) -> &[u64] {
        self.devices.get(device).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Adds the committed record `seq` (seqs must be added in increasing order).
    pub fn insert(&mut self, seq: u64, e: IndexRef<'_>) {
        self.ids.insert(e.id, seq);
        let k = match self.kids.get(e.kid) {
            Some(k) => *k,
            None => {
                let k = self.kids.len() as u32;
                self.kids.insert(e.kid.clone(), k);
                k
            }
        };
        self.principal.insert((k, e.kid_seq), e.id);
        match self.devices.get_mut(e.device) {
            Some(v) => v.push(seq),
            None => {
                self.devices.insert(e.device.clone(), vec![seq]);
            }
        }
        if let Some(d) = e.revokes {
            self.revoked.insert(d.clone());
        }
        self.len += 1;
    }

    /// Applies a durable commit: every `Append` of `plan` for the matching event.
    pub fn apply(&mut self, events: &[VerifiedEvent], plan: &[Decision]) {
        for (e, d) in events.iter().zip(plan) {
            if let Decision::Append(seq) = d {
                self.insert(*seq, e.index_ref());
            }
        }
    }
}

/// Decides every event of a batch, in order, against the committed indexes and the events
/// before it in the same batch; appended events get consecutive seqs from `next_seq`.
///
/// Rules, in this order: an id already committed (or earlier in the batch) is
/// `AlreadyCommitted(seq)`; a revoked device kid (revoked before, or by an earlier event of
/// the batch) is `Revoked`; a `(kid, seq)` held by a different id is `SeqConflict`. A lower
/// principal seq never seen before is accepted. One refusal never affects other events.
pub fn plan_batch(ix: &Indexes, events: &[VerifiedEvent], next_seq: u64) -> Vec<Decision> {
    let mut seq = next_seq;
    let mut ids: HashMap<EventId, u64> = HashMap::new();
    let mut slots: HashMap<(&Kid, u64), EventId> = HashMap::new();
    let mut revoked: HashSet<&DeviceId> = HashSet::new();
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if let Some(s) = ix.seq_of(&e.id).or_else(|| ids.get(&e.id).copied()) {
            out.push(Decision::Skip(AppendOutcome::AlreadyCommitted(s)));
            continue;
        }
        let dev = e.kid.device_id();
        if ix.is_revoked(&e.kid) || dev.as_ref().is_some_and(|d| revoked.contains(d)) {
            out.push(Decision::Skip(AppendOutcome::Revoked));
            continue;
        }
        let holder = ix
            .principal_slot(&e.kid, e.kid_seq)
            .or_else(|| slots.get(&(&e.kid, e.kid_seq)).copied());
        if let Some(existing) = holder {
            out.push(Decision::Skip(AppendOutcome::SeqConflict { existing }));
            continue;
        }
        ids.insert(e.id, seq);
        slots.insert((&e.kid, e.kid_seq), e.id);
        if let Some(d) = &e.revokes {
            revoked.insert(d);
        }
        out.push(Decision::Append(seq));
        seq += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEV_A: &str = "00000000000000aa";
    const DEV_B: &str = "00000000000000bb";

    fn ev(id: u8, kid: &str, kid_seq: u64, device: &str, revokes: Option<&str>) -> VerifiedEvent {
        VerifiedEvent::from_parts(
            EventId([id; 16]),
            Kid::parse(kid).unwrap(),
            kid_seq,
            DeviceId::parse(device).unwrap(),
            revokes.map(|d| DeviceId::parse(d).unwrap()),
            vec![id],
        )
    }

    fn dev(d: &str) -> String {
        format!("device:{d}")
    }

    #[test]
    fn appends_get_consecutive_seqs_and_refusals_do_not_consume_any() {
        let mut ix = Indexes::default();
        let batch = vec![
            ev(1, &dev(DEV_A), 1, DEV_A, None),
            ev(1, &dev(DEV_A), 1, DEV_A, None),
            ev(2, &dev(DEV_A), 1, DEV_A, None),
            ev(3, &dev(DEV_A), 2, DEV_A, None),
        ];
        let plan = plan_batch(&ix, &batch, 10);
        assert_eq!(
            plan,
            vec![
                Decision::Append(10),
                Decision::Skip(AppendOutcome::AlreadyCommitted(10)),
                Decision::Skip(AppendOutcome::SeqConflict {
                    existing: EventId([1; 16])
                }),
                Decision::Append(11),
            ]
        );
        ix.apply(&batch, &plan);
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.device_seqs(&DeviceId::parse(DEV_A).unwrap()), &[10, 11]);
        // Against the committed state: replay, conflict, and a late lower seq accepted.
        let again = vec![
            ev(3, &dev(DEV_A), 2, DEV_A, None),
            ev(9, &dev(DEV_A), 2, DEV_A, None),
            ev(8, &dev(DEV_A), 7, DEV_A, None),
            ev(7, &dev(DEV_A), 5, DEV_A, None),
        ];
        assert_eq!(
            plan_batch(&ix, &again, 12),
            vec![
                Decision::Skip(AppendOutcome::AlreadyCommitted(11)),
                Decision::Skip(AppendOutcome::SeqConflict {
                    existing: EventId([3; 16])
                }),
                Decision::Append(12),
                Decision::Append(13),
            ]
        );
    }

    #[test]
    fn revocation_applies_to_later_events_of_the_batch_and_after_commit() {
        let mut ix = Indexes::default();
        let batch = vec![
            ev(1, &dev(DEV_B), 1, DEV_B, None),
            ev(2, "operator:admin", 1, DEV_B, Some(DEV_B)),
            ev(3, &dev(DEV_B), 2, DEV_B, None),
            ev(1, &dev(DEV_B), 1, DEV_B, None),
            ev(4, &dev(DEV_A), 1, DEV_A, None),
        ];
        let plan = plan_batch(&ix, &batch, 1);
        assert_eq!(
            plan,
            vec![
                Decision::Append(1),
                Decision::Append(2),
                Decision::Skip(AppendOutcome::Revoked),
                Decision::Skip(AppendOutcome::AlreadyCommitted(1)),
                Decision::Append(3),
            ]
        );
        ix.apply(&batch, &plan);
        assert!(ix.is_revoked(&Kid::parse(&dev(DEV_B)).unwrap()));
        assert!(!ix.is_revoked(&Kid::parse("operator:admin").unwrap()));
        let later = vec![ev(5, &dev(DEV_B), 3, DEV_B, None)];
        assert_eq!(
            plan_batch(&ix, &later, 4),
            vec![Decision::Skip(AppendOutcome::Revoked)]
        );
    }

    proptest! {
        /// Planning one batch of n events equals planning them one at a time with commits
        /// in between: batching never changes an answer.
        #[test]
        fn batching_does_not_change_decisions(
            raw in proptest::collection::vec((0u8..12, 0u8..3, 1u64..6, any::<bool>()), 1..40)
        ) {
            let kids = [dev(DEV_A), dev(DEV_B), "operator:admin".to_string()];
            let events: Vec<VerifiedEvent> = raw.iter().map(|(id, k, s, rev)| {
                let kid = &kids[*k as usize];
                let device = if *k == 1 { DEV_B } else { DEV_A };
                let revokes = (*k == 2 && *rev).then_some(DEV_B);
                ev(*id, kid, *s, device, revokes)
            }).collect();
            let mut whole = Indexes::default();
            let plan = plan_batch(&whole, &events, 1);
            whole.apply(&events, &plan);
            let mut single = Indexes::default();
            let mut next = 1;
            for (e, expected) in events.iter().zip(&plan) {
                let one = plan_batch(&single, std::slice::from_ref(e), next);
                prop_assert_eq!(&one[0], expected);
                if let Decision::Append(_) = one[0] { next += 1; }
                single.apply(std::slice::from_ref(e), &one);
            }
            prop_assert_eq!(whole.len(), single.len());
            // Exactness: every appended id maps to its seq; every slot to its id.
            for (e, d) in events.iter().zip(&plan) {
                if let Decision::Append(s) = d {
                    prop_assert_eq!(whole.seq_of(&e.id), Some(*s));
                    prop_assert_eq!(whole.principal_slot(&e.kid, e.kid_seq), Some(e.id));
                }
            }
        }
    }
}
