//! The published test vectors (`schemas/vectors/*.json`), generated from fixed inputs.
//!
//! One vector per event type, one QR payload and one log record. Each gives the root secret,
//! the kid, the derived key, the deterministic payload and the exact COSE_Mac0 bytes, so a
//! third party can reproduce every step. A test regenerates them and compares byte for byte;
//! `cargo run -p pairbus-schemas --example gen_vectors` rewrites the files.

use crate::envelope::{seal, seal_payload};
use crate::event::*;
use crate::ids::{DeviceId, EventId, Kid};
use crate::keys::{device_id_from_serial_hash, RootSecret};
use crate::qr::{encode_qr, QrClaims, DEFAULT_QR_TTL_SECS};
use crate::record::{Record, GENESIS};
use serde::{Deserialize, Serialize};

/// One test vector, as stored in `schemas/vectors/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// The event type, `qr` or `log-record`; also the file name without `.json`.
    pub name: String,
    /// The fleet root secret (hex).
    pub root_secret_hex: String,
    /// The signer's kid.
    pub kid: String,
    /// HKDF-SHA256(salt "pairbus/v1", root, info = kid), hex.
    pub key_hex: String,
    /// The deterministic CBOR payload, hex.
    pub payload_hex: String,
    /// The COSE_Mac0 (tag 17) bytes, hex.
    pub cose_hex: String,
    /// QR vector only: the QR text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_text: Option<String>,
    /// Record vector only: the CBOR log record (seq 1, genesis prev) holding `cose_hex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_hex: Option<String>,
}

/// The fixed root secret of the vectors: bytes 0x00..=0x1f.
pub fn root() -> RootSecret {
    RootSecret::from_bytes(core::array::from_fn(|i| i as u8))
}

/// Fixed time of the vectors, Unix ms (2026-01-01T00:00:00Z).
pub const T0_MS: u64 = 1_767_225_600_000;

fn device(serial: &str) -> DeviceId {
    device_id_from_serial_hash(&root().serial_hash(serial))
}

/// One sample event of every type, with fixed ids and times (also used by tests and benches).
pub fn sample_events() -> Vec<Event> {
    let manager = device("SN-0001");
    let sensor = device("SN-0002");
    let factory = Kid::parse("factory:line-1").expect("valid kid");
    let operator = Kid::parse("operator:admin").expect("valid kid");
    let qr = sample_qr_text();
    let meta = |pairs: &[(&str, MetaValue)]| -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let mut n = 0u64;
    let mut ev = |src: &Kid, seq: u64, dev: &DeviceId, body: Body| {
        n += 1;
        Event {
            id: EventId::new_v7(T0_MS + n, [n as u8; 10]),
            src: src.clone(),
            seq,
            ts: T0_MS + n,
            device: dev.clone(),
            body,
        }
    };
    let nonce = [0xa5; 16];
    vec![
        ev(
            &factory,
            1,
            &manager,
            Body::Manufactured(Manufactured {
                serial_hash: root().serial_hash("SN-0001"),
                device_type: "phone".into(),
                model: "PB-Phone-1".into(),
                manufacturer: "Acme Devices".into(),
                name: "Phone 0001".into(),
                components: vec![
                    Component {
                        kind: "camera".into(),
                        spec: "12MP".into(),
                    },
                    Component {
                        kind: "battery".into(),
                        spec: "4000mAh".into(),
                    },
                ],
                qr_expires_at: (T0_MS / 1000 + DEFAULT_QR_TTL_SECS) * 1000,
            }),
        ),
        ev(
            &operator,
            1,
            &manager,
            Body::Activated(Activated {
                qr,
                owner: "alice".into(),
                activation_token_hash: [0x11; 32],
                ip: Some("127.0.0.1".into()),
                user_agent: Some("pairbus-agent/0.1".into()),
                fingerprint: None,
            }),
        ),
        ev(
            &manager.kid(),
            1,
            &manager,
            Body::SetupCompleted(SetupCompleted {
                owner: "alice".into(),
                role: Role::Owner,
            }),
        ),
        ev(
            &operator,
            2,
            &manager,
            Body::PairingRequested(PairingRequested {
                manager: manager.clone(),
                sensor: sensor.clone(),
            }),
        ),
        ev(
            &manager.kid(),
            2,
            &manager,
            Body::PairingOffered(PairingOffered {
                sensor: sensor.clone(),
                nonce,
                expires_at: T0_MS + 600_000,
            }),
        ),
        ev(
            &sensor.kid(),
            1,
            &sensor,
            Body::PairingAccepted(PairingAccepted {
                manager: manager.clone(),
                nonce,
            }),
        ),
        ev(
            &sensor.kid(),
            2,
            &sensor,
            Body::PairingDeclined(PairingEnded {
                nonce,
                reason: "already paired".into(),
            }),
        ),
        ev(
            &manager.kid(),
            3,
            &manager,
            Body::PairingCancelled(PairingEnded {
                nonce,
                reason: "operator cancelled".into(),
            }),
        ),
        ev(
            &manager.kid(),
            4,
            &manager,
            Body::PairingUnpaired(Unpaired {
                peer: sensor.clone(),
            }),
        ),
        ev(&sensor.kid(), 3, &sensor, Body::ModeChanged(ModeChanged)),
        ev(
            &manager.kid(),
            5,
            &manager,
            Body::Action(Action {
                action: "voice_recording".into(),
                metadata: meta(&[
                    ("duration_s", MetaValue::Int(42)),
                    ("format", MetaValue::Text("opus".into())),
                    ("uploaded", MetaValue::Bool(false)),
                ]),
                ip: Some("127.0.0.1".into()),
                user_agent: None,
            }),
        ),
        ev(
            &manager.kid(),
            6,
            &manager,
            Body::CommandIssued(CommandIssued {
                target: sensor.clone(),
                command: Command::StartScan,
                params: meta(&[("duration_s", MetaValue::Int(30))]),
                expires_at: T0_MS + 60_000,
            }),
        ),
        ev(
            &sensor.kid(),
            4,
            &sensor,
            Body::CommandCompleted(CommandCompleted {
                command_id: EventId::new_v7(T0_MS + 12, [12; 10]),
                outcome: Outcome::Ok,
                result: meta(&[("found", MetaValue::Int(3))]),
            }),
        ),
        ev(
            &operator,
            3,
            &sensor,
            Body::Revoked(Revoked {
                reason: "reported stolen".into(),
            }),
        ),
    ]
}

