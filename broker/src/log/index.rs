//! The in-memory indexes and the pure admission decisions over them (no IO).
//!
//! The indexes are derived data: they are rebuilt from the index frames when the store opens,
//! and updated only after a commit is durable. [`plan_batch`] decides, for a batch of verified
//! events, which are appended and which are refused, without touching the indexes; the store
//! applies the plan with [`Indexes::apply`] once the commit has been synced.

use super::frame::{device_number, device_number_of, FrameError, IndexRef, RawIndexEntry};
use super::store::{AppendOutcome, VerifiedEvent};
use pairbus_schemas::{DeviceId, EventId, Kid, PrincipalKind};
use std::collections::{HashMap, HashSet};

/// The hasher of every index map: foldhash, seeded at random per process (fast on the short,
/// fixed-size keys used here; the keys come from authenticated principals, and the random seed
/// keeps collisions from being planned).
pub(crate) type Hasher = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Hasher>;
type Set<K> = HashSet<K, Hasher>;

/// A principal as the principal index keys it: a device by its number, any other kid by a
/// small interned number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrincipalKey {
    Device(u64),
    Other(u32),
}

/// A principal during planning: a device by number, others by reference (not yet interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrincipalRef<'a> {
    Device(u64),
    Other(&'a Kid),
}

impl<'a> PrincipalRef<'a> {
    fn of(kid: &'a Kid) -> Self {
        match kid.kind() {
            PrincipalKind::Device => PrincipalRef::Device(device_number_of(kid.name())),
            _ => PrincipalRef::Other(kid),
        }
    }
}

/// The three exact indexes plus the revoked set.
#[derive(Debug, Default)]
pub struct Indexes {
    /// Idempotency: event id → log seq.
    ids: Map<EventId, u64>,
    /// Interned non-device kids (devices key on their number).
    kids: Map<Kid, u32>,
    /// Principal: (principal, principal seq) → event id.
    principal: Map<(PrincipalKey, u64), EventId>,
    /// Per device (by number): log seqs in increasing order.
    devices: Map<u64, Vec<u64>>,
    /// Devices (by number) revoked by a committed `device.revoked`.
    revoked: Set<u64>,
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
    /// Empty indexes with room for `records` records (avoids rehashing while rebuilding).
    pub fn with_capacity(records: usize) -> Self {
        Indexes {
            ids: Map::with_capacity_and_hasher(records, Hasher::default()),
            principal: Map::with_capacity_and_hasher(records, Hasher::default()),
            ..Indexes::default()
        }
    }

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

    fn key_of(&self, p: PrincipalRef<'_>) -> Option<PrincipalKey> {
        match p {
            PrincipalRef::Device(n) => Some(PrincipalKey::Device(n)),
            PrincipalRef::Other(kid) => self.kids.get(kid).map(|k| PrincipalKey::Other(*k)),
        }
    }

    fn slot(&self, p: PrincipalRef<'_>, kid_seq: u64) -> Option<EventId> {
        let k = self.key_of(p)?;
        self.principal.get(&(k, kid_seq)).copied()
    }

    /// The event id that holds `(kid, kid_seq)`.
    pub fn principal_slot(&self, kid: &Kid, kid_seq: u64) -> Option<EventId> {
        self.slot(PrincipalRef::of(kid), kid_seq)
    }

    fn revoked_ref(&self, p: PrincipalRef<'_>) -> bool {
        matches!(p, PrincipalRef::Device(n) if self.revoked.contains(&n))
    }

    /// True when `kid` is a device whose revocation is committed.
    pub fn is_revoked(&self, kid: &Kid) -> bool {
        self.revoked_ref(PrincipalRef::of(kid))
    }

    /// The log seqs of a device's records, in increasing order.
    pub fn device_seqs(&self, device: &DeviceId) -> &[u64] {
        self.devices
            .get(&device_number(device))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn intern(&mut self, kid: &Kid) -> PrincipalKey {
        match self.kids.get(kid) {
            Some(k) => PrincipalKey::Other(*k),
            None => {
                let k = self.kids.len() as u32;
                self.kids.insert(kid.clone(), k);
                PrincipalKey::Other(k)
            }
        }
    }

    fn insert_keyed(
        &mut self,
        seq: u64,
        id: EventId,
        who: PrincipalKey,
        kid_seq: u64,
        device: u64,
        revokes: Option<u64>,
    ) {
        self.ids.insert(id, seq);
        self.principal.insert((who, kid_seq), id);
        self.devices.entry(device).or_default().push(seq);
        if let Some(d) = revokes {
            self.revoked.insert(d);
        }
        self.len += 1;
    }

    /// Adds the committed record `seq` (seqs must be added in increasing order).
    pub fn insert(&mut self, seq: u64, e: IndexRef<'_>) {
        let who = match PrincipalRef::of(e.kid) {
            PrincipalRef::Device(n) => PrincipalKey::Device(n),
            PrincipalRef::Other(kid) => self.intern(kid),
        };
        let revokes = e.revokes.map(device_number);
        self.insert_keyed(seq, e.id, who, e.kid_seq, device_number(e.device), revokes);
    }

    /// Adds record `seq` from its stored index entry (what opening the store does; no
    /// allocation unless the principal is not a device).
    pub fn insert_raw(&mut self, seq: u64, e: RawIndexEntry<'_>) -> Result<(), FrameError> {
        let who = match e.kid_device {
            Some(n) => PrincipalKey::Device(n),
            None => {
                let kid = Kid::parse(e.kid).map_err(|_| FrameError::Bad("kid"))?;
                self.intern(&kid)
            }
        };
        self.insert_keyed(seq, e.id, who, e.kid_seq, e.device, e.revokes);
        Ok(())
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
    let n = events.len();
    let mut ids: Map<EventId, u64> = Map::with_capacity_and_hasher(n, Hasher::default());
    let mut slots: Map<(PrincipalRef<'_>, u64), EventId> =
        Map::with_capacity_and_hasher(n, Hasher::default());
    let mut revoked: Set<u64> = Set::default();
    let mut out = Vec::with_capacity(n);
    for e in events {
        if let Some(s) = ix.seq_of(&e.id).or_else(|| ids.get(&e.id).copied()) {
            out.push(Decision::Skip(AppendOutcome::AlreadyCommitted(s)));
            continue;
        }
        let who = PrincipalRef::of(&e.kid);
        if ix.revoked_ref(who) || matches!(who, PrincipalRef::Device(d) if revoked.contains(&d)) {
            out.push(Decision::Skip(AppendOutcome::Revoked));
            continue;
        }
        let holder = ix
            .slot(who, e.kid_seq)
            .or_else(|| slots.get(&(who, e.kid_seq)).copied());
        if let Some(existing) = holder {
            out.push(Decision::Skip(AppendOutcome::SeqConflict { existing }));
            continue;
        }
        ids.insert(e.id, seq);
        slots.insert((who, e.kid_seq), e.id);
        if let Some(d) = &e.revokes {
            revoked.insert(device_number(d));
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

    #[test]
    fn device_numbers_are_the_hex_digits() {
        let d = DeviceId::parse("00112233445566aa").unwrap();
        assert_eq!(device_number(&d), 0x0011_2233_4455_66aa);
        let d = DeviceId::parse("fedcba9876543210").unwrap();
        assert_eq!(device_number(&d), 0xfedc_ba98_7654_3210);
        assert_ne!(
            device_number(&DeviceId::parse(DEV_A).unwrap()),
            device_number(&DeviceId::parse(DEV_B).unwrap())
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
