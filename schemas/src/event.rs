//! Typed events of the v1 catalogue and their deterministic CBOR payload.
//!
//! The payload is a closed map `{v, id, type, src, seq, ts, device, body}`; `body` is a closed
//! map whose fields depend on `type`. Times are Unix milliseconds. `schemas/events.cddl` is the
//! normative schema; this module is its implementation.

use crate::cbor::{decode_strict, encode_canonical};
use crate::fields::{bytes, map, text, uint, DecodeError, Fields};
use crate::ids::{DeviceId, EventId, Kid, PrincipalKind};
use crate::keys::device_id_from_serial_hash;
use ciborium::value::Value;
use std::collections::BTreeMap;
use std::fmt;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;
/// Default size limit of a payload or envelope, 64 KiB.
pub const MAX_EVENT_SIZE: usize = 64 * 1024;

/// Every event type of the v1 catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// `device.manufactured`
    Manufactured,
    /// `device.activated`
    Activated,
    /// `device.setup_completed`
    SetupCompleted,
    /// `pairing.requested`
    PairingRequested,
    /// `pairing.offered`
    PairingOffered,
    /// `pairing.accepted`
    PairingAccepted,
    /// `pairing.declined`
    PairingDeclined,
    /// `pairing.cancelled`
    PairingCancelled,
    /// `pairing.unpaired`
    PairingUnpaired,
    /// `device.mode_changed`
    ModeChanged,
    /// `device.action`
    Action,
    /// `command.issued`
    CommandIssued,
    /// `command.completed`
    CommandCompleted,
    /// `device.revoked`
    Revoked,
}

impl EventType {
    /// All types, in catalogue order.
    pub const ALL: [EventType; 14] = [
        EventType::Manufactured,
        EventType::Activated,
        EventType::SetupCompleted,
        EventType::PairingRequested,
        EventType::PairingOffered,
        EventType::PairingAccepted,
        EventType::PairingDeclined,
        EventType::PairingCancelled,
        EventType::PairingUnpaired,
        EventType::ModeChanged,
        EventType::Action,
        EventType::CommandIssued,
        EventType::CommandCompleted,
        EventType::Revoked,
    ];

