//! The views the fold maintains, serializable to JSON. Their JSON shapes are a public contract
//! (audit topics, HTTP API, `--json` output): see the crate README, section "JSON views".

use pairbus_schemas::{DeviceId, EventId, EventType, Kid};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Manufactured, never activated (or its activation lapsed).
    Unconfigured,
    /// An operator scanned the QR; waiting for the device's own signed event.
    ActivationPending,
    /// Activated and proven: the device holds its key.
    Configured,
    /// Manages at least one sensor or is managed by a manager.
    Paired,
    /// Configured to run alone.
    Standalone,
    /// Revoked by an operator: its later events are refused.
    Revoked,
}

impl DeviceState {
    /// The state's name in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Unconfigured => "unconfigured",
            DeviceState::ActivationPending => "activation_pending",
            DeviceState::Configured => "configured",
            DeviceState::Paired => "paired",
            DeviceState::Standalone => "standalone",
            DeviceState::Revoked => "revoked",
        }
    }

    /// Parses a state name.
    pub fn parse(s: &str) -> Option<Self> {
        use DeviceState::*;
        [
            Unconfigured,
            ActivationPending,
            Configured,
            Paired,
            Standalone,
            Revoked,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// A component fitted at the factory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentView {
    /// What it is.
    pub kind: String,
    /// Its specification.
    pub spec: String,
}

/// The activation of a device (the operator's QR scan and the device's proof of possession).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationView {
    /// The operator that scanned the QR code.
    pub by: String,
    /// The owner named at activation.
    pub owner: String,
    /// Log position of the `device.activated` event.
    pub seq: u64,
    /// The event's `ts` (Unix ms).
    pub requested_at: u64,
    /// When the broker received it (Unix ms).
    pub received_at: u64,
    /// Last moment (broker time, Unix ms) at which the device's own event completes it.
    pub claim_deadline: u64,
    /// When the device proved possession (broker time), once it has.
    pub completed_at: Option<u64>,
    /// The factory station that signed the QR code.
    pub qr_factory: String,
    /// SHA-256 of the activation token, hex.
    pub token_hash: String,
    /// Where the scan came from, if known.
    pub ip: Option<String>,
    /// The scanning client, if known.
    pub user_agent: Option<String>,
    /// A client fingerprint, if known.
    pub fingerprint: Option<String>,
}

/// The setup confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupView {
    /// The owner confirmed.
    pub owner: String,
    /// `owner` or `admin`.
    pub role: String,
    /// Who signed it.
    pub by: String,
    /// Event `ts`, Unix ms.
    pub at: u64,
}

/// A revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedView {
    /// The operator.
    pub by: String,
    /// Event `ts`, Unix ms.
    pub at: u64,
    /// Why.
    pub reason: String,
}

/// The device card: everything known about one device now (`pairbus/v1/audit/devices/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCard {
    /// The device id.
    #[serde(with = "crate::wire")]
    pub device_id: DeviceId,
    /// Lifecycle state (derived from the fields below, see [`DeviceCard::derive_state`]).
    pub state: DeviceState,
    /// Device type from manufacture.
    pub device_type: String,
    /// Model.
    pub model: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Display name.
    pub name: String,
    /// Serial hash, hex.
    pub serial_hash: String,
    /// The factory station that made it.
    pub factory: String,
    /// Components fitted at the factory.
    pub components: Vec<ComponentView>,
    /// `ts` of `device.manufactured`, Unix ms.
    pub manufactured_at: u64,
    /// Until when its QR code is accepted, Unix ms.
    pub qr_expires_at: u64,
    /// The owner named at activation (cleared if the activation lapses).
    pub owner: Option<String>,
    /// When the activation completed (possession proven; broker time, Unix ms).
    pub activated_at: Option<u64>,
    /// The current (pending or completed) activation.
    pub activation: Option<ActivationView>,
    /// The setup confirmation, once made.
    pub setup: Option<SetupView>,
    /// Its manager, if it is a sensor.
    #[serde(with = "crate::wire::opt")]
    pub manager: Option<DeviceId>,
    /// Log position of the acceptance that paired it with its manager.
    pub manager_since: Option<u64>,
    /// The sensors it manages.
    #[serde(with = "crate::wire::set")]
    pub sensors: BTreeSet<DeviceId>,
    /// Set by `device.mode_changed`; cleared when it pairs.
    pub standalone: bool,
    /// The revocation, if revoked.
    pub revoked: Option<RevokedView>,
    /// Broker time (Unix ms) of the last event the device itself signed.
    pub last_seen: Option<u64>,
    /// Number of log records on its trail.
    pub events: u64,
}

