//! The device's local state and its reactions, as pure functions.
//!
//! - [`react`]: what a device answers to an event relayed on its `cmd/` topic (pairing
//!   requests, offers, acceptances, commands, unpairing, revocation), given its state, the
//!   time and a fresh nonce;
//! - [`local`]: what a device's own command (`action`, `setup`, `unpair`, `standalone`,
//!   `command`) turns into, or why it is refused;
//! - [`CommandHandler`]: how the target of a command runs it ([`SimulatedSensor`] by default).
//!
//! The state is kept in the outbox's `state` tree and saved in the same transaction as the
//! events a decision produces. It is the device's own view; the projector's fold over the log
//! is the authority.

use crate::draft::{self, Draft};
use pairbus_schemas::event::{Body, Command, MetaValue, Metadata, Outcome};
use pairbus_schemas::ids::{DeviceId, PrincipalKind};
use pairbus_schemas::Event;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// The key of the device state in the outbox's state tree.
pub const STATE_KEY: &str = "device";

/// A pairing offer this device (as a manager) made and still waits an answer for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOffer {
    /// The sensor asked.
    pub sensor: String,
    /// Expiry, Unix ms.
    pub expires_at: u64,
}

/// What a device knows about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Set up (by its own `setup`, or a relayed `device.setup_completed`).
    pub configured: bool,
    /// The owner given at setup.
    pub owner: Option<String>,
    /// In standalone mode.
    pub standalone: bool,
    /// The device that manages this one.
    pub manager: Option<String>,
    /// The devices this one manages.
    pub sensors: BTreeSet<String>,
    /// Offers made as a manager: nonce (hex) → offer.
    pub offers: BTreeMap<String, OpenOffer>,
    /// Nonces already used: received in an offer (as a sensor) or consumed by an acceptance
    /// (as a manager): nonce (hex) → expiry, Unix ms. Single use.
    pub used_nonces: BTreeMap<String, u64>,
    /// Commands and pairing requests already handled: event id (hex) → expiry, Unix ms
    /// (relays may repeat; each is answered once).
    pub handled_commands: BTreeMap<String, u64>,
    /// Revoked by an operator: the device stops.
    pub revoked: bool,
}

impl DeviceState {
    /// Forgets used nonces and handled commands that expired more than a day before `now_ms`
    /// (a replay of those is refused as expired anyway).
    pub fn prune(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(24 * 3600 * 1000);
        self.used_nonces.retain(|_, exp| *exp >= horizon);
        self.handled_commands.retain(|_, exp| *exp >= horizon);
        self.offers.retain(|_, o| o.expires_at >= horizon);
    }

    fn is_paired_with(&self, peer: &DeviceId) -> bool {
        self.manager.as_deref() == Some(peer.as_str()) || self.sensors.contains(peer.as_str())
    }

    fn forget_peer(&mut self, peer: &str) {
        if self.manager.as_deref() == Some(peer) {
            self.manager = None;
        }
        self.sensors.remove(peer);
    }
}

/// Why a device refuses something (a local command, or a relayed event it will not answer
/// with an event of its own).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// This device has been revoked.
    #[error("this device has been revoked")]
    Revoked,
    /// A command for a device this one does not manage.
    #[error("device {0} is not managed by this device (pair them first)")]
    NotManaged(String),
    /// Unpairing from a device that is not a peer.
    #[error("device {0} is not paired with this device")]
    NotPaired(String),
    /// A pairing request while not configured.
    #[error("this device is not configured yet (run `setup` first)")]
    NotConfigured,
    /// A pairing request naming this device as its own sensor.
    #[error("a device cannot pair with itself")]
    SelfPairing,
    /// The acceptance names a nonce already consumed.
    #[error("pairing nonce {0} was already used")]
    NonceReused(String),
    /// The acceptance names a nonce this device never offered.
    #[error("pairing nonce {0} is unknown")]
    UnknownNonce(String),
    /// The acceptance comes from another device than the one offered.
    #[error("pairing nonce {nonce} was offered to {offered}, not {from}")]
    WrongSensor {
        /// The nonce.
        nonce: String,
        /// The sensor it was offered to.
        offered: String,
        /// The device that answered.
        from: String,
    },
    /// Already managing this sensor.
    #[error("already managing {0}")]
    AlreadyManaging(String),
}