    /// The type's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Manufactured => "device.manufactured",
            EventType::Activated => "device.activated",
            EventType::SetupCompleted => "device.setup_completed",
            EventType::PairingRequested => "pairing.requested",
            EventType::PairingOffered => "pairing.offered",
            EventType::PairingAccepted => "pairing.accepted",
            EventType::PairingDeclined => "pairing.declined",
            EventType::PairingCancelled => "pairing.cancelled",
            EventType::PairingUnpaired => "pairing.unpaired",
            EventType::ModeChanged => "device.mode_changed",
            EventType::Action => "device.action",
            EventType::CommandIssued => "command.issued",
            EventType::CommandCompleted => "command.completed",
            EventType::Revoked => "device.revoked",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The kinds of principal allowed to sign this type (DESIGN.md, event catalogue).
    pub fn signers(self) -> &'static [PrincipalKind] {
        use PrincipalKind::*;
        match self {
            EventType::Manufactured => &[Factory],
            EventType::Activated | EventType::PairingRequested | EventType::Revoked => &[Operator],
            EventType::SetupCompleted | EventType::PairingUnpaired | EventType::ModeChanged => {
                &[Operator, Device]
            }
            EventType::PairingOffered
            | EventType::PairingAccepted
            | EventType::PairingDeclined
            | EventType::PairingCancelled
            | EventType::Action
            | EventType::CommandIssued
            | EventType::CommandCompleted => &[Device],
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One component of a device, from manufacture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// What it is (`camera`, `battery`, …).
    pub kind: String,
    /// Its specification (`12MP`, `4000mAh`, …).
    pub spec: String,
}

/// A scalar in a metadata, params or result map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaValue {
    /// Text.
    Text(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// A free-form map of named scalars (action metadata, command params and results).
pub type Metadata = BTreeMap<String, MetaValue>;

/// The role a person takes on a device at setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `owner`
    Owner,
    /// `admin`
    Admin,
}

/// Device-to-device commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `start_scan`
    StartScan,
    /// `status`
    Status,
    /// `shutdown`
    Shutdown,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`: done.
    Ok,
    /// `error`: tried and failed.
    Error,
    /// `refused`: the target would not run it (expired, not its manager…).
    Refused,
}

macro_rules! wire_enum {
    ($t:ty, $what:literal, $($v:path => $s:literal),+ $(,)?) => {
        impl $t {
            /// The value's name on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($v => $s),+ }
            }
            /// Parses a wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($v),)+ _ => None }
            }
            fn expected() -> String {
                concat!("must be one of: ", $what).to_owned()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(Role, "owner, admin", Role::Owner => "owner", Role::Admin => "admin");
wire_enum!(Command, "start_scan, status, shutdown",
    Command::StartScan => "start_scan", Command::Status => "status", Command::Shutdown => "shutdown");
wire_enum!(Outcome, "ok, error, refused",
    Outcome::Ok => "ok", Outcome::Error => "error", Outcome::Refused => "refused");

/// `device.manufactured`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manufactured {
    /// Keyed hash of the serial number (the serial itself is never stored).
    pub serial_hash: [u8; 32],
    /// Device type (`phone`, `sensor`, …).
    pub device_type: String,
    /// Model name.
    pub model: String,
    /// Manufacturer name.
    pub manufacturer: String,
    /// Display name.
    pub name: String,
    /// Components fitted at the factory.
    pub components: Vec<Component>,
    /// When the QR code stops being accepted, Unix ms.
    pub qr_expires_at: u64,
}

/// `device.activated`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    /// The scanned QR text (`PB1:…`), itself factory-signed.
    pub qr: String,
    /// Who the device now belongs to.
    pub owner: String,
    /// SHA-256 of the activation token handed to the owner (the token never travels).
    pub activation_token_hash: [u8; 32],
    /// Where the scan came from, if known.
    pub ip: Option<String>,
    /// The scanning client's user agent, if known.
    pub user_agent: Option<String>,
    /// A client fingerprint, if known.
    pub fingerprint: Option<String>,
}

/// `device.setup_completed`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupCompleted {
    /// The owner confirmed at setup.
    pub owner: String,
    /// The role of the person setting up.
    pub role: Role,
}

/// `pairing.requested`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRequested {
    /// The device asked to manage.
    pub manager: DeviceId,
    /// The device to be managed.
    pub sensor: DeviceId,
}

/// `pairing.offered`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingOffered {
    /// The sensor the manager offers to pair with.
    pub sensor: DeviceId,
    /// Fresh random nonce naming this handshake.
    pub nonce: [u8; 16],
    /// When the offer lapses, Unix ms.
    pub expires_at: u64,
}

/// `pairing.accepted`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingAccepted {
    /// The manager whose offer is accepted.
    pub manager: DeviceId,
    /// The offer's nonce.
    pub nonce: [u8; 16],
}

/// `pairing.declined` and `pairing.cancelled`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingEnded {
    /// The offer's nonce.
    pub nonce: [u8; 16],
    /// Why.
    pub reason: String,
}

/// `pairing.unpaired`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpaired {
    /// The other device of the pair.
    pub peer: DeviceId,
}

/// `device.mode_changed` (v1 knows one mode, `standalone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeChanged;

/// `device.action`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// What was done (`voice_recording`, `qr_scan`, `login`, `file_upload`, …).
    pub action: String,
    /// Its metadata.
    pub metadata: Metadata,
    /// Where from, if known.
    pub ip: Option<String>,
    /// Which client, if known.
    pub user_agent: Option<String>,
}

/// `command.issued`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandIssued {
    /// The managed device that should run it.
    pub target: DeviceId,
    /// The command.
    pub command: Command,
    /// Its parameters.
    pub params: Metadata,
    /// When it lapses, Unix ms.
    pub expires_at: u64,
}