impl DeviceCard {
    /// The state the fields say the device is in.
    pub fn derive_state(&self) -> DeviceState {
        if self.revoked.is_some() {
            DeviceState::Revoked
        } else if let Some(a) = &self.activation {
            if a.completed_at.is_none() {
                DeviceState::ActivationPending
            } else if self.manager.is_some() || !self.sensors.is_empty() {
                DeviceState::Paired
            } else if self.standalone {
                DeviceState::Standalone
            } else {
                DeviceState::Configured
            }
        } else {
            DeviceState::Unconfigured
        }
    }

    /// True when activation is complete and the device is not revoked.
    pub fn is_active(&self) -> bool {
        self.revoked.is_none()
            && self
                .activation
                .as_ref()
                .is_some_and(|a| a.completed_at.is_some())
    }
}

/// Whether the fold accepted an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Applied to the views.
    Accepted,
    /// Kept on the trail, not applied.
    Refused,
}

/// Why the fold refused an event (also the alert code of the refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The record's event could not be decoded.
    Malformed,
    /// `src` differs from the kid, or the signer may not make this event.
    BadSigner,
    /// The event names a device never manufactured.
    UnknownDevice,
    /// `device.manufactured` for a device that already exists.
    DuplicateDevice,
    /// Signed by, or about, a revoked device.
    Revoked,
    /// The activation QR code's factory MAC does not verify.
    ForgedQr,
    /// The activation QR code had expired at the event's time.
    ExpiredQr,
    /// The activation QR code is not a pairbus QR payload.
    MalformedQr,
    /// The QR code is signed by an unknown factory or by a principal that is not one.
    UnknownFactory,
    /// The QR code names another device (or another type/model).
    QrMismatch,
    /// A second activation of a device that is pending or configured.
    AlreadyActivated,
    /// The device is not activated (setup, pairing, mode change need it).
    NotActivated,
    /// The setup names another owner than the activation.
    OwnerMismatch,
    /// A device asked to pair is not pairable.
    NotPairable,
    /// A device cannot pair with itself.
    SelfPairing,
    /// An offer without an operator's request for that pair.
    NoRequest,
    /// The sensor already has a manager.
    SensorHasManager,
    /// The pairing would make a cycle.
    Cycle,
    /// A pairing nonce used before (token reuse).
    NonceReused,
    /// No open offer with that nonce.
    UnknownOffer,
    /// The offer belongs to other devices.
    WrongParty,
    /// The offer expired before it was accepted (or was issued already expired).
    OfferExpired,
    /// The two devices are not paired.
    NotPaired,
    /// The device is paired (unpair it before making it standalone).
    Paired,
    /// The issuer does not manage the target.
    NotManager,
    /// The command was issued already expired.
    Expired,
    /// No issued command with that id.
    UnknownCommand,
    /// The command expired before completion.
    CommandExpired,
    /// The command was already completed.
    AlreadyCompleted,
    /// The completion comes from another device than the command's target.
    WrongTarget,
    /// The device is already revoked.
    AlreadyRevoked,
    /// A principal's `seq` skipped numbers (not a refusal: the event is applied).
    SeqGap,
    /// A principal's `seq` went backwards (not a refusal).
    SeqOutOfOrder,
    /// A pending activation lapsed: no proof of possession within the claim window.
    ActivationLapsed,
    /// The log records handed to the fold skip positions or break the hash chain.
    LogGap,
    /// The broker refused an event before the log (not raised by the fold: see
    /// [`crate::refusals`]); the detail names the reason (`bad_mac`, `unknown_kid`, …).
    Rejected,
    /// The broker refused an event whose `seq` its principal had already used for another
    /// event: a possible cloned device (not raised by the fold: see [`crate::refusals`]).
    SeqConflict,
}

impl Code {
    /// The code's name in JSON.
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A refusal: code and human detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: Code,
    /// Human-readable detail.
    pub detail: String,
}