/// Reason codes a sensor declines an offer with (`pairing.declined` `reason`).
pub mod decline {
    /// The offer's expiry has passed.
    pub const EXPIRED: &str = "expired";
    /// The nonce was seen before: a replayed or reused offer.
    pub const NONCE_REUSED: &str = "nonce_reused";
    /// The sensor has not been set up.
    pub const NOT_CONFIGURED: &str = "not_configured";
    /// The sensor already has another manager.
    pub const HAS_MANAGER: &str = "has_manager";
    /// The sensor is already paired with this manager.
    pub const ALREADY_PAIRED: &str = "already_paired";
    /// The sensor manages devices itself (pairings form a one-level tree).
    pub const IS_MANAGER: &str = "is_manager";
    /// A device offered to pair with itself.
    pub const SELF: &str = "self";
    /// The sensor is revoked.
    pub const REVOKED: &str = "revoked";
}

/// What a device does after a relayed event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaction {
    /// Events to publish (through the outbox).
    pub publish: Vec<Draft>,
    /// A human-readable account of the decision, for the log.
    pub note: String,
    /// The event was refused (logged as a warning).
    pub refused: Option<Refusal>,
    /// The device should stop (`shutdown` done, or revoked).
    pub stop: bool,
}

impl Reaction {
    fn note(s: impl Into<String>) -> Self {
        Reaction {
            note: s.into(),
            ..Default::default()
        }
    }
    fn publish(d: Draft, note: impl Into<String>) -> Self {
        Reaction {
            publish: vec![d],
            note: note.into(),
            ..Default::default()
        }
    }
    fn refuse(r: Refusal) -> Self {
        Reaction {
            note: r.to_string(),
            refused: Some(r),
            ..Default::default()
        }
    }
}

/// Runs the commands a manager sends.
pub trait CommandHandler: Send {
    /// Runs `command` with `params`; returns the outcome and its result map.
    fn handle(&mut self, command: Command, params: &Metadata) -> (Outcome, Metadata);
}

/// The built-in handler: a simulated sensor with deterministic answers.
#[derive(Debug, Default, Clone)]
pub struct SimulatedSensor {
    scans: i64,
}

impl CommandHandler for SimulatedSensor {
    fn handle(&mut self, command: Command, params: &Metadata) -> (Outcome, Metadata) {
        let mut r = Metadata::new();
        match command {
            Command::StartScan => {
                self.scans += 1;
                let seconds = match params.get("seconds") {
                    Some(MetaValue::Int(s)) if *s > 0 => *s,
                    Some(_) => {
                        r.insert(
                            "error".into(),
                            MetaValue::Text("`seconds` must be a positive integer".into()),
                        );
                        return (Outcome::Error, r);
                    }
                    None => 5,
                };
                r.insert("scan".into(), MetaValue::Int(self.scans));
                r.insert("seconds".into(), MetaValue::Int(seconds));
                r.insert("found".into(), MetaValue::Int(3));
            }
            Command::Status => {
                r.insert("state".into(), MetaValue::Text("ok".into()));
                r.insert("battery".into(), MetaValue::Int(87));
                r.insert("scans".into(), MetaValue::Int(self.scans));
            }
            Command::Shutdown => {
                r.insert("state".into(), MetaValue::Text("shutting_down".into()));
            }
        }
        (Outcome::Ok, r)
    }
}

fn meta_reason(reason: &str) -> Metadata {
    let mut m = Metadata::new();
    m.insert("reason".into(), MetaValue::Text(reason.into()));
    m
}

