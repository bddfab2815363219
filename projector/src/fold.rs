//! The pure fold: `apply(&mut Projections, &Record) -> Vec<Effect>`.
//!
//! No IO, no clock, no randomness: time comes from the event's `ts` and the record's
//! `received_at` (broker time). Deadlines (claim window, pairing offers, commands) are compared
//! with `received_at`, which the principals cannot choose. The rules are listed in the crate
//! README ("Fold rules"); every refused event stays on the trail with its reason and raises an
//! alert.

use crate::decode::decode_event_lite;
use crate::model::{
    ActivationView, Alert, Code, ComponentView, DeviceCard, Gap, Refusal, RevokedView, SetupView,
    Status, Trail, TrailEntry,
};
use fxhash::{FxHashMap, FxHashSet};
use pairbus_schemas::event::{Command, Outcome};
use pairbus_schemas::qr::{verify_qr, QrError};
use pairbus_schemas::{Body, DeviceId, Event, EventId, Key, Kid, Record, RootSecret, GENESIS};
use std::collections::{BTreeMap, BTreeSet};

/// Default claim window: 24 hours.
pub const DEFAULT_CLAIM_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Longest life of a pairing offer: 10 minutes.
pub const PAIRING_TTL_MS: u64 = 10 * 60 * 1000;
/// Milliseconds per day (stats buckets are UTC days of the event's `ts`).
pub const DAY_MS: u64 = 86_400_000;

/// Tunables of the fold. Two projectors agree only if their configs agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long after the activation (broker time) the device's own event may prove possession.
    pub claim_window_ms: u64,
    /// Longest life of a pairing offer, whatever its `expires_at` says.
    pub pairing_ttl_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            claim_window_ms: DEFAULT_CLAIM_WINDOW_MS,
            pairing_ttl_ms: PAIRING_TTL_MS,
        }
    }
}

/// Finds factory keys to verify the QR code inside `device.activated`.
pub trait KeyResolver {
    /// The key of `kid`, if known.
    fn key_for(&self, kid: &Kid) -> Option<Key>;
}

impl KeyResolver for RootSecret {
    fn key_for(&self, kid: &Kid) -> Option<Key> {
        Some(self.derive(kid))
    }
}

impl<F: Fn(&Kid) -> Option<Key>> KeyResolver for F {
    fn key_for(&self, kid: &Kid) -> Option<Key> {
        self(kid)
    }
}

/// A resolver that knows no key: every activation QR is refused as `unknown_factory`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoKeys;

impl KeyResolver for NoKeys {
    fn key_for(&self, _: &Kid) -> Option<Key> {
        None
    }
}

/// What the shell should publish after a record was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The card of this device changed: republish `audit/devices/<id>` (retained).
    DeviceChanged(DeviceId),
    /// An entry was appended to a trail: publish `trails[device][index]` on
    /// `audit/events/<device>`; `device: None` is the trail of undecodable records.
    Trail {
        /// The trail's device.
        device: Option<DeviceId>,
        /// Index of the new entry in that trail.
        index: usize,
    },
    /// The pairing graph changed: republish `audit/graph` (retained).
    GraphChanged,
    /// `alerts[index]` was raised: publish it on `audit/alerts`.
    Alert(usize),
    /// The command issued by this event was recorded or completed (bookkeeping behind the
    /// rules: saved, not published).
    CommandChanged(EventId),
}

/// An open pairing offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The offering manager.
    pub manager: DeviceId,
    /// The sensor offered to.
    pub sensor: DeviceId,
    /// Effective expiry (broker time, Unix ms): `min(expires_at, received_at + pairing TTL)`.
    pub expires_at: u64,
    /// Log position of the offer.
    pub seq: u64,
}

/// An issued command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCommand {
    /// The manager that issued it.
    pub issuer: DeviceId,
    /// The device that should run it.
    pub target: DeviceId,
    /// The command.
    pub command: Command,
    /// Its expiry, Unix ms.
    pub expires_at: u64,
    /// Log position of `command.issued`.
    pub seq: u64,
    /// Log position and outcome of its completion, once completed.
    pub completed: Option<(u64, Outcome)>,
}

