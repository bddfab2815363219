//! Event builders: one function per event the agent makes, all pure.
//!
//! A [`Draft`] is an event without its header (id, seq, ts): the [`crate::outbox`] gives it
//! those when it stores it, so that ids and seqs are assigned exactly once, durably.

use pairbus_schemas::event::{
    Action, Activated, Body, Command, CommandCompleted, CommandIssued, Component, Manufactured,
    MetaValue, Metadata, ModeChanged, Outcome, PairingAccepted, PairingEnded, PairingOffered,
    PairingRequested, Revoked, Role, SetupCompleted, Unpaired,
};
use pairbus_schemas::ids::{DeviceId, EventId, Kid};
use pairbus_schemas::Event;
use sha2::{Digest, Sha256};

/// Lifetime of a pairing offer: 10 minutes, in ms.
pub const PAIRING_OFFER_TTL_MS: u64 = 10 * 60 * 1000;
/// Default lifetime of a command, in ms.
pub const DEFAULT_COMMAND_TTL_MS: u64 = 60 * 1000;

/// An event still without id, seq and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The device the event is about.
    pub device: DeviceId,
    /// Its typed body.
    pub body: Body,
}

impl Draft {
    /// The complete event, once the outbox has given it its header.
    pub fn into_event(self, src: Kid, id: EventId, seq: u64, ts: u64) -> Event {
        Event {
            id,
            src,
            seq,
            ts,
            device: self.device,
            body: self.body,
        }
    }

    /// Whether the principal `kid` may sign this draft (catalogue signer rules, and a device
    /// only speaks about itself).
    pub fn signable_by(&self, kid: &Kid) -> bool {
        self.body.event_type().signers().contains(&kid.kind())
            && match kid.device_id() {
                Some(d) => d == self.device,
                None => true,
            }
    }
}

/// What a factory station knows about a device it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManufactureSpec {
    /// Device type (`phone`, `sensor`, …).
    pub device_type: String,
    /// Model.
    pub model: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Display name.
    pub name: String,
    /// Components.
    pub components: Vec<Component>,
}

/// `device.manufactured` (factory).
pub fn manufactured(
    device: DeviceId,
    serial_hash: [u8; 32],
    spec: ManufactureSpec,
    qr_expires_at_ms: u64,
) -> Draft {
    Draft {
        device,
        body: Body::Manufactured(Manufactured {
            serial_hash,
            device_type: spec.device_type,
            model: spec.model,
            manufacturer: spec.manufacturer,
            name: spec.name,
            components: spec.components,
            qr_expires_at: qr_expires_at_ms,
        }),
    }
}

/// The hash of an activation token as it travels: SHA-256 of the token's text as printed.
pub fn activation_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Where an activation came from, when known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// IP address.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Client fingerprint.
    pub fingerprint: Option<String>,
}

/// `device.activated` (operator): only the token's hash travels.
pub fn activated(
    device: DeviceId,
    qr: String,
    owner: String,
    token: &str,
    info: ClientInfo,
) -> Draft {
    Draft {
        device,
        body: Body::Activated(Activated {
            qr,
            owner,
            activation_token_hash: activation_token_hash(token),
            ip: info.ip,
            user_agent: info.user_agent,
            fingerprint: info.fingerprint,
        }),
    }
}

/// `device.setup_completed` (operator or the device itself).
pub fn setup_completed(device: DeviceId, owner: String, role: Role) -> Draft {
    Draft {
        device,
        body: Body::SetupCompleted(SetupCompleted { owner, role }),
    }
}

/// `pairing.requested` (operator), about the manager.
pub fn pairing_requested(manager: DeviceId, sensor: DeviceId) -> Draft {
    Draft {
        device: manager.clone(),
        body: Body::PairingRequested(PairingRequested { manager, sensor }),
    }
}

/// `pairing.offered` (manager device), expiring [`PAIRING_OFFER_TTL_MS`] after `now_ms`.
pub fn pairing_offered(me: DeviceId, sensor: DeviceId, nonce: [u8; 16], now_ms: u64) -> Draft {
    Draft {
        device: me,
        body: Body::PairingOffered(PairingOffered {
            sensor,
            nonce,
            expires_at: now_ms.saturating_add(PAIRING_OFFER_TTL_MS),
        }),
    }
}