/// The device `me` reacts to the relayed event `ev` at `now_ms`; `fresh_nonce` is used if it
/// makes a pairing offer. Updates `state` and says what to publish.
pub fn react(
    state: &mut DeviceState,
    me: &DeviceId,
    ev: &Event,
    now_ms: u64,
    fresh_nonce: [u8; 16],
    handler: &mut dyn CommandHandler,
) -> Reaction {
    let from = ev.device.clone();
    let from_device = ev.src.kind() == PrincipalKind::Device;
    if state.revoked {
        return Reaction::refuse(Refusal::Revoked);
    }
    match &ev.body {
        Body::PairingRequested(r) => {
            if &r.manager != me {
                return Reaction::note(format!("pairing request for {} ignored", r.manager));
            }
            let id_hex = ev.id.to_hex();
            if state.handled_commands.contains_key(&id_hex) {
                return Reaction::note(format!("pairing request {id_hex} already handled"));
            }
            state
                .handled_commands
                .insert(id_hex, now_ms.saturating_add(draft::PAIRING_OFFER_TTL_MS));
            if &r.sensor == me {
                return Reaction::refuse(Refusal::SelfPairing);
            }
            if !state.configured {
                return Reaction::refuse(Refusal::NotConfigured);
            }
            if state.sensors.contains(r.sensor.as_str()) {
                return Reaction::refuse(Refusal::AlreadyManaging(r.sensor.to_string()));
            }
            let d = draft::pairing_offered(me.clone(), r.sensor.clone(), fresh_nonce, now_ms);
            if let Body::PairingOffered(o) = &d.body {
                state.offers.insert(
                    hex::encode(fresh_nonce),
                    OpenOffer {
                        sensor: r.sensor.to_string(),
                        expires_at: o.expires_at,
                    },
                );
            }
            Reaction::publish(d, format!("offering to pair with sensor {}", r.sensor))
        }
        Body::PairingOffered(o) if from_device => {
            if &o.sensor != me {
                return Reaction::note(format!("pairing offer for {} ignored", o.sensor));
            }
            let nonce_hex = hex::encode(o.nonce);
            let decline = |reason: &str| {
                Reaction::publish(
                    draft::pairing_declined(me.clone(), o.nonce, reason),
                    format!("declining offer from {from}: {reason}"),
                )
            };
            if state.used_nonces.contains_key(&nonce_hex) {
                return decline(decline::NONCE_REUSED);
            }
            state.used_nonces.insert(nonce_hex, o.expires_at);
            if o.expires_at <= now_ms {
                return decline(decline::EXPIRED);
            }
            if &from == me {
                return decline(decline::SELF);
            }
            if !state.configured {
                return decline(decline::NOT_CONFIGURED);
            }
            match state.manager.as_deref() {
                Some(m) if m == from.as_str() => return decline(decline::ALREADY_PAIRED),
                Some(_) => return decline(decline::HAS_MANAGER),
                None => {}
            }
            if !state.sensors.is_empty() {
                return decline(decline::IS_MANAGER);
            }
            state.manager = Some(from.to_string());
            state.standalone = false;
            Reaction::publish(
                draft::pairing_accepted(me.clone(), from.clone(), o.nonce),
                format!("accepting manager {from}"),
            )
        }
        Body::PairingAccepted(a) if from_device => {
            if &a.manager != me {
                return Reaction::note(format!("acceptance for {} ignored", a.manager));
            }
            let nonce_hex = hex::encode(a.nonce);
            let Some(offer) = state.offers.get(&nonce_hex).cloned() else {
                return Reaction::refuse(if state.used_nonces.contains_key(&nonce_hex) {
                    Refusal::NonceReused(nonce_hex)
                } else {
                    Refusal::UnknownNonce(nonce_hex)
                });
            };
            if offer.sensor != from.as_str() {
                return Reaction::refuse(Refusal::WrongSensor {
                    nonce: nonce_hex,
                    offered: offer.sensor,
                    from: from.to_string(),
                });
            }
            state.offers.remove(&nonce_hex);
            state.used_nonces.insert(nonce_hex, offer.expires_at);
            if offer.expires_at <= now_ms {
                return Reaction::publish(
                    draft::pairing_cancelled(me.clone(), a.nonce, decline::EXPIRED),
                    format!("acceptance from {from} came after the offer expired: cancelled"),
                );
            }
            state.sensors.insert(from.to_string());
            state.standalone = false;
            Reaction::note(format!("paired: now managing {from}"))
        }
        Body::PairingDeclined(e) if from_device => {
            state.offers.remove(&hex::encode(e.nonce));
            Reaction::note(format!("{from} declined the pairing: {}", e.reason))
        }
        Body::PairingCancelled(e) if from_device => {
            let n = hex::encode(e.nonce);
            state.offers.remove(&n);
            if state.manager.as_deref() == Some(from.as_str()) {
                state.manager = None;
            }
            state.sensors.remove(from.as_str());
            Reaction::note(format!("{from} cancelled the pairing: {}", e.reason))
        }
        Body::PairingUnpaired(u) => {
            if from_device && &u.peer == me {
                state.forget_peer(from.as_str());
                Reaction::note(format!("{from} unpaired from this device"))
            } else if !from_device && &from == me {
                state.forget_peer(u.peer.as_str());
                Reaction::note(format!("operator unpaired this device from {}", u.peer))
            } else if !from_device && &u.peer == me {
                state.forget_peer(from.as_str());
                Reaction::note(format!("operator unpaired this device from {from}"))
            } else {
                Reaction::note("unpairing about other devices ignored")
            }
        }
        Body::CommandIssued(c) if from_device => {
            if &c.target != me {
                return Reaction::note(format!("command for {} ignored", c.target));
            }
            let id_hex = ev.id.to_hex();
            if state.handled_commands.contains_key(&id_hex) {
                return Reaction::note(format!("command {id_hex} already handled"));
            }
            state.handled_commands.insert(id_hex.clone(), c.expires_at);
            let refused = |reason: &str| {
                Reaction::publish(
                    draft::command_completed(
                        me.clone(),
                        ev.id,
                        Outcome::Refused,
                        meta_reason(reason),
                    ),
                    format!("refusing command {} from {from}: {reason}", c.command),
                )
            };
            if state.manager.as_deref() != Some(from.as_str()) {
                return refused("not_my_manager");
            }
            if c.expires_at <= now_ms {
                return refused("expired");
            }
            let (outcome, result) = handler.handle(c.command, &c.params);
            let mut r = Reaction::publish(
                draft::command_completed(me.clone(), ev.id, outcome, result),
                format!("ran {} for {from}: {outcome}", c.command),
            );
            r.stop = c.command == Command::Shutdown && outcome == Outcome::Ok;
            r
        }
        Body::CommandCompleted(c) if from_device => Reaction::note(format!(
            "command {} on {from} completed: {}",
            c.command_id, c.outcome
        )),
        Body::SetupCompleted(s) if &from == me => {
            state.configured = true;
            state.owner = Some(s.owner.clone());
            Reaction::note(format!("set up for owner {}", s.owner))
        }
        Body::ModeChanged(_) if &from == me => {
            state.standalone = true;
            Reaction::note("now in standalone mode")
        }
        Body::Revoked(r) if &from == me => {
            state.revoked = true;
            Reaction {
                note: format!("this device was revoked: {}", r.reason),
                stop: true,
                ..Default::default()
            }
        }
        other => Reaction::note(format!("{} from {} ignored", other.event_type(), ev.src)),
    }
}