/// A gap in a principal's `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The seq that should have come next.
    pub expected: u64,
    /// The seq that came.
    pub got: u64,
}

/// One entry of a device's trail (`pairbus/v1/audit/events/<id>`): one log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrailEntry {
    /// Log position.
    pub seq: u64,
    /// Broker time, Unix ms.
    pub received_at: u64,
    /// The event's `ts` (absent when undecodable).
    pub ts: Option<u64>,
    /// The event type (absent when undecodable).
    #[serde(rename = "type", with = "crate::wire::opt")]
    pub event_type: Option<EventType>,
    /// The signer.
    #[serde(with = "crate::wire::opt")]
    pub src: Option<Kid>,
    /// The signer's per-principal seq.
    pub src_seq: Option<u64>,
    /// The event id, 32 hex digits.
    #[serde(with = "crate::wire::opt")]
    pub event_id: Option<EventId>,
    /// The device the event is about (the trail may belong to a peer it concerns).
    #[serde(with = "crate::wire::opt")]
    pub device: Option<DeviceId>,
    /// Accepted or refused.
    pub status: Status,
    /// Why it was refused (boxed, as the gap: both are rare, and a trail holds one entry per
    /// event, so the entry stays small).
    pub refusal: Option<Box<Refusal>>,
    /// A gap in the signer's seq just before this event.
    pub gap: Option<Box<Gap>>,
}

/// An anomaly (`pairbus/v1/audit/alerts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Log position of the record that raised it.
    pub seq: u64,
    /// Broker time of that record, Unix ms.
    pub at: u64,
    /// What happened.
    pub code: Code,
    /// The device concerned, if any.
    #[serde(with = "crate::wire::opt")]
    pub device: Option<DeviceId>,
    /// The signer of the event, if known.
    #[serde(with = "crate::wire::opt")]
    pub src: Option<Kid>,
    /// The event type, if known.
    #[serde(rename = "type", with = "crate::wire::opt")]
    pub event_type: Option<EventType>,
    /// Human detail.
    pub detail: String,
}

/// Entries per chunk of a [`Trail`] (a power of two: indexing is a shift and a mask).
const TRAIL_CHUNK: usize = 128;

/// One entry as a [`Trail`] holds it: 64 bytes (a [`TrailEntry`] is 136).
///
/// Nearly every entry has one shape: an accepted event about the trail's own device, signed by
/// that device, with no seq gap. Such an entry is kept as its five numbers, its event id and
/// type; the device and the signer are the trail's owner. Any other entry (refused, a peer's
/// event, signed by an operator or a factory, after a gap, or with absent fields) is kept
/// whole, boxed, in `other` (only `seq` and `received_at` are then also set, for searches).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    seq: u64,
    received_at: u64,
    ts: u64,
    src_seq: u64,
    event_id: EventId,
    event_type: EventType,
    other: Option<Box<TrailEntry>>,
}

impl Slot {
    /// The compact form of `e` on `owner`'s trail.
    fn new(owner: &DeviceId, e: TrailEntry) -> Slot {
        if let TrailEntry {
            seq,
            received_at,
            ts: Some(ts),
            event_type: Some(event_type),
            src: Some(src),
            src_seq: Some(src_seq),
            event_id: Some(event_id),
            device: Some(device),
            status: Status::Accepted,
            refusal: None,
            gap: None,
        } = &e
        {
            if device == owner && src.is_device(owner) {
                return Slot {
                    seq: *seq,
                    received_at: *received_at,
                    ts: *ts,
                    src_seq: *src_seq,
                    event_id: *event_id,
                    event_type: *event_type,
                    other: None,
                };
            }
        }
        Slot {
            seq: e.seq,
            received_at: e.received_at,
            ts: 0,
            src_seq: 0,
            event_id: EventId([0; 16]),
            event_type: EventType::Manufactured,
            other: Some(Box::new(e)),
        }
    }

    /// The entry, as it was pushed.
    fn entry(&self, owner: &DeviceId) -> TrailEntry {
        match &self.other {
            Some(e) => TrailEntry::clone(e),
            None => TrailEntry {
                seq: self.seq,
                received_at: self.received_at,
                ts: Some(self.ts),
                event_type: Some(self.event_type),
                src: Some(owner.kid()),
                src_seq: Some(self.src_seq),
                event_id: Some(self.event_id),
                device: Some(owner.clone()),
                status: Status::Accepted,
                refusal: None,
                gap: None,
            },
        }
    }
}