/// `command.completed`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandCompleted {
    /// The id of the `command.issued` event.
    pub command_id: EventId,
    /// How it ended.
    pub outcome: Outcome,
    /// What it produced.
    pub result: Metadata,
}

/// `device.revoked`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Why.
    pub reason: String,
}

/// The per-type part of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Body {
    Manufactured(Manufactured),
    Activated(Activated),
    SetupCompleted(SetupCompleted),
    PairingRequested(PairingRequested),
    PairingOffered(PairingOffered),
    PairingAccepted(PairingAccepted),
    PairingDeclined(PairingEnded),
    PairingCancelled(PairingEnded),
    PairingUnpaired(Unpaired),
    ModeChanged(ModeChanged),
    Action(Action),
    CommandIssued(CommandIssued),
    CommandCompleted(CommandCompleted),
    Revoked(Revoked),
}

/// A pairbus event: the common header and a typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// UUIDv7, the idempotency key.
    pub id: EventId,
    /// The principal that made it; equals the envelope's kid.
    pub src: Kid,
    /// Per-principal counter from 1.
    pub seq: u64,
    /// When the principal made it, Unix ms.
    pub ts: u64,
    /// The device the event is about.
    pub device: DeviceId,
    /// The per-type fields.
    pub body: Body,
}

/// Why an event's signer may not make it (checked after the MAC).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// The kind of principal may not sign this type.
    #[error("a {kind} may not sign `{event_type}`")]
    KindNotAllowed {
        /// The signer's kind.
        kind: PrincipalKind,
        /// The event type.
        event_type: EventType,
    },
    /// A device signed an event about another device.
    #[error("device {signer} may only sign events about itself, not about {device}")]
    NotItself {
        /// The signing device.
        signer: DeviceId,
        /// The event's `device`.
        device: DeviceId,
    },
    /// `device.manufactured` names a device id that does not match its serial hash.
    #[error("device {device} does not match the serial hash (expected {expected})")]
    SerialMismatch {
        /// The event's `device`.
        device: DeviceId,
        /// The id derived from the serial hash.
        expected: DeviceId,
    },
}

impl Body {
    /// The event type of this body.
    pub fn event_type(&self) -> EventType {
        match self {
            Body::Manufactured(_) => EventType::Manufactured,
            Body::Activated(_) => EventType::Activated,
            Body::SetupCompleted(_) => EventType::SetupCompleted,
            Body::PairingRequested(_) => EventType::PairingRequested,
            Body::PairingOffered(_) => EventType::PairingOffered,
            Body::PairingAccepted(_) => EventType::PairingAccepted,
            Body::PairingDeclined(_) => EventType::PairingDeclined,
            Body::PairingCancelled(_) => EventType::PairingCancelled,
            Body::PairingUnpaired(_) => EventType::PairingUnpaired,
            Body::ModeChanged(_) => EventType::ModeChanged,
            Body::Action(_) => EventType::Action,
            Body::CommandIssued(_) => EventType::CommandIssued,
            Body::CommandCompleted(_) => EventType::CommandCompleted,
            Body::Revoked(_) => EventType::Revoked,
        }
    }