/// `pairing.accepted` (sensor device).
pub fn pairing_accepted(me: DeviceId, manager: DeviceId, nonce: [u8; 16]) -> Draft {
    Draft {
        device: me,
        body: Body::PairingAccepted(PairingAccepted { manager, nonce }),
    }
}

/// `pairing.declined` (the device that received an offer).
pub fn pairing_declined(me: DeviceId, nonce: [u8; 16], reason: &str) -> Draft {
    Draft {
        device: me,
        body: Body::PairingDeclined(PairingEnded {
            nonce,
            reason: reason.to_owned(),
        }),
    }
}

/// `pairing.cancelled` (either device).
pub fn pairing_cancelled(me: DeviceId, nonce: [u8; 16], reason: &str) -> Draft {
    Draft {
        device: me,
        body: Body::PairingCancelled(PairingEnded {
            nonce,
            reason: reason.to_owned(),
        }),
    }
}

/// `pairing.unpaired` (either device, or an operator about `device`).
pub fn unpaired(device: DeviceId, peer: DeviceId) -> Draft {
    Draft {
        device,
        body: Body::PairingUnpaired(Unpaired { peer }),
    }
}

/// `device.mode_changed` to `standalone` (the device or an operator).
pub fn standalone(device: DeviceId) -> Draft {
    Draft {
        device,
        body: Body::ModeChanged(ModeChanged),
    }
}

/// `device.action` (device).
pub fn action(
    me: DeviceId,
    action: String,
    metadata: Metadata,
    ip: Option<String>,
    user_agent: Option<String>,
) -> Draft {
    Draft {
        device: me,
        body: Body::Action(Action {
            action,
            metadata,
            ip,
            user_agent,
        }),
    }
}

/// `command.issued` (manager device), expiring `ttl_ms` after `now_ms`.
pub fn command_issued(
    me: DeviceId,
    target: DeviceId,
    command: Command,
    params: Metadata,
    now_ms: u64,
    ttl_ms: u64,
) -> Draft {
    Draft {
        device: me,
        body: Body::CommandIssued(CommandIssued {
            target,
            command,
            params,
            expires_at: now_ms.saturating_add(ttl_ms),
        }),
    }
}

/// `command.completed` (target device).
pub fn command_completed(
    me: DeviceId,
    command_id: EventId,
    outcome: Outcome,
    result: Metadata,
) -> Draft {
    Draft {
        device: me,
        body: Body::CommandCompleted(CommandCompleted {
            command_id,
            outcome,
            result,
        }),
    }
}

/// `device.revoked` (operator).
pub fn revoked(device: DeviceId, reason: String) -> Draft {
    Draft {
        device,
        body: Body::Revoked(Revoked { reason }),
    }
}

/// Parses `key=value` into a metadata entry: `true`/`false` become booleans, a decimal
/// integer becomes an integer, anything else stays text (prefix the value with `s:` to force
/// text, e.g. `code=s:007`).
pub fn parse_meta(kv: &str) -> Result<(String, MetaValue), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("`{kv}`: expected key=value"))?;
    if k.is_empty() {
        return Err(format!("`{kv}`: empty key"));
    }
    let value = if let Some(text) = v.strip_prefix("s:") {
        MetaValue::Text(text.to_owned())
    } else if v == "true" || v == "false" {
        MetaValue::Bool(v == "true")
    } else if let Ok(i) = v.parse::<i64>() {
        MetaValue::Int(i)
    } else {
        MetaValue::Text(v.to_owned())
    };
    Ok((k.to_owned(), value))
}