/// Bytes a trail takes per entry of the common shape (an accepted event about the trail's own
/// device, signed by it, no seq gap); other entries take this plus a boxed [`TrailEntry`].
pub const TRAIL_SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// A device's trail: its entries in log order, stored in chunks of [`TRAIL_CHUNK`] entries.
///
/// A full chunk never moves again, so an append never copies earlier entries (a doubling
/// `Vec` copies the whole trail each time it grows) and touches only the open chunk, held
/// inline. Only a trail's first chunk grows (up to one chunk); the next ones are allocated
/// full size. Entries are stored compactly (64 bytes for the common shape, see `Slot`) and
/// rebuilt on reading: the accessors return [`TrailEntry`] values, equal to what was pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trail {
    /// The device whose trail this is.
    owner: DeviceId,
    /// Full chunks of exactly [`TRAIL_CHUNK`] entries.
    full: Vec<Vec<Slot>>,
    /// The open chunk (the last entries; never empty unless the trail is).
    open: Vec<Slot>,
}

impl Trail {
    /// An empty trail of device `owner`.
    pub fn new(owner: DeviceId) -> Self {
        Trail {
            owner,
            full: Vec::new(),
            open: Vec::new(),
        }
    }

    /// The device whose trail this is.
    pub fn owner(&self) -> &DeviceId {
        &self.owner
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.full.len() * TRAIL_CHUNK + self.open.len()
    }

    /// True when the trail has no entry.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.full.is_empty()
    }

    /// Appends an entry.
    pub fn push(&mut self, e: TrailEntry) {
        if self.open.len() >= TRAIL_CHUNK {
            let done = std::mem::replace(&mut self.open, Vec::with_capacity(TRAIL_CHUNK));
            self.full.push(done);
        }
        let slot = Slot::new(&self.owner, e);
        self.open.push(slot);
    }

    /// Reads the last entry's slot (both ends of it), which shares a cache line with where
    /// the next entry goes unless the chunk is full: the fold's warm-up (see `fold.rs`).
    pub(crate) fn touch_tail(&self) -> Option<(u64, bool)> {
        self.open.last().map(|s| (s.seq, s.other.is_some()))
    }

    fn slot(&self, index: usize) -> Option<&Slot> {
        let (ci, i) = (index / TRAIL_CHUNK, index % TRAIL_CHUNK);
        match ci.cmp(&self.full.len()) {
            std::cmp::Ordering::Less => self.full.get(ci).and_then(|c| c.get(i)),
            std::cmp::Ordering::Equal => self.open.get(i),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// The entry at `index`, if any.
    pub fn get(&self, index: usize) -> Option<TrailEntry> {
        self.slot(index).map(|s| s.entry(&self.owner))
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<TrailEntry> {
        self.open
            .last()
            .or_else(|| self.full.last().and_then(|c| c.last()))
            .map(|s| s.entry(&self.owner))
    }

    /// The entries in log order.
    pub fn iter(&self) -> impl Iterator<Item = TrailEntry> + '_ {
        self.iter_from(0)
    }

    /// The entries from `start` on, in log order.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = TrailEntry> + '_ {
        self.slots_from(start).map(|s| s.entry(&self.owner))
    }

    /// The slots from `start` on, in log order.
    fn slots_from(&self, start: usize) -> impl Iterator<Item = &Slot> + '_ {
        let (first, offset) = (start / TRAIL_CHUNK, start % TRAIL_CHUNK);
        self.full
            .iter()
            .chain(std::iter::once(&self.open))
            .skip(first)
            .enumerate()
            .flat_map(move |(i, c)| c.get(if i == 0 { offset } else { 0 }..).unwrap_or(&[]))
    }

    /// A copy of the entries from `start` on, taken cheaply (the compact slots are copied, not
    /// rebuilt into [`TrailEntry`] values): for saving them on another thread.
    pub fn copy_from(&self, start: usize) -> TrailCopy {
        let mut slots = Vec::with_capacity(self.len().saturating_sub(start));
        slots.extend(self.slots_from(start).cloned());
        TrailCopy {
            owner: self.owner.clone(),
            start,
            slots,
        }
    }

    /// The index of the first entry for which `pred` is false, the entries being partitioned
    /// by it (all `true` ones first), as [`slice::partition_point`].
    pub fn partition_point(&self, mut pred: impl FnMut(&TrailEntry) -> bool) -> usize {
        let owner = &self.owner;
        let mut test = |s: &Slot| pred(&s.entry(owner));
        // The full chunks are partitioned too: the first one whose last entry fails holds
        // the point; if none does, it is in the open chunk.
        let ci = self
            .full
            .partition_point(|c| c.last().is_some_and(&mut test));
        let chunk = self.full.get(ci).unwrap_or(&self.open);
        ci * TRAIL_CHUNK + chunk.partition_point(test)
    }
}