    fn to_value(&self) -> Value {
        let opt = |entries: &mut Vec<(&'static str, Value)>, k, v: &Option<String>| {
            if let Some(v) = v {
                entries.push((k, text(v)));
            }
        };
        match self {
            Body::Manufactured(b) => map(vec![
                ("serial_hash", bytes(&b.serial_hash)),
                ("device_type", text(&b.device_type)),
                ("model", text(&b.model)),
                ("manufacturer", text(&b.manufacturer)),
                ("name", text(&b.name)),
                (
                    "components",
                    Value::Array(
                        b.components
                            .iter()
                            .map(|c| map(vec![("kind", text(&c.kind)), ("spec", text(&c.spec))]))
                            .collect(),
                    ),
                ),
                ("qr_expires_at", uint(b.qr_expires_at)),
            ]),
            Body::Activated(b) => {
                let mut e = vec![
                    ("qr", text(&b.qr)),
                    ("owner", text(&b.owner)),
                    ("activation_token_hash", bytes(&b.activation_token_hash)),
                ];
                opt(&mut e, "ip", &b.ip);
                opt(&mut e, "user_agent", &b.user_agent);
                opt(&mut e, "fingerprint", &b.fingerprint);
                map(e)
            }
            Body::SetupCompleted(b) => map(vec![
                ("owner", text(&b.owner)),
                ("role", text(b.role.as_str())),
            ]),
            Body::PairingRequested(b) => map(vec![
                ("manager", text(b.manager.as_str())),
                ("sensor", text(b.sensor.as_str())),
            ]),
            Body::PairingOffered(b) => map(vec![
                ("sensor", text(b.sensor.as_str())),
                ("nonce", bytes(&b.nonce)),
                ("expires_at", uint(b.expires_at)),
            ]),
            Body::PairingAccepted(b) => map(vec![
                ("manager", text(b.manager.as_str())),
                ("nonce", bytes(&b.nonce)),
            ]),
            Body::PairingDeclined(b) | Body::PairingCancelled(b) => map(vec![
                ("nonce", bytes(&b.nonce)),
                ("reason", text(&b.reason)),
            ]),
            Body::PairingUnpaired(b) => map(vec![("peer", text(b.peer.as_str()))]),
            Body::ModeChanged(ModeChanged) => map(vec![("mode", text("standalone"))]),
            Body::Action(b) => {
                let mut e = vec![
                    ("action", text(&b.action)),
                    ("metadata", metadata_value(&b.metadata)),
                ];
                opt(&mut e, "ip", &b.ip);
                opt(&mut e, "user_agent", &b.user_agent);
                map(e)
            }
            Body::CommandIssued(b) => map(vec![
                ("target", text(b.target.as_str())),
                ("command", text(b.command.as_str())),
                ("params", metadata_value(&b.params)),
                ("expires_at", uint(b.expires_at)),
            ]),
            Body::CommandCompleted(b) => map(vec![
                ("command_id", bytes(&b.command_id.0)),
                ("outcome", text(b.outcome.as_str())),
                ("result", metadata_value(&b.result)),
            ]),
            Body::Revoked(b) => map(vec![("reason", text(&b.reason))]),
        }
    }