/// A command the device runs on its own behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalCommand {
    /// Record an action.
    Action(Draft),
    /// Prove possession of the key after activation, and become configured.
    Setup(Draft),
    /// Unpair from a peer.
    Unpair(DeviceId),
    /// Leave every pairing and go standalone.
    Standalone,
    /// Send a command to a managed device.
    Command(Draft),
}

/// What the device's own command turns into, given its state (which is updated as if the
/// events were committed: the device's view of itself).
pub fn local(
    state: &mut DeviceState,
    me: &DeviceId,
    cmd: LocalCommand,
) -> Result<Vec<Draft>, Refusal> {
    if state.revoked {
        return Err(Refusal::Revoked);
    }
    match cmd {
        LocalCommand::Action(d) => Ok(vec![d]),
        LocalCommand::Setup(d) => {
            if let Body::SetupCompleted(s) = &d.body {
                state.configured = true;
                state.owner = Some(s.owner.clone());
            }
            Ok(vec![d])
        }
        LocalCommand::Unpair(peer) => {
            if !state.is_paired_with(&peer) {
                return Err(Refusal::NotPaired(peer.to_string()));
            }
            state.forget_peer(peer.as_str());
            Ok(vec![draft::unpaired(me.clone(), peer)])
        }
        LocalCommand::Standalone => {
            let mut out = Vec::new();
            let peers: Vec<String> = state
                .manager
                .iter()
                .chain(state.sensors.iter())
                .cloned()
                .collect();
            for p in peers {
                if let Ok(p) = DeviceId::parse(&p) {
                    out.push(draft::unpaired(me.clone(), p));
                }
            }
            state.manager = None;
            state.sensors.clear();
            state.offers.clear();
            state.standalone = true;
            out.push(draft::standalone(me.clone()));
            Ok(out)
        }
        LocalCommand::Command(d) => {
            if let Body::CommandIssued(c) = &d.body {
                if !state.sensors.contains(c.target.as_str()) {
                    return Err(Refusal::NotManaged(c.target.to_string()));
                }
            }
            Ok(vec![d])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::event::Role;
    use pairbus_schemas::ids::{EventId, Kid};

    const NOW: u64 = 1_800_000_000_000;

    fn d(n: u8) -> DeviceId {
        DeviceId::parse(&format!("{:016x}", n)).unwrap()
    }

    fn from(draft: Draft, src: Kid, id: u8) -> Event {
        draft.into_event(src, EventId([id; 16]), 1, NOW)
    }

    fn op() -> Kid {
        Kid::parse("operator:admin").unwrap()
    }

    fn configured() -> DeviceState {
        DeviceState {
            configured: true,
            ..Default::default()
        }
    }

    fn run(state: &mut DeviceState, me: &DeviceId, ev: &Event) -> Reaction {
        react(
            state,
            me,
            ev,
            NOW,
            [0xaa; 16],
            &mut SimulatedSensor::default(),
        )
    }

    fn declined_reason(r: &Reaction) -> Option<String> {
        match r.publish.first().map(|d| &d.body) {
            Some(Body::PairingDeclined(e)) => Some(e.reason.clone()),
            _ => None,
        }
    }

    #[test]
    fn full_handshake_manager_and_sensor() {
        let (m, s) = (d(1), d(2));
        let mut ms = configured();
        let mut ss = configured();
        // Operator asks the manager.
        let req = from(draft::pairing_requested(m.clone(), s.clone()), op(), 1);
        let r = run(&mut ms, &m, &req);
        let offer_draft = r.publish[0].clone();
        let Body::PairingOffered(o) = &offer_draft.body else {
            panic!("{r:?}")
        };
        assert_eq!((o.nonce, o.expires_at), ([0xaa; 16], NOW + 600_000));
        // The sensor accepts.
        let offer = from(offer_draft, m.kid(), 2);
        let r = run(&mut ss, &s, &offer);
        let Body::PairingAccepted(a) = &r.publish[0].body else {
            panic!("{r:?}")
        };
        assert_eq!(a.manager, m);
        assert_eq!(ss.manager.as_deref(), Some(m.as_str()));
        // The manager records the pairing.
        // The same request relayed again makes no second offer.
        assert!(run(&mut ms, &m, &req).publish.is_empty());
        let acc = from(r.publish[0].clone(), s.kid(), 3);
        let r = run(&mut ms, &m, &acc);
        assert!(r.publish.is_empty() && r.refused.is_none(), "{r:?}");
        assert!(ms.sensors.contains(s.as_str()));
        assert!(ms.offers.is_empty());
        // The same acceptance again: the nonce is single-use.
        let r = run(&mut ms, &m, &acc);
        assert!(matches!(r.refused, Some(Refusal::NonceReused(_))), "{r:?}");
        // The same offer again: declined as reused.
        let r = run(&mut ss, &s, &offer);
        assert_eq!(declined_reason(&r).as_deref(), Some(decline::NONCE_REUSED));
    }

    #[test]
    fn sensor_declines_expired_unconfigured_and_managed() {
        let (m, s, other) = (d(1), d(2), d(3));
        let offer = |nonce: u8, exp: u64| {
            let mut dr = draft::pairing_offered(m.clone(), s.clone(), [nonce; 16], 0);
            if let Body::PairingOffered(o) = &mut dr.body {
                o.expires_at = exp;
            }
            from(dr, m.kid(), nonce)
        };
        let mut st = configured();
        assert_eq!(
            declined_reason(&run(&mut st, &s, &offer(1, NOW))).as_deref(),
            Some(decline::EXPIRED)
        );
        let mut st = DeviceState::default();
        assert_eq!(
            declined_reason(&run(&mut st, &s, &offer(2, NOW + 1))).as_deref(),
            Some(decline::NOT_CONFIGURED)
        );
        let mut st = configured();
        st.manager = Some(other.to_string());
        assert_eq!(
            declined_reason(&run(&mut st, &s, &offer(3, NOW + 1))).as_deref(),
            Some(decline::HAS_MANAGER)
        );
        st.manager = Some(m.to_string());
        assert_eq!(
            declined_reason(&run(&mut st, &s, &offer(4, NOW + 1))).as_deref(),
            Some(decline::ALREADY_PAIRED)
        );
        // An offer for someone else is ignored without an event.
        let mut st = configured();
        assert!(run(&mut st, &other, &offer(5, NOW + 1)).publish.is_empty());
    }

    #[test]
    fn manager_cancels_a_late_acceptance_and_refuses_unknown_nonces() {
        let (m, s) = (d(1), d(2));
        let mut ms = configured();
        ms.offers.insert(
            hex::encode([7u8; 16]),
            OpenOffer {
                sensor: s.to_string(),
                expires_at: NOW,
            },
        );
        let acc = from(
            draft::pairing_accepted(s.clone(), m.clone(), [7; 16]),
            s.kid(),
            1,
        );
        let r = run(&mut ms, &m, &acc);
        assert!(matches!(&r.publish[0].body, Body::PairingCancelled(e) if e.reason == "expired"));
        assert!(ms.sensors.is_empty());
        let acc = from(
            draft::pairing_accepted(s.clone(), m.clone(), [8; 16]),
            s.kid(),
            2,
        );
        assert!(matches!(
            run(&mut ms, &m, &acc).refused,
            Some(Refusal::UnknownNonce(_))
        ));
        // An unconfigured manager does not offer.
        let mut fresh = DeviceState::default();
        let req = from(draft::pairing_requested(m.clone(), s.clone()), op(), 3);
        assert_eq!(
            run(&mut fresh, &m, &req).refused,
            Some(Refusal::NotConfigured)
        );
    }

    #[test]
    fn commands_run_only_for_the_manager_in_time_and_once() {
        let (m, s, intruder) = (d(1), d(2), d(3));
        let mut ss = configured();
        ss.manager = Some(m.to_string());
        let cmd = |src: &DeviceId, c: Command, ttl: u64, id: u8| {
            from(
                draft::command_issued(src.clone(), s.clone(), c, Metadata::new(), NOW, ttl),
                src.kid(),
                id,
            )
        };
        let outcome = |r: &Reaction| match &r.publish[0].body {
            Body::CommandCompleted(c) => (c.outcome, c.result.get("reason").cloned()),
            _ => panic!("{r:?}"),
        };
        let r = run(&mut ss, &s, &cmd(&m, Command::Status, 1000, 1));
        assert_eq!(outcome(&r).0, Outcome::Ok);
        assert!(!r.stop);
        // Repeated relay of the same command: handled once.
        assert!(run(&mut ss, &s, &cmd(&m, Command::Status, 1000, 1))
            .publish
            .is_empty());
        let r = run(&mut ss, &s, &cmd(&intruder, Command::Status, 1000, 2));
        assert_eq!(
            outcome(&r),
            (
                Outcome::Refused,
                Some(MetaValue::Text("not_my_manager".into()))
            )
        );
        let r = run(&mut ss, &s, &cmd(&m, Command::StartScan, 0, 3));
        assert_eq!(
            outcome(&r),
            (Outcome::Refused, Some(MetaValue::Text("expired".into())))
        );
        let r = run(&mut ss, &s, &cmd(&m, Command::Shutdown, 1000, 4));
        assert!(r.stop);
    }

    #[test]
    fn revocation_unpairing_and_local_commands() {
        let (me, peer) = (d(1), d(2));
        let mut st = configured();
        st.sensors.insert(peer.to_string());
        // Local: commands only to managed devices.
        let c = draft::command_issued(me.clone(), d(9), Command::Status, Metadata::new(), NOW, 1);
        assert_eq!(
            local(&mut st, &me, LocalCommand::Command(c)),
            Err(Refusal::NotManaged(d(9).to_string()))
        );
        // The peer unpairs: forgotten.
        let ev = from(draft::unpaired(peer.clone(), me.clone()), peer.kid(), 1);
        run(&mut st, &me, &ev);
        assert!(st.sensors.is_empty());
        assert!(local(&mut st, &me, LocalCommand::Unpair(peer.clone())).is_err());
        // Standalone unpairs from everyone first.
        st.manager = Some(peer.to_string());
        let out = local(&mut st, &me, LocalCommand::Standalone).unwrap();
        assert_eq!(out.len(), 2);
        assert!(st.standalone && st.manager.is_none());
        // Setup configures.
        let mut fresh = DeviceState::default();
        local(
            &mut fresh,
            &me,
            LocalCommand::Setup(draft::setup_completed(
                me.clone(),
                "ann".into(),
                Role::Owner,
            )),
        )
        .unwrap();
        assert!(fresh.configured);
        // Revocation stops the device and refuses everything after.
        let ev = from(draft::revoked(me.clone(), "stolen".into()), op(), 2);
        assert!(run(&mut st, &me, &ev).stop);
        assert_eq!(
            local(&mut st, &me, LocalCommand::Standalone),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn pruning_keeps_recent_nonces() {
        let mut st = DeviceState::default();
        st.used_nonces.insert("old".into(), 0);
        st.used_nonces.insert("new".into(), NOW);
        st.prune(NOW);
        assert!(st.used_nonces.contains_key("new") && !st.used_nonces.contains_key("old"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// An offer from manager `m` with nonce `n`, expiring `dt` ms from now (may be past).
            Offer { m: u8, n: u8, dt: i64 },
            /// Manager `m` unpairs.
            Unpair { m: u8 },
            /// A command from `m` with id `id`.
            Cmd { m: u8, id: u8 },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (1u8..5, 0u8..8, -5i64..5).prop_map(|(m, n, dt)| Step::Offer {
                    m,
                    n,
                    dt: dt * 1000
                }),
                (1u8..5).prop_map(|m| Step::Unpair { m }),
                (1u8..5, 0u8..6).prop_map(|(m, id)| Step::Cmd { m, id }),
            ]
        }

        proptest! {
            /// Whatever a sensor is sent: it accepts each nonce at most once, never an expired
            /// offer, never while it has a manager; it runs each command at most once and only
            /// for its manager of the moment.
            #[test]
            fn sensor_invariants(steps in proptest::collection::vec(step(), 1..40)) {
                let me = d(9);
                let mut st = configured();
                let mut accepted = std::collections::HashSet::new();
                let mut ran = std::collections::HashSet::new();
                for (i, s) in steps.into_iter().enumerate() {
                    let now = NOW + i as u64;
                    match s {
                        Step::Offer { m, n, dt } => {
                            let had = st.manager.clone();
                            let mut dr = draft::pairing_offered(d(m), me.clone(), [n; 16], 0);
                            let exp = (now as i64 + dt) as u64;
                            if let Body::PairingOffered(o) = &mut dr.body { o.expires_at = exp; }
                            let ev = dr.into_event(d(m).kid(), EventId([i as u8; 16]), 1, now);
                            let r = react(&mut st, &me, &ev, now, [0; 16], &mut SimulatedSensor::default());
                            prop_assert_eq!(r.publish.len(), 1);
                            if let Body::PairingAccepted(a) = &r.publish[0].body {
                                prop_assert!(accepted.insert(a.nonce), "nonce accepted twice");
                                prop_assert!(exp > now, "expired offer accepted");
                                prop_assert!(had.is_none(), "accepted while managed");
                                prop_assert_eq!(st.manager.clone(), Some(d(m).to_string()));
                            } else {
                                prop_assert_eq!(&st.manager, &had);
                            }
                        }
                        Step::Unpair { m } => {
                            let ev = draft::unpaired(d(m), me.clone()).into_event(d(m).kid(), EventId([i as u8; 16]), 1, now);
                            react(&mut st, &me, &ev, now, [0; 16], &mut SimulatedSensor::default());
                            prop_assert_ne!(st.manager.clone(), Some(d(m).to_string()));
                        }
                        Step::Cmd { m, id } => {
                            let manager = st.manager.clone();
                            let ev = draft::command_issued(d(m), me.clone(), Command::Status, Metadata::new(), now, 1000)
                                .into_event(d(m).kid(), EventId([100 + id; 16]), 1, now);
                            let r = react(&mut st, &me, &ev, now, [0; 16], &mut SimulatedSensor::default());
                            if let Some(Body::CommandCompleted(c)) = r.publish.first().map(|p| &p.body) {
                                if c.outcome == Outcome::Ok {
                                    prop_assert_eq!(manager.clone(), Some(d(m).to_string()));
                                    prop_assert!(ran.insert(id), "command ran twice");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