/// The entries of a [`Trail`] from some index on ([`Trail::copy_from`]).
#[derive(Debug, Clone)]
pub struct TrailCopy {
    owner: DeviceId,
    start: usize,
    slots: Vec<Slot>,
}

impl TrailCopy {
    /// The device whose trail this is.
    pub fn owner(&self) -> &DeviceId {
        &self.owner
    }

    /// The entries with their indexes in the trail, in order.
    pub fn entries(&self) -> impl Iterator<Item = (usize, TrailEntry)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| (self.start + i, s.entry(&self.owner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> DeviceId {
        DeviceId::parse("00000000000000aa").unwrap()
    }

    /// Entries of every shape: compact ones (`seq % 7 >= 4`: accepted, own device, signed by
    /// it, no gap) and each way of not being one.
    fn entry(seq: u64) -> TrailEntry {
        let me = owner();
        let peer = DeviceId::parse("00000000000000bb").unwrap();
        let mut e = TrailEntry {
            seq,
            received_at: seq / 3,
            ts: Some(seq * 5),
            event_type: Some(EventType::Action),
            src: Some(me.kid()),
            src_seq: Some(seq + 1),
            event_id: Some(EventId([seq as u8; 16])),
            device: Some(me.clone()),
            status: Status::Accepted,
            refusal: None,
            gap: None,
        };
        match seq % 7 {
            0 => {
                e.status = Status::Refused;
                e.refusal = Some(Box::new(Refusal {
                    code: Code::Revoked,
                    detail: "revoked".into(),
                }));
            }
            1 => e.device = Some(peer),
            2 => e.src = Some(Kid::parse("operator:ops").unwrap()),
            3 => {
                e.gap = Some(Box::new(Gap {
                    expected: 1,
                    got: 3,
                }));
                e.ts = None;
            }
            _ => {}
        }
        e
    }

    /// A trail answers as the `Vec` of its entries would, across chunk boundaries and for
    /// entries of every shape.
    #[test]
    fn trail_matches_a_vec() {
        assert_eq!(TRAIL_SLOT_BYTES, 64);
        for n in [0, 1, 2, 127, 128, 129, 255, 256, 257, 700] {
            let v: Vec<TrailEntry> = (0..n).map(entry).collect();
            let mut t = Trail::new(owner());
            v.iter().cloned().for_each(|e| t.push(e));
            assert_eq!(t.owner(), &owner());
            assert_eq!(t.len(), v.len());
            assert_eq!(t.is_empty(), v.is_empty());
            assert_eq!(t.last().as_ref(), v.last());
            assert!(t.iter().eq(v.iter().cloned()));
            for i in 0..n as usize + 2 {
                assert_eq!(t.get(i).as_ref(), v.get(i));
                assert!(t.iter_from(i).eq(v.get(i..).unwrap_or(&[]).iter().cloned()));
                let copy = t.copy_from(i);
                assert_eq!(copy.owner(), &owner());
                assert!(copy.entries().eq(v.iter().cloned().enumerate().skip(i)));
            }
            for lo in 0..n / 3 + 2 {
                assert_eq!(
                    t.partition_point(|e| e.received_at < lo),
                    v.partition_point(|e| e.received_at < lo)
                );
            }
            assert_eq!(t.clone(), t);
        }
        let compact = (0..700).map(entry).filter(|e| {
            let mut t = Trail::new(owner());
            t.push(e.clone());
            t.open[0].other.is_none()
        });
        assert_eq!(compact.count(), 700 * 3 / 7);
    }
}