    fn from_value(t: EventType, value: Value) -> Result<Self, DecodeError> {
        let mut f = Fields::new(value, "body")?;
        let body = match t {
            EventType::Manufactured => Body::Manufactured(Manufactured {
                serial_hash: f.bytes_n("serial_hash")?,
                device_type: f.text("device_type")?,
                model: f.text("model")?,
                manufacturer: f.text("manufacturer")?,
                name: f.text("name")?,
                components: f
                    .array("components")?
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let mut c = Fields::new(v, &format!("body.components[{i}]"))?;
                        let comp = Component {
                            kind: c.text("kind")?,
                            spec: c.text("spec")?,
                        };
                        c.finish()?;
                        Ok(comp)
                    })
                    .collect::<Result<_, DecodeError>>()?,
                qr_expires_at: f.uint("qr_expires_at")?,
            }),
            EventType::Activated => Body::Activated(Activated {
                qr: f.text("qr")?,
                owner: f.text("owner")?,
                activation_token_hash: f.bytes_n("activation_token_hash")?,
                ip: f.opt_text("ip")?,
                user_agent: f.opt_text("user_agent")?,
                fingerprint: f.opt_text("fingerprint")?,
            }),
            EventType::SetupCompleted => Body::SetupCompleted(SetupCompleted {
                owner: f.text("owner")?,
                role: wire(&mut f, "role", Role::parse, Role::expected)?,
            }),
            EventType::PairingRequested => Body::PairingRequested(PairingRequested {
                manager: device_field(&mut f, "manager")?,
                sensor: device_field(&mut f, "sensor")?,
            }),
            EventType::PairingOffered => Body::PairingOffered(PairingOffered {
                sensor: device_field(&mut f, "sensor")?,
                nonce: f.bytes_n("nonce")?,
                expires_at: f.uint("expires_at")?,
            }),
            EventType::PairingAccepted => Body::PairingAccepted(PairingAccepted {
                manager: device_field(&mut f, "manager")?,
                nonce: f.bytes_n("nonce")?,
            }),
            EventType::PairingDeclined | EventType::PairingCancelled => {
                let b = PairingEnded {
                    nonce: f.bytes_n("nonce")?,
                    reason: f.text("reason")?,
                };
                if t == EventType::PairingDeclined {
                    Body::PairingDeclined(b)
                } else {
                    Body::PairingCancelled(b)
                }
            }
            EventType::PairingUnpaired => Body::PairingUnpaired(Unpaired {
                peer: device_field(&mut f, "peer")?,
            }),
            EventType::ModeChanged => {
                let mode = f.text("mode")?;
                if mode != "standalone" {
                    return Err(DecodeError::invalid("body.mode", "must be `standalone`"));
                }
                Body::ModeChanged(ModeChanged)
            }
            EventType::Action => Body::Action(Action {
                action: f.text("action")?,
                metadata: metadata_field(&mut f, "metadata")?,
                ip: f.opt_text("ip")?,
                user_agent: f.opt_text("user_agent")?,
            }),
            EventType::CommandIssued => Body::CommandIssued(CommandIssued {
                target: device_field(&mut f, "target")?,
                command: wire(&mut f, "command", Command::parse, Command::expected)?,
                params: metadata_field(&mut f, "params")?,
                expires_at: f.uint("expires_at")?,
            }),
            EventType::CommandCompleted => Body::CommandCompleted(CommandCompleted {
                command_id: EventId(f.bytes_n("command_id")?),
                outcome: wire(&mut f, "outcome", Outcome::parse, Outcome::expected)?,
                result: metadata_field(&mut f, "result")?,
            }),
            EventType::Revoked => Body::Revoked(Revoked {
                reason: f.text("reason")?,
            }),
        };
        f.finish()?;
        Ok(body)
    }
}

fn wire<T>(
    f: &mut Fields,
    name: &str,
    parse: fn(&str) -> Option<T>,
    expected: fn() -> String,
) -> Result<T, DecodeError> {
    let s = f.text(name)?;
    parse(&s).ok_or_else(|| DecodeError::invalid(f.path_of(name), expected()))
}

fn device_field(f: &mut Fields, name: &str) -> Result<DeviceId, DecodeError> {
    let s = f.text(name)?;
    DeviceId::parse(&s).map_err(|e| DecodeError::invalid(f.path_of(name), e.to_string()))
}

fn metadata_value(m: &Metadata) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| {
                let v = match v {
                    MetaValue::Text(s) => text(s),
                    MetaValue::Int(i) => Value::Integer((*i).into()),
                    MetaValue::Bool(b) => Value::Bool(*b),
                };
                (text(k), v)
            })
            .collect(),
    )
}