/// Parses `kind=spec` into a component.
pub fn parse_component(kv: &str) -> Result<Component, String> {
    match kv.split_once('=') {
        Some((k, s)) if !k.is_empty() && !s.is_empty() => Ok(Component {
            kind: k.to_owned(),
            spec: s.to_owned(),
        }),
        _ => Err(format!("`{kv}`: expected kind=spec, e.g. camera=12MP")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::event::EventType;

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn builders_make_the_right_types_and_respect_signer_rules() {
        let a = dev("00000000000000aa");
        let b = dev("00000000000000bb");
        let me = a.kid();
        let op = Kid::parse("operator:admin").unwrap();
        let fac = Kid::parse("factory:line-1").unwrap();
        let cases: Vec<(Draft, EventType, &Kid)> = vec![
            (
                manufactured(
                    a.clone(),
                    {
                        let mut h = [0u8; 32];
                        h[7] = 0xaa;
                        h
                    },
                    ManufactureSpec {
                        device_type: "phone".into(),
                        model: "P1".into(),
                        manufacturer: "acme".into(),
                        name: "n".into(),
                        components: vec![],
                    },
                    5,
                ),
                EventType::Manufactured,
                &fac,
            ),
            (
                activated(
                    a.clone(),
                    "PB1:X".into(),
                    "o".into(),
                    "t",
                    ClientInfo::default(),
                ),
                EventType::Activated,
                &op,
            ),
            (
                setup_completed(a.clone(), "o".into(), Role::Owner),
                EventType::SetupCompleted,
                &me,
            ),
            (
                pairing_requested(a.clone(), b.clone()),
                EventType::PairingRequested,
                &op,
            ),
            (
                pairing_offered(a.clone(), b.clone(), [1; 16], 0),
                EventType::PairingOffered,
                &me,
            ),
            (
                pairing_accepted(a.clone(), b.clone(), [1; 16]),
                EventType::PairingAccepted,
                &me,
            ),
            (
                pairing_declined(a.clone(), [1; 16], "x"),
                EventType::PairingDeclined,
                &me,
            ),
            (
                pairing_cancelled(a.clone(), [1; 16], "x"),
                EventType::PairingCancelled,
                &me,
            ),
            (
                unpaired(a.clone(), b.clone()),
                EventType::PairingUnpaired,
                &me,
            ),
            (standalone(a.clone()), EventType::ModeChanged, &op),
            (
                action(a.clone(), "login".into(), Metadata::new(), None, None),
                EventType::Action,
                &me,
            ),
            (
                command_issued(a.clone(), b.clone(), Command::Status, Metadata::new(), 0, 1),
                EventType::CommandIssued,
                &me,
            ),
            (
                command_completed(a.clone(), EventId([0; 16]), Outcome::Ok, Metadata::new()),
                EventType::CommandCompleted,
                &me,
            ),
            (revoked(a.clone(), "lost".into()), EventType::Revoked, &op),
        ];
        for (draft, t, signer) in cases {
            assert_eq!(draft.body.event_type(), t);
            assert!(draft.signable_by(signer), "{t} by {signer}");
            let ev = draft.into_event(signer.clone(), EventId([9; 16]), 1, 2);
            ev.check_signer().unwrap();
        }
        // A device may not speak about another device, nor sign operator events.
        assert!(!action(b.clone(), "x".into(), Metadata::new(), None, None).signable_by(&me));
        assert!(!revoked(a.clone(), "x".into()).signable_by(&me));
    }

    #[test]
    fn offers_expire_after_ten_minutes() {
        let d = pairing_offered(
            dev("00000000000000aa"),
            dev("00000000000000bb"),
            [0; 16],
            1000,
        );
        let Body::PairingOffered(o) = d.body else {
            panic!()
        };
        assert_eq!(o.expires_at, 1000 + 600_000);
    }

    #[test]
    fn meta_values_are_typed() {
        assert_eq!(parse_meta("a=1").unwrap(), ("a".into(), MetaValue::Int(1)));
        assert_eq!(
            parse_meta("a=true").unwrap(),
            ("a".into(), MetaValue::Bool(true))
        );
        assert_eq!(
            parse_meta("a=x=y").unwrap(),
            ("a".into(), MetaValue::Text("x=y".into()))
        );
        assert_eq!(
            parse_meta("a=s:007").unwrap(),
            ("a".into(), MetaValue::Text("007".into()))
        );
        assert!(parse_meta("novalue").is_err());
        assert!(parse_meta("=v").is_err());
        assert!(parse_component("camera=12MP").is_ok());
        assert!(parse_component("camera=").is_err());
    }

    #[test]
    fn token_hash_is_sha256_of_the_text() {
        let h = activation_token_hash("abc");
        assert_eq!(
            hex::encode(h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