/// Everything the fold maintains: the views and the bookkeeping behind the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projections {
    /// Log position of the last applied record (0: none).
    pub last_seq: u64,
    /// Hash of the last applied record ([`GENESIS`] before any).
    pub last_hash: [u8; 32],
    /// Device cards by id.
    pub devices: FxHashMap<DeviceId, DeviceCard>,
    /// Trail of each device, in log order (also for ids with no card: unknown devices).
    pub trails: FxHashMap<DeviceId, Trail>,
    /// Trail of records whose event could not be decoded (no device to file them under).
    pub unattributed: Vec<TrailEntry>,
    /// Every alert, in log order.
    pub alerts: Vec<Alert>,
    /// Accepted `device.action`s: action → day number (event `ts` / [`DAY_MS`]) → count.
    pub stats: BTreeMap<String, BTreeMap<u64, u64>>,
    /// Highest `seq` seen per principal.
    pub principals: FxHashMap<Kid, u64>,
    /// Open operator pairing requests (manager, sensor).
    pub requests: BTreeSet<(DeviceId, DeviceId)>,
    /// Open pairing offers by nonce.
    pub offers: FxHashMap<[u8; 16], Offer>,
    /// Nonces of every offer ever accepted by the fold (single use).
    pub used_nonces: FxHashSet<[u8; 16]>,
    /// Issued commands by event id.
    pub commands: FxHashMap<EventId, IssuedCommand>,
}

impl Projections {
    /// Empty projections (before the first record).
    pub fn new() -> Self {
        Projections {
            last_hash: GENESIS,
            ..Default::default()
        }
    }

    /// The log position the fold expects next.
    pub fn next_seq(&self) -> u64 {
        self.last_seq.saturating_add(1)
    }
}

/// A configured fold: the config and the factory keys.
pub struct Projector {
    /// The tunables.
    pub config: Config,
    keys: Box<dyn KeyResolver + Send + Sync>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Projector {
    /// A fold with `config` that resolves factory keys with `keys`.
    pub fn new(config: Config, keys: impl KeyResolver + Send + Sync + 'static) -> Self {
        Projector {
            config,
            keys: Box::new(keys),
        }
    }

    /// Applies one record; see [`Projector::apply_into`].
    pub fn apply(&self, p: &mut Projections, rec: &Record) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.apply_into(p, rec, &mut fx);
        fx
    }

    /// Applies one record, appending its effects to `fx`.
    ///
    /// A record at or below `last_seq` was applied already and is ignored (re-delivery is
    /// harmless). A record that does not follow the last one (a skipped position or a `prev`
    /// that is not the last hash) is applied but raises a `log_gap` alert: the shell should
    /// have caught up first (see [`Projections::next_seq`]). The record's own hash is not
    /// recomputed here (the broker or the export reader did).
    pub fn apply_into(&self, p: &mut Projections, rec: &Record, fx: &mut Vec<Effect>) {
        if rec.seq <= p.last_seq {
            return;
        }
        let fx_start = fx.len();
        let mut step = Step {
            p,
            rec,
            cfg: &self.config,
            keys: self.keys.as_ref(),
            fx,
            fx_start,
            graph: false,
        };
        if rec.seq != step.p.last_seq.saturating_add(1) || rec.prev != step.p.last_hash {
            let detail = format!(
                "expected record {} after hash {}, got record {} with prev {}",
                step.p.last_seq.saturating_add(1),
                hex::encode(step.p.last_hash),
                rec.seq,
                hex::encode(rec.prev)
            );
            step.alert(Code::LogGap, None, None, detail);
        }
        step.p.last_seq = rec.seq;
        step.p.last_hash = rec.hash;
        match decode_event_lite(&rec.event) {
            Err(e) => step.undecodable(e.to_string()),
            Ok(ev) => step.event(ev),
        }
        step.finish();
    }

    /// Folds `records` from empty projections.
    pub fn rebuild<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> Projections {
        let mut p = Projections::new();
        let mut fx = Vec::new();
        for r in records {
            fx.clear();
            self.apply_into(&mut p, r, &mut fx);
        }
        p
    }
}