fn metadata_field(f: &mut Fields, name: &str) -> Result<Metadata, DecodeError> {
    let path = f.path_of(name);
    let Value::Map(entries) = f.required(name)? else {
        return Err(DecodeError::WrongType {
            field: path,
            expected: "a map of text keys to text, integer or boolean",
        });
    };
    let mut out = Metadata::new();
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(DecodeError::WrongType {
                field: path,
                expected: "a map with text keys",
            });
        };
        let v = match v {
            Value::Text(s) => MetaValue::Text(s),
            Value::Bool(b) => MetaValue::Bool(b),
            Value::Integer(i) => MetaValue::Int(i64::try_from(i).map_err(|_| {
                DecodeError::invalid(
                    format!("{path}.{k}"),
                    "integer outside the 64-bit signed range",
                )
            })?),
            _ => {
                return Err(DecodeError::WrongType {
                    field: format!("{path}.{k}"),
                    expected: "text, an integer or a boolean",
                })
            }
        };
        // The strict decoder has already refused duplicate keys.
        out.insert(k, v);
    }
    Ok(out)
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// The payload as a CBOR value (maps not yet sorted).
    pub fn to_value(&self) -> Value {
        map(vec![
            ("v", uint(SCHEMA_VERSION)),
            ("id", bytes(&self.id.0)),
            ("type", text(self.event_type().as_str())),
            ("src", text(&self.src.to_string())),
            ("seq", uint(self.seq)),
            ("ts", uint(self.ts)),
            ("device", text(self.device.as_str())),
            ("body", self.body.to_value()),
        ])
    }

    /// The deterministic CBOR payload (RFC 8949 §4.2.1).
    pub fn encode(&self) -> Vec<u8> {
        encode_canonical(self.to_value()).expect("event maps have no duplicate keys")
    }

    /// Strictly decodes a payload of at most `limit` bytes.
    ///
    /// Fast accept, slow refuse: a payload in the one accepted encoding whose fields are all
    /// valid is decoded in one pass over its `ciborium-ll` heads (`fast_event`); anything else
    /// goes through the strict `Value` decoder and the field checks, which produce every error.
    /// Both give the same `Result` on every input ([`Event::decode_reference`] is the
    /// reference in the differential proptests and the fuzz target `fast_paths`).
    pub fn decode(payload: &[u8], limit: usize) -> Result<Self, DecodeError> {
        if payload.len() <= limit {
            if let Some(event) = crate::fast_event::decode(payload) {
                return Ok(event);
            }
        }
        Self::from_value(decode_strict(payload, limit)?)
    }

    /// [`Event::decode`] over [`crate::cbor::decode_strict_reference`]: the reference the fast
    /// paths are compared with in the tests and fuzz targets.
    #[doc(hidden)]
    pub fn decode_reference(payload: &[u8], limit: usize) -> Result<Self, DecodeError> {
        Self::from_value(crate::cbor::decode_strict_reference(payload, limit)?)
    }

    fn from_value(value: Value) -> Result<Self, DecodeError> {
        let mut f = Fields::new(value, "")?;
        let v = f.uint("v")?;
        if v != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let type_name = f.text("type")?;
        let t = EventType::parse(&type_name).ok_or(DecodeError::UnknownType(type_name))?;
        let event = Event {
            id: EventId(f.bytes_n("id")?),
            src: {
                let s = f.text("src")?;
                Kid::parse(&s).map_err(|e| DecodeError::invalid("src", e.to_string()))?
            },
            seq: f.uint("seq")?,
            ts: f.uint("ts")?,
            device: device_field(&mut f, "device")?,
            body: Body::from_value(t, f.required("body")?)?,
        };
        f.finish()?;
        if event.seq == 0 {
            return Err(DecodeError::invalid("seq", "starts at 1"));
        }
        Ok(event)
    }

    /// Checks that `src` may sign this event: its kind is allowed for the type, a device only
    /// speaks about itself, and `device.manufactured` names the device of its serial hash.
    pub fn check_signer(&self) -> Result<(), SignerError> {
        let t = self.event_type();
        let kind = self.src.kind();
        if !t.signers().contains(&kind) {
            return Err(SignerError::KindNotAllowed {
                kind,
                event_type: t,
            });
        }
        if let Some(signer) = self.src.device_id() {
            if signer != self.device {
                return Err(SignerError::NotItself {
                    signer,
                    device: self.device.clone(),
                });
            }
        }
        if let Body::Manufactured(m) = &self.body {
            let expected = device_id_from_serial_hash(&m.serial_hash);
            if expected != self.device {
                return Err(SignerError::SerialMismatch {
                    device: self.device.clone(),
                    expected,
                });
            }
        }
        Ok(())
    }
}