fn sample_qr_claims() -> QrClaims {
    QrClaims {
        device_id: device("SN-0001"),
        device_type: "phone".into(),
        model: "PB-Phone-1".into(),
        iat: T0_MS / 1000,
        exp: T0_MS / 1000 + DEFAULT_QR_TTL_SECS,
    }
}

fn sample_qr_text() -> String {
    let kid = Kid::parse("factory:line-1").expect("valid kid");
    encode_qr(&sample_qr_claims(), &kid, &root().derive(&kid))
}

fn base(name: &str, kid: &Kid, payload: &[u8], cose: &[u8]) -> Vector {
    Vector {
        name: name.to_owned(),
        root_secret_hex: root().to_hex().to_string(),
        kid: kid.to_string(),
        key_hex: root().derive(kid).to_hex().to_string(),
        payload_hex: hex::encode(payload),
        cose_hex: hex::encode(cose),
        qr_text: None,
        record_hex: None,
    }
}

/// Every vector, in a fixed order.
pub fn generate() -> Vec<Vector> {
    let mut out: Vec<Vector> = sample_events()
        .iter()
        .map(|e| {
            let cose = seal(e, &root().derive(&e.src));
            base(e.event_type().as_str(), &e.src, &e.encode(), &cose)
        })
        .collect();

    let factory = Kid::parse("factory:line-1").expect("valid kid");
    let qr_text = sample_qr_text();
    let claims_payload = crate::cbor::encode_canonical(crate::fields::map(vec![
        (
            "device_id",
            crate::fields::text(sample_qr_claims().device_id.as_str()),
        ),
        ("device_type", crate::fields::text("phone")),
        ("model", crate::fields::text("PB-Phone-1")),
        ("iat", crate::fields::uint(T0_MS / 1000)),
        (
            "exp",
            crate::fields::uint(T0_MS / 1000 + DEFAULT_QR_TTL_SECS),
        ),
    ]))
    .expect("distinct keys");
    let qr_cose = seal_payload(&factory, &root().derive(&factory), claims_payload.clone());
    let mut qr = base("qr", &factory, &claims_payload, &qr_cose);
    qr.qr_text = Some(qr_text);
    out.push(qr);

    let action = sample_events()
        .into_iter()
        .find(|e| e.event_type() == EventType::Action)
        .expect("the samples hold an action");
    let cose = seal(&action, &root().derive(&action.src));
    let record = Record::chain(GENESIS, 1, T0_MS + 1000, cose.clone());
    let mut rv = base("log-record", &action.src, &action.encode(), &cose);
    rv.record_hex = Some(hex::encode(record.encode()));
    out.push(rv);
    out
}

/// The JSON text of a vector file (pretty, sorted keys, trailing newline).
pub fn to_json(v: &Vector) -> String {
    let value = serde_json::to_value(v).expect("vector serializes");
    let mut s = serde_json::to_string_pretty(&value).expect("value serializes");
    s.push('\n');
    s
}