/// One application of one record.
struct Step<'a> {
    p: &'a mut Projections,
    rec: &'a Record,
    cfg: &'a Config,
    keys: &'a (dyn KeyResolver + Send + Sync),
    fx: &'a mut Vec<Effect>,
    /// Where this record's effects start in `fx`.
    fx_start: usize,
    graph: bool,
}

/// True when the event is signed by the device it is about (no allocation).
fn is_own(ev: &Event) -> bool {
    ev.src.is_device(&ev.device)
}

fn refuse<T>(code: Code, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        detail: detail.into(),
    })
}

impl Step<'_> {
    fn alert(&mut self, code: Code, device: Option<&DeviceId>, ev: Option<&Event>, detail: String) {
        self.p.alerts.push(Alert {
            seq: self.rec.seq,
            at: self.rec.received_at,
            code,
            device: device.cloned(),
            src: ev.map(|e| e.src.clone()),
            event_type: ev.map(Event::event_type),
            detail,
        });
        self.fx.push(Effect::Alert(self.p.alerts.len() - 1));
    }

    fn mark(&mut self, d: &DeviceId) {
        let known = self.fx[self.fx_start..]
            .iter()
            .any(|e| matches!(e, Effect::DeviceChanged(x) if x == d));
        if !known {
            self.fx.push(Effect::DeviceChanged(d.clone()));
        }
    }

    fn finish(self) {
        if self.graph {
            self.fx.push(Effect::GraphChanged);
        }
    }

    fn undecodable(&mut self, detail: String) {
        self.p.unattributed.push(TrailEntry {
            seq: self.rec.seq,
            received_at: self.rec.received_at,
            ts: None,
            event_type: None,
            src: None,
            src_seq: None,
            event_id: None,
            device: None,
            status: Status::Refused,
            refusal: Some(Box::new(Refusal {
                code: Code::Malformed,
                detail: detail.clone(),
            })),
            gap: None,
        });
        self.fx.push(Effect::Trail {
            device: None,
            index: self.p.unattributed.len() - 1,
        });
        self.alert(Code::Malformed, None, None, detail);
    }

    /// The devices other than `ev.device` whose trail this event belongs on too.
    fn peers(&self, ev: &Event) -> Vec<DeviceId> {
        let mut out: Vec<DeviceId> = match &ev.body {
            Body::PairingRequested(b) => vec![b.manager.clone(), b.sensor.clone()],
            Body::PairingOffered(b) => vec![b.sensor.clone()],
            Body::PairingAccepted(b) => vec![b.manager.clone()],
            Body::PairingDeclined(b) | Body::PairingCancelled(b) => self
                .p
                .offers
                .get(&b.nonce)
                .map(|o| vec![o.manager.clone(), o.sensor.clone()])
                .unwrap_or_default(),
            Body::PairingUnpaired(b) => vec![b.peer.clone()],
            Body::CommandIssued(b) => vec![b.target.clone()],
            Body::CommandCompleted(b) => self
                .p
                .commands
                .get(&b.command_id)
                .map(|c| vec![c.issuer.clone()])
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        out.retain(|d| *d != ev.device);
        out.dedup();
        out
    }

    /// Reads, back to back, what this event will use in the per-device tables (the signer's
    /// last seq, the device's card, its trail and the end of that trail), so that their cache misses overlap instead
    /// of following one another: in a large fleet each event's device is cold, and the steps
    /// below look these up one after the other with work in between. No effect on the result.
    fn warm(&self, ev: &Event) {
        let p = &*self.p;
        std::hint::black_box(p.principals.get(&ev.src));
        std::hint::black_box(p.devices.get(&ev.device).map(|c| {
            (
                c.last_seen,
                c.events,
                c.state,
                c.revoked.is_some(),
                c.activation.as_ref().map(|a| a.completed_at),
            )
        }));
        std::hint::black_box(p.trails.get(&ev.device).map(Trail::touch_tail));
    }

    fn event(&mut self, owned: Event) {
        let ev = &owned;
        self.warm(ev);
        let gap = self.track_seq(ev);
        let peers = self.peers(ev);
        let now = self.rec.received_at;
        for d in std::iter::once(&ev.device).chain(peers.iter()) {
            self.lapse_if_due(d, now);
        }
        self.seen(ev);
        let verdict = self.rules(ev);
        let (status, refusal) = match verdict {
            Ok(()) => (Status::Accepted, None),
            Err(r) => {
                self.alert(r.code, Some(&ev.device), Some(ev), r.detail.clone());
                (Status::Refused, Some(Box::new(r)))
            }
        };
        let (ts, event_type, src_seq, id) = (ev.ts, ev.event_type(), ev.seq, ev.id);
        let Event { src, device, .. } = owned;
        let mut entry = TrailEntry {
            seq: self.rec.seq,
            received_at: now,
            ts: Some(ts),
            event_type: Some(event_type),
            src: Some(src),
            src_seq: Some(src_seq),
            event_id: Some(id),
            device: None,
            status,
            refusal,
            gap: gap.map(Box::new),
        };
        let key = device.clone();
        entry.device = Some(device);
        for d in peers {
            self.push_trail(d, entry.clone());
        }
        self.push_trail(key, entry);
    }

    fn push_trail(&mut self, d: DeviceId, entry: TrailEntry) {
        let trail = match self.p.trails.get_mut(&d) {
            Some(t) => t,
            None => self
                .p
                .trails
                .entry(d.clone())
                .or_insert_with_key(|k| Trail::new(k.clone())),
        };
        trail.push(entry);
        let index = trail.len() - 1;
        if let Some(card) = self.p.devices.get_mut(&d) {
            card.events += 1;
            self.mark(&d);
        }
        self.fx.push(Effect::Trail {
            device: Some(d),
            index,
        });
    }

    /// Per-principal seq: a gap is recorded and alerted, the event still applies.
    fn track_seq(&mut self, ev: &Event) -> Option<Gap> {
        let last = match self.p.principals.get_mut(&ev.src) {
            Some(l) => l,
            None => self.p.principals.entry(ev.src.clone()).or_insert(0),
        };
        let prev = *last;
        *last = prev.max(ev.seq);
        // Saturating: a hostile principal may sign any seq, up to u64::MAX.
        let expected = prev.saturating_add(1);
        if ev.seq > expected {
            let gap = Gap {
                expected,
                got: ev.seq,
            };
            let detail = format!(
                "{}: seq {} follows {}: {} event(s) missing",
                ev.src,
                ev.seq,
                prev,
                ev.seq - prev - 1
            );
            self.alert(Code::SeqGap, Some(&ev.device), Some(ev), detail);
            Some(gap)
        } else {
            if ev.seq <= prev {
                let detail = format!("{}: seq {} after {}", ev.src, ev.seq, prev);
                self.alert(Code::SeqOutOfOrder, Some(&ev.device), Some(ev), detail);
            }
            None
        }
    }

    /// A pending activation whose claim window has passed lapses: back to unconfigured.
    fn lapse_if_due(&mut self, d: &DeviceId, now: u64) {
        let Some(card) = self.p.devices.get_mut(d) else {
            return;
        };
        let due = card
            .activation
            .as_ref()
            .is_some_and(|a| a.completed_at.is_none() && now > a.claim_deadline);
        if !due || card.revoked.is_some() {
            return;
        }
        let deadline = card.activation.as_ref().map_or(0, |a| a.claim_deadline);
        card.activation = None;
        card.owner = None;
        card.setup = None;
        card.state = card.derive_state();
        let detail = format!(
            "device {d} did not prove possession before {deadline}: activation lapsed, device back to unconfigured"
        );
        self.mark(d);
        self.alert(Code::ActivationLapsed, Some(d), None, detail);
    }

    /// The device's own signed event: last seen, and proof of possession for a pending
    /// activation (even if the event itself is then refused: its MAC proves the key).
    fn seen(&mut self, ev: &Event) {
        if !is_own(ev) {
            return;
        }
        let now = self.rec.received_at;
        let Some(card) = self.p.devices.get_mut(&ev.device) else {
            return;
        };
        card.last_seen = Some(card.last_seen.map_or(now, |l| l.max(now)));
        if card.revoked.is_some() {
            return;
        }
        if let Some(a) = card.activation.as_mut() {
            if a.completed_at.is_none() && now <= a.claim_deadline {
                a.completed_at = Some(now);
                card.activated_at = Some(now);
                card.state = card.derive_state();
            }
        }
    }

    fn card(&self, d: &DeviceId) -> Result<&DeviceCard, Refusal> {
        match self.p.devices.get(d) {
            Some(c) => Ok(c),
            None => refuse(
                Code::UnknownDevice,
                format!("device {d} was never manufactured"),
            ),
        }
    }

    fn card_mut(&mut self, d: &DeviceId) -> Result<&mut DeviceCard, Refusal> {
        self.mark(d);
        match self.p.devices.get_mut(d) {
            Some(c) => Ok(c),
            None => refuse(
                Code::UnknownDevice,
                format!("device {d} was never manufactured"),
            ),
        }
    }

    fn pairable(&self, d: &DeviceId) -> Result<&DeviceCard, Refusal> {
        let c = self.card(d)?;
        if c.is_active() {
            Ok(c)
        } else {
            refuse(
                Code::NotPairable,
                format!(
                    "device {d} is {} (pairing needs an activated, unrevoked device)",
                    c.state.as_str()
                ),
            )
        }
    }

    /// True when making `manager` manage `sensor` would close a cycle.
    fn would_cycle(&self, manager: &DeviceId, sensor: &DeviceId) -> bool {
        let mut cur = Some(manager);
        let mut steps = 0usize;
        while let Some(d) = cur {
            if d == sensor {
                return true;
            }
            steps += 1;
            if steps > self.p.devices.len() {
                return true;
            }
            cur = self.p.devices.get(d).and_then(|c| c.manager.as_ref());
        }
        false
    }

    /// The checks shared by requests, offers and acceptances.
    fn check_pair(&self, manager: &DeviceId, sensor: &DeviceId) -> Result<(), Refusal> {
        if manager == sensor {
            return refuse(
                Code::SelfPairing,
                format!("device {manager} cannot pair with itself"),
            );
        }
        self.pairable(manager)?;
        let s = self.pairable(sensor)?;
        if let Some(m) = &s.manager {
            return refuse(
                Code::SensorHasManager,
                format!("sensor {sensor} is already managed by {m}"),
            );
        }
        if self.would_cycle(manager, sensor) {
            return refuse(
                Code::Cycle,
                format!("{manager} managing {sensor} would make a cycle"),
            );
        }
        Ok(())
    }

    fn rules(&mut self, ev: &Event) -> Result<(), Refusal> {
        let now = self.rec.received_at;
        if let Body::Manufactured(m) = &ev.body {
            if self.p.devices.contains_key(&ev.device) {
                return refuse(
                    Code::DuplicateDevice,
                    format!("device {} was already manufactured", ev.device),
                );
            }
            let mut card = DeviceCard {
                device_id: ev.device.clone(),
                state: crate::model::DeviceState::Unconfigured,
                device_type: m.device_type.clone(),
                model: m.model.clone(),
                manufacturer: m.manufacturer.clone(),
                name: m.name.clone(),
                serial_hash: hex::encode(m.serial_hash),
                factory: ev.src.to_string(),
                components: m
                    .components
                    .iter()
                    .map(|c| ComponentView {
                        kind: c.kind.clone(),
                        spec: c.spec.clone(),
                    })
                    .collect(),
                manufactured_at: ev.ts,
                qr_expires_at: m.qr_expires_at,
                owner: None,
                activated_at: None,
                activation: None,
                setup: None,
                manager: None,
                manager_since: None,
                sensors: BTreeSet::new(),
                standalone: false,
                revoked: None,
                last_seen: None,
                events: 0,
            };
            card.state = card.derive_state();
            self.p.devices.insert(ev.device.clone(), card);
            self.mark(&ev.device);
            return Ok(());
        }
        let card = self.card(&ev.device)?;
        if let Some(r) = &card.revoked {
            let code = if matches!(ev.body, Body::Revoked(_)) {
                Code::AlreadyRevoked
            } else {
                Code::Revoked
            };
            return refuse(
                code,
                format!(
                    "device {} was revoked at {} ({})",
                    ev.device, r.at, r.reason
                ),
            );
        }
        // A device only signs events about itself (checked at decoding), so a revoked device
        // signer is caught by the check on `ev.device` above.
        match &ev.body {
            Body::Manufactured(_) => Ok(()),
            Body::Activated(a) => self.activate(ev, a),
            Body::SetupCompleted(s) => {
                let card = self.card(&ev.device)?;
                let Some(act) = &card.activation else {
                    return refuse(
                        Code::NotActivated,
                        format!("device {} has no activation", ev.device),
                    );
                };
                if act.owner != s.owner {
                    return refuse(
                        Code::OwnerMismatch,
                        format!(
                            "setup names owner `{}`, activation named `{}`",
                            s.owner, act.owner
                        ),
                    );
                }
                let setup = SetupView {
                    owner: s.owner.clone(),
                    role: s.role.as_str().to_owned(),
                    by: ev.src.to_string(),
                    at: ev.ts,
                };
                self.card_mut(&ev.device)?.setup = Some(setup);
                Ok(())
            }
            Body::PairingRequested(r) => {
                self.check_pair(&r.manager, &r.sensor)?;
                self.p
                    .requests
                    .insert((r.manager.clone(), r.sensor.clone()));
                Ok(())
            }
            Body::PairingOffered(o) => {
                let manager = &ev.device;
                if self.p.used_nonces.contains(&o.nonce) {
                    return refuse(
                        Code::NonceReused,
                        format!("nonce {} was used before", hex::encode(o.nonce)),
                    );
                }
                self.check_pair(manager, &o.sensor)?;
                let key = (manager.clone(), o.sensor.clone());
                if !self.p.requests.contains(&key) {
                    return refuse(
                        Code::NoRequest,
                        format!("no operator asked {manager} to pair with {}", o.sensor),
                    );
                }
                let expires_at = o
                    .expires_at
                    .min(now.saturating_add(self.cfg.pairing_ttl_ms));
                if expires_at <= now {
                    return refuse(
                        Code::OfferExpired,
                        format!("offer expires at {} but arrived at {now}", o.expires_at),
                    );
                }
                self.p.requests.remove(&key);
                self.p.used_nonces.insert(o.nonce);
                self.p.offers.insert(
                    o.nonce,
                    crate::fold::Offer {
                        manager: manager.clone(),
                        sensor: o.sensor.clone(),
                        expires_at,
                        seq: self.rec.seq,
                    },
                );
                Ok(())
            }
            Body::PairingAccepted(a) => {
                let sensor = &ev.device;
                let Some(offer) = self.p.offers.get(&a.nonce) else {
                    return if self.p.used_nonces.contains(&a.nonce) {
                        refuse(
                            Code::NonceReused,
                            format!(
                                "offer {} was already accepted, declined or cancelled",
                                hex::encode(a.nonce)
                            ),
                        )
                    } else {
                        refuse(
                            Code::UnknownOffer,
                            format!("no offer with nonce {}", hex::encode(a.nonce)),
                        )
                    };
                };
                if offer.sensor != *sensor || offer.manager != a.manager {
                    return refuse(
                        Code::WrongParty,
                        format!(
                            "offer {} is from {} to {}, not from {} to {sensor}",
                            hex::encode(a.nonce),
                            offer.manager,
                            offer.sensor,
                            a.manager
                        ),
                    );
                }
                if now >= offer.expires_at {
                    return refuse(
                        Code::OfferExpired,
                        format!("offer expired at {}, accepted at {now}", offer.expires_at),
                    );
                }
                self.check_pair(&a.manager, sensor)?;
                self.p.offers.remove(&a.nonce);
                let seq = self.rec.seq;
                let s = self.card_mut(sensor)?;
                s.manager = Some(a.manager.clone());
                s.manager_since = Some(seq);
                s.standalone = false;
                s.state = s.derive_state();
                let m = self.card_mut(&a.manager)?;
                m.sensors.insert(sensor.clone());
                m.standalone = false;
                m.state = m.derive_state();
                self.graph = true;
                Ok(())
            }
            Body::PairingDeclined(e) | Body::PairingCancelled(e) => {
                let Some(offer) = self.p.offers.get(&e.nonce) else {
                    return refuse(
                        Code::UnknownOffer,
                        format!("no open offer with nonce {}", hex::encode(e.nonce)),
                    );
                };
                if offer.manager != ev.device && offer.sensor != ev.device {
                    return refuse(
                        Code::WrongParty,
                        format!(
                            "{} is not a party to offer {}",
                            ev.device,
                            hex::encode(e.nonce)
                        ),
                    );
                }
                self.p.offers.remove(&e.nonce);
                Ok(())
            }
            Body::PairingUnpaired(u) => {
                let a = &ev.device;
                let b = &u.peer;
                let peer = self.card(b)?;
                let card = self.card(a)?;
                let (manager, sensor) = if peer.manager.as_ref() == Some(a) {
                    (a.clone(), b.clone())
                } else if card.manager.as_ref() == Some(b) {
                    (b.clone(), a.clone())
                } else {
                    return refuse(Code::NotPaired, format!("{a} and {b} are not paired"));
                };
                self.unlink(&manager, &sensor);
                Ok(())
            }
            Body::ModeChanged(_) => {
                let card = self.card(&ev.device)?;
                if !card.is_active() {
                    return refuse(
                        Code::NotActivated,
                        format!("device {} is {}", ev.device, card.state.as_str()),
                    );
                }
                if card.manager.is_some() || !card.sensors.is_empty() {
                    return refuse(
                        Code::Paired,
                        format!("device {} is paired: unpair it first", ev.device),
                    );
                }
                let c = self.card_mut(&ev.device)?;
                c.standalone = true;
                c.state = c.derive_state();
                Ok(())
            }
            Body::Action(a) => {
                let day = ev.ts / DAY_MS;
                let per_day = match self.p.stats.get_mut(a.action.as_str()) {
                    Some(m) => m,
                    None => self.p.stats.entry(a.action.clone()).or_default(),
                };
                *per_day.entry(day).or_insert(0) += 1;
                Ok(())
            }
            Body::CommandIssued(c) => {
                let target = self.card(&c.target)?;
                if target.manager.as_ref() != Some(&ev.device) {
                    return refuse(
                        Code::NotManager,
                        format!("{} does not manage {}", ev.device, c.target),
                    );
                }
                if c.expires_at <= now {
                    return refuse(
                        Code::Expired,
                        format!("command expires at {} but arrived at {now}", c.expires_at),
                    );
                }
                self.p.commands.insert(
                    ev.id,
                    IssuedCommand {
                        issuer: ev.device.clone(),
                        target: c.target.clone(),
                        command: c.command,
                        expires_at: c.expires_at,
                        seq: self.rec.seq,
                        completed: None,
                    },
                );
                self.fx.push(Effect::CommandChanged(ev.id));
                Ok(())
            }
            Body::CommandCompleted(c) => {
                let seq = self.rec.seq;
                let Some(cmd) = self.p.commands.get_mut(&c.command_id) else {
                    return refuse(
                        Code::UnknownCommand,
                        format!("no command {} was issued", c.command_id),
                    );
                };
                if let Some((at, _)) = cmd.completed {
                    return refuse(
                        Code::AlreadyCompleted,
                        format!("command {} was completed at record {at}", c.command_id),
                    );
                }
                if cmd.target != ev.device {
                    return refuse(
                        Code::WrongTarget,
                        format!(
                            "command {} targets {}, not {}",
                            c.command_id, cmd.target, ev.device
                        ),
                    );
                }
                if now > cmd.expires_at {
                    return refuse(
                        Code::CommandExpired,
                        format!(
                            "command {} expired at {}, completed at {now}",
                            c.command_id, cmd.expires_at
                        ),
                    );
                }
                cmd.completed = Some((seq, c.outcome));
                self.fx.push(Effect::CommandChanged(c.command_id));
                Ok(())
            }
            Body::Revoked(r) => {
                let d = ev.device.clone();
                let card = self.card(&d)?;
                let manager = card.manager.clone();
                let sensors: Vec<DeviceId> = card.sensors.iter().cloned().collect();
                if let Some(m) = manager {
                    self.unlink(&m, &d);
                }
                for s in sensors {
                    self.unlink(&d, &s);
                }
                self.p.offers.retain(|_, o| o.manager != d && o.sensor != d);
                self.p.requests.retain(|(m, s)| *m != d && *s != d);
                let c = self.card_mut(&d)?;
                c.revoked = Some(RevokedView {
                    by: ev.src.to_string(),
                    at: ev.ts,
                    reason: r.reason.clone(),
                });
                c.state = c.derive_state();
                Ok(())
            }
        }
    }

    fn activate(
        &mut self,
        ev: &Event,
        a: &pairbus_schemas::event::Activated,
    ) -> Result<(), Refusal> {
        let now = self.rec.received_at;
        let card = self.card(&ev.device)?;
        if let Some(prev) = &card.activation {
            return refuse(
                Code::AlreadyActivated,
                format!(
                    "device {} was already activated by {} for `{}` (record {}): second activation refused",
                    ev.device, prev.by, prev.owner, prev.seq
                ),
            );
        }
        let at = ev.ts.max(now);
        if at >= card.qr_expires_at {
            return refuse(
                Code::ExpiredQr,
                format!(
                    "the device's QR code expired at {} (checked at {at})",
                    card.qr_expires_at
                ),
            );
        }
        let keys = self.keys;
        let qr = verify_qr(&a.qr, at / 1000, |k| keys.key_for(k)).map_err(|e| {
            let code = match e {
                QrError::Malformed(_) => Code::MalformedQr,
                QrError::NotFactory(_) | QrError::UnknownFactory(_) => Code::UnknownFactory,
                QrError::Forged => Code::ForgedQr,
                QrError::Expired { .. } => Code::ExpiredQr,
            };
            Refusal {
                code,
                detail: e.to_string(),
            }
        })?;
        let c = &qr.claims;
        if c.device_id != ev.device || c.device_type != card.device_type || c.model != card.model {
            return refuse(
                Code::QrMismatch,
                format!(
                    "QR code names {} ({} {}), the event names {} ({} {})",
                    c.device_id, c.device_type, c.model, ev.device, card.device_type, card.model
                ),
            );
        }
        let activation = ActivationView {
            by: ev.src.to_string(),
            owner: a.owner.clone(),
            seq: self.rec.seq,
            requested_at: ev.ts,
            received_at: now,
            claim_deadline: now.saturating_add(self.cfg.claim_window_ms),
            completed_at: None,
            qr_factory: qr.factory.to_string(),
            token_hash: hex::encode(a.activation_token_hash),
            ip: a.ip.clone(),
            user_agent: a.user_agent.clone(),
            fingerprint: a.fingerprint.clone(),
        };
        let card = self.card_mut(&ev.device)?;
        card.owner = Some(a.owner.clone());
        card.activation = Some(activation);
        card.state = card.derive_state();
        Ok(())
    }

    /// Removes the edge manager → sensor and refreshes both cards.
    fn unlink(&mut self, manager: &DeviceId, sensor: &DeviceId) {
        if let Some(s) = self.p.devices.get_mut(sensor) {
            if s.manager.as_ref() == Some(manager) {
                s.manager = None;
                s.manager_since = None;
                s.state = s.derive_state();
            }
        }
        if let Some(m) = self.p.devices.get_mut(manager) {
            m.sensors.remove(sensor);
            m.state = m.derive_state();
        }
        self.mark(manager);
        self.mark(sensor);
        self.graph = true;
    }
}
