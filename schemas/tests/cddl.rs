//! Checks `schemas/events.cddl` (the normative CDDL) against the implementation:
//!
//! - every published vector (`schemas/vectors/*.json`) validates: payloads against `event` and
//!   their per-type rule (and not against another type's rule), COSE bytes against
//!   `event-envelope` / `qr-envelope`, the QR text's COSE bytes, the log record against
//!   `log-record`;
//! - events built with the library to reach every optional field, enum value and edge of a
//!   range validate too, as do the broker's service messages;
//! - mutated payloads, envelopes, records and messages fail validation, and for payloads and QR
//!   claims the Rust strict decoder refuses the very same bytes (for a schema reason, not a CBOR
//!   encoding reason): the CDDL and the decoder agree on both sides.
//!
//! The CDDL is parsed once (parsing takes most of the time in a debug build); the rule to check
//! against is moved to the front of the parsed rule list, since the `cddl` crate validates
//! against the first rule. `cddl::validate_cbor_from_slice` with a `root = <rule>` line
//! prepended to the text does the same (checked once, in `documented_api_agrees`).

use cddl::ast::CDDL;
use cddl::validator::cbor::CBORValidator;
use cddl::validator::cbor_value::decode_cbor;
use cddl::validator::Validator;
use ciborium::value::{Integer, Value};
use pairbus_schemas::cbor::{encode_canonical, CborError};
use pairbus_schemas::event::{
    Action, Activated, Command, CommandCompleted, CommandIssued, Component, Manufactured,
    MetaValue, Metadata, Outcome, Role, SetupCompleted,
};
use pairbus_schemas::messages::{Checkpoint, CommitStatus, Committed, ReplayEnd};
use pairbus_schemas::qr::{encode_qr, verify_qr, QrClaims};
use pairbus_schemas::vectors::{root, Vector};
use pairbus_schemas::{
    seal, Body, DecodeError, DeviceId, Event, EventId, EventType, Kid, Record, GENESIS,
    MAX_EVENT_SIZE,
};
use std::path::Path;
use std::sync::OnceLock;

const CDDL_TEXT: &str = include_str!("../events.cddl");

/// Each event type and the CDDL rule of its payload.
const EVENT_RULES: [(EventType, &str); 14] = [
    (EventType::Manufactured, "manufactured-event"),
    (EventType::Activated, "activated-event"),
    (EventType::SetupCompleted, "setup-completed-event"),
    (EventType::PairingRequested, "pairing-requested-event"),
    (EventType::PairingOffered, "pairing-offered-event"),
    (EventType::PairingAccepted, "pairing-accepted-event"),
    (EventType::PairingDeclined, "pairing-declined-event"),
    (EventType::PairingCancelled, "pairing-cancelled-event"),
    (EventType::PairingUnpaired, "pairing-unpaired-event"),
    (EventType::ModeChanged, "mode-changed-event"),
    (EventType::Action, "action-event"),
    (EventType::CommandIssued, "command-issued-event"),
    (EventType::CommandCompleted, "command-completed-event"),
    (EventType::Revoked, "revoked-event"),
];

fn schema() -> &'static CDDL<'static> {
    static SCHEMA: OnceLock<CDDL<'static>> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        cddl::cddl_from_str(CDDL_TEXT, true).unwrap_or_else(|e| panic!("events.cddl: {e}"))
    })
}

/// Validates `bytes` against the rule named `rule`.
fn validate(rule: &str, bytes: &[u8]) -> Result<(), String> {
    let mut ast = schema().clone();
    let i = ast
        .rules
        .iter()
        .position(|r| r.name() == rule)
        .unwrap_or_else(|| panic!("events.cddl has no rule `{rule}`"));
    let r = ast.rules.remove(i);
    ast.rules.insert(0, r);
    let cbor = decode_cbor(bytes).map_err(|e| format!("not CBOR: {e}"))?;
    CBORValidator::new(&ast, cbor, None)
        .validate()
        .map_err(|e| e.to_string())
}

#[track_caller]
fn assert_valid(rule: &str, bytes: &[u8], what: &str) {
    if let Err(e) = validate(rule, bytes) {
        panic!("{what}: expected valid `{rule}`, got:\n{e}");
    }
}

#[track_caller]
fn assert_invalid(rule: &str, bytes: &[u8], what: &str) {
    assert!(
        validate(rule, bytes).is_err(),
        "{what}: expected `{rule}` to refuse {}",
        hex::encode(bytes)
    );
}

fn rule_of(t: EventType) -> &'static str {
    EVENT_RULES
        .iter()
        .find(|(u, _)| *u == t)
        .map(|(_, r)| *r)
        .expect("every type has a rule")
}

fn vectors() -> Vec<Vector> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("schemas/vectors exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("readable vector");
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector fields are hex")
}

fn cbor_value(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).expect("valid CBOR")
}

fn canonical(value: Value) -> Vec<u8> {
    encode_canonical(value).expect("no duplicate keys")
}

fn txt(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn int(i: i128) -> Value {
    Value::Integer(Integer::try_from(i).expect("within CBOR integer range"))
}

/// The entries of a map value.
fn entries(v: &mut Value) -> &mut Vec<(Value, Value)> {
    match v {
        Value::Map(m) => m,
        other => panic!("expected a map, got {other:?}"),
    }
}

/// Sets (or adds) text key `k` of map `v`.
fn set(v: &mut Value, k: &str, new: Value) {
    let m = entries(v);
    match m.iter_mut().find(|(key, _)| key.as_text() == Some(k)) {
        Some((_, old)) => *old = new,
        None => m.push((txt(k), new)),
    }
}

/// Removes text key `k` of map `v`, which must be there.
fn remove(v: &mut Value, k: &str) {
    let m = entries(v);
    let before = m.len();
    m.retain(|(key, _)| key.as_text() != Some(k));
    assert_eq!(m.len() + 1, before, "no key `{k}` to remove");
}

/// The body map of an event value.
fn body(v: &mut Value) -> &mut Value {
    entries(v)
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some("body"))
        .map(|(_, b)| b)
        .expect("events have a body")
}

fn vector(name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vector `{name}`"))
}

#[test]
fn every_vector_validates() {
    let vectors = vectors();
    let mut seen_types = Vec::new();
    for v in &vectors {
        let payload = unhex(&v.payload_hex);
        let cose = unhex(&v.cose_hex);
        let what = format!("vector {}", v.name);
        match v.name.as_str() {
            "qr" => {
                assert_valid("qr-claims", &payload, &what);
                assert_valid("qr-envelope", &cose, &what);
                assert_invalid("event-envelope", &cose, &what);
                let text = v.qr_text.as_deref().expect("the QR vector has its text");
                let from_text = base45::decode(text.strip_prefix("PB1:").expect("PB1: prefix"))
                    .expect("base45");
                assert_eq!(from_text, cose, "the QR text holds the vector's COSE bytes");
            }
            name => {
                let record = v.record_hex.as_deref();
                assert_eq!(record.is_some(), name == "log-record", "{what}: record_hex");
                let t = if name == "log-record" {
                    let Value::Map(m) = cbor_value(&payload) else {
                        panic!("{what}: payload is not a map")
                    };
                    let t = m.iter().find(|(k, _)| k.as_text() == Some("type"));
                    let t = t.and_then(|(_, t)| t.as_text()).expect("type");
                    EventType::parse(t).expect("known type")
                } else {
                    EventType::parse(name).unwrap_or_else(|| panic!("{what}: unknown name"))
                };
                seen_types.push(t);
                assert_valid("event", &payload, &what);
                assert_valid(rule_of(t), &payload, &what);
                // The per-type rules tell types apart: another type's rule refuses it.
                let i = EVENT_RULES.iter().position(|(u, _)| *u == t).unwrap();
                let other = EVENT_RULES[(i + 1) % EVENT_RULES.len()].1;
                assert_invalid(other, &payload, &what);
                assert_valid("event-envelope", &cose, &what);
                if let Some(record) = record {
                    assert_valid("log-record", &unhex(record), &what);
                }
            }
        }
    }
    assert!(vectors.iter().any(|v| v.name == "qr"), "a QR vector");
    assert!(vectors.iter().any(|v| v.name == "log-record"), "a record");
    for t in EventType::ALL {
        assert!(seen_types.contains(&t), "no vector of type {t}");
    }
}

#[test]
fn documented_api_agrees() {
    // The entry point third parties are likely to use: the first rule is the root.
    let v = vector("device.action");
    let with_root = |rule: &str| format!("root = {rule}\n{CDDL_TEXT}");
    let payload = unhex(&v.payload_hex);
    cddl::validate_cbor_from_slice(&with_root("event"), &payload, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cddl::validate_cbor_from_slice(&with_root("qr-claims"), &payload, None).is_err());
}

fn sample(t: EventType) -> Event {
    pairbus_schemas::vectors::sample_events()
        .into_iter()
        .find(|e| e.event_type() == t)
        .expect("one sample per type")
}

#[test]
fn library_events_validate_across_their_range() {
    let meta = |pairs: Vec<(&str, MetaValue)>| -> Metadata {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let mut events = Vec::new();
    let with_body = |t: EventType, body: Body| Event { body, ..sample(t) };
    // Optional fields all present, and all absent.
    for present in [true, false] {
        let o = |s: &str| present.then(|| s.to_owned());
        events.push(with_body(
            EventType::Activated,
            Body::Activated(Activated {
                qr: "PB1:XYZ".into(),
                owner: "bob".into(),
                activation_token_hash: [0; 32],
                ip: o("::1"),
                user_agent: o("ua"),
                fingerprint: o("fp"),
            }),
        ));
        events.push(with_body(
            EventType::Action,
            Body::Action(Action {
                action: "login".into(),
                metadata: Metadata::new(),
                ip: o("10.0.0.1"),
                user_agent: o("ua"),
            }),
        ));
    }
    // Every enum value; the extremes of metadata integers; no components.
    events.push(with_body(
        EventType::SetupCompleted,
        Body::SetupCompleted(SetupCompleted {
            owner: "carol".into(),
            role: Role::Admin,
        }),
    ));
    for (command, outcome) in [
        (Command::StartScan, Outcome::Ok),
        (Command::Status, Outcome::Error),
        (Command::Shutdown, Outcome::Refused),
    ] {
        let issued = sample(EventType::CommandIssued);
        let Body::CommandIssued(b) = issued.body.clone() else {
            unreachable!()
        };
        events.push(with_body(
            EventType::CommandIssued,
            Body::CommandIssued(CommandIssued {
                command,
                params: meta(vec![
                    ("min", MetaValue::Int(i64::MIN)),
                    ("max", MetaValue::Int(i64::MAX)),
                    ("neg", MetaValue::Int(-1)),
                    ("on", MetaValue::Bool(true)),
                    ("", MetaValue::Text(String::new())),
                ]),
                ..b
            }),
        ));
        events.push(with_body(
            EventType::CommandCompleted,
            Body::CommandCompleted(CommandCompleted {
                command_id: issued.id,
                outcome,
                result: Metadata::new(),
            }),
        ));
    }
    let Body::Manufactured(m) = sample(EventType::Manufactured).body else {
        unreachable!()
    };
    events.push(with_body(
        EventType::Manufactured,
        Body::Manufactured(Manufactured {
            components: Vec::new(),
            qr_expires_at: u64::MAX,
            ..m.clone()
        }),
    ));
    events.push(with_body(
        EventType::Manufactured,
        Body::Manufactured(Manufactured {
            components: vec![Component {
                kind: "ünïcode".into(),
                spec: String::new(),
            }],
            ..m
        }),
    ));
    // Header edges: every kind of signer, seq and ts at their extremes.
    let mut broker_signed = sample(EventType::Revoked);
    broker_signed.src = Kid::broker();
    broker_signed.seq = u64::MAX;
    broker_signed.ts = 0;
    events.push(broker_signed);
    let mut long_name = sample(EventType::Revoked);
    long_name.src = Kid::parse(&format!("operator:{}", "a-Z_.9".repeat(10) + "abcd")).unwrap();
    events.push(long_name);

    for e in &events {
        let payload = e.encode();
        let what = format!("{e:?}");
        Event::decode(&payload, MAX_EVENT_SIZE).expect("the library reads what it writes");
        assert_valid("event", &payload, &what);
        assert_valid(rule_of(e.event_type()), &payload, &what);
    }
    // One sealed with a key of the signer and put in a record, end to end.
    let e = &events[0];
    let cose = seal(e, &root().derive(&e.src));
    assert_valid("event-envelope", &cose, "sealed activation");
    let record = Record::chain(GENESIS, u64::MAX, 0, cose);
    assert_valid("log-record", &record.encode(), "record");
}

/// A mutation of a valid value, with a name for the failure message.
type Mutation = (&'static str, fn(&mut Value));

/// Applies each mutation to `base`, and checks that every CDDL rule of `rules` refuses the
/// canonical encoding and that `decode` (the Rust strict decoder) refuses it too. `decode`
/// panics when it refuses for a CBOR encoding reason (the mutants are canonical CBOR, so
/// only a schema reason is a fair refusal).
fn check_refused(
    rules: &[&str],
    base: &[u8],
    mutations: &[Mutation],
    decode: impl Fn(&[u8]) -> Result<(), String>,
) {
    decode(base).expect("the unmodified value decodes");
    for rule in rules {
        assert_valid(rule, base, "unmodified");
    }
    for (name, mutate) in mutations {
        let mut v = cbor_value(base);
        mutate(&mut v);
        let bytes = canonical(v);
        assert_ne!(bytes, base, "{name}: the mutation changes something");
        for rule in rules {
            assert_invalid(rule, &bytes, name);
        }
        assert!(
            decode(&bytes).is_err(),
            "{name}: the Rust decoder accepts what the CDDL refuses"
        );
    }
}

fn decode_event(bytes: &[u8]) -> Result<(), String> {
    match Event::decode(bytes, MAX_EVENT_SIZE) {
        Ok(_) => Ok(()),
        // Floats are refused before any field is looked at, and rightly so.
        Err(DecodeError::Cbor(CborError::Unsupported(_))) => Err("unsupported item".into()),
        Err(DecodeError::Cbor(e)) => panic!("refused for a CBOR encoding reason: {e}"),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn bad_event_payloads_are_refused() {
    // device.action: optional fields, metadata of every scalar kind.
    let action = unhex(&vector("device.action").payload_hex);
    let header: &[Mutation] = &[
        ("extra top-level key", |v| set(v, "extra", int(1))),
        ("missing ts", |v| remove(v, "ts")),
        ("missing body", |v| remove(v, "body")),
        ("missing type", |v| remove(v, "type")),
        ("unknown type", |v| set(v, "type", txt("device.exploded"))),
        ("type of another body", |v| {
            set(v, "type", txt("device.revoked"))
        }),
        ("v 2", |v| set(v, "v", int(2))),
        ("v as text", |v| set(v, "v", txt("1"))),
        ("seq 0", |v| set(v, "seq", int(0))),
        ("seq negative", |v| set(v, "seq", int(-1))),
        ("seq as text", |v| set(v, "seq", txt("5"))),
        ("ts negative", |v| set(v, "ts", int(-5))),
        ("id 15 bytes", |v| set(v, "id", Value::Bytes(vec![1; 15]))),
        ("id as text", |v| set(v, "id", txt("0123456789abcdef"))),
        ("device upper case", |v| {
            set(v, "device", txt("18D60A00D5B622B0"))
        }),
        ("device 15 digits", |v| {
            set(v, "device", txt("18d60a00d5b622b"))
        }),
        ("device 17 digits", |v| {
            set(v, "device", txt("18d60a00d5b622b00"))
        }),
        ("device not hex", |v| {
            set(v, "device", txt("18d60a00d5b622bg"))
        }),
        ("src of no kind", |v| set(v, "src", txt("admin:x"))),
        ("src empty", |v| set(v, "src", txt(""))),
        ("body not a map", |v| set(v, "body", Value::Array(vec![]))),
        ("top level integer key", |v| {
            entries(v).push((int(1), int(1)))
        }),
    ];
    let action_body: &[Mutation] = &[
        ("extra body key", |v| set(body(v), "extra", txt("x"))),
        ("missing action", |v| remove(body(v), "action")),
        ("missing metadata", |v| remove(body(v), "metadata")),
        ("action as integer", |v| set(body(v), "action", int(7))),
        ("ip as bytes", |v| {
            set(body(v), "ip", Value::Bytes(vec![127, 0, 0, 1]))
        }),
        ("user_agent null", |v| {
            set(body(v), "user_agent", Value::Null)
        }),
        ("metadata float", |v| {
            set(
                body(v),
                "metadata",
                Value::Map(vec![(txt("f"), Value::Float(1.5))]),
            )
        }),
        ("metadata nested map", |v| {
            set(
                body(v),
                "metadata",
                Value::Map(vec![(txt("m"), Value::Map(vec![]))]),
            )
        }),
        ("metadata null", |v| {
            set(
                body(v),
                "metadata",
                Value::Map(vec![(txt("n"), Value::Null)]),
            )
        }),
        ("metadata integer key", |v| {
            set(body(v), "metadata", Value::Map(vec![(int(1), txt("x"))]))
        }),
        ("metadata integer over i64", |v| {
            let big = i128::from(i64::MAX) + 1;
            set(body(v), "metadata", Value::Map(vec![(txt("n"), int(big))]))
        }),
        ("metadata integer under i64", |v| {
            let small = i128::from(i64::MIN) - 1;
            set(
                body(v),
                "metadata",
                Value::Map(vec![(txt("n"), int(small))]),
            )
        }),
        ("metadata as array", |v| {
            set(body(v), "metadata", Value::Array(vec![]))
        }),
    ];
    check_refused(&["event"], &action, header, decode_event);
    let rules = ["event", rule_of(EventType::Action)];
    check_refused(&rules, &action, action_body, decode_event);

    // A body of each other type. The action cases above show that `event` refuses a bad
    // body through its group choice; here the per-type rule alone keeps the test fast (a
    // refusal by `event` tries all fourteen variants).
    let per_type: &[(&str, &[Mutation])] = &[
        (
            "device.manufactured",
            &[
                ("serial_hash 31 bytes", |v| {
                    set(body(v), "serial_hash", Value::Bytes(vec![0; 31]))
                }),
                ("component extra key", |v| {
                    let comp = Value::Map(vec![
                        (txt("kind"), txt("x")),
                        (txt("spec"), txt("y")),
                        (txt("z"), txt("z")),
                    ]);
                    set(body(v), "components", Value::Array(vec![comp]))
                }),
                ("component missing spec", |v| {
                    let comp = Value::Map(vec![(txt("kind"), txt("x"))]);
                    set(body(v), "components", Value::Array(vec![comp]))
                }),
                ("components as a map", |v| {
                    set(body(v), "components", Value::Map(vec![]))
                }),
                ("qr_expires_at negative", |v| {
                    set(body(v), "qr_expires_at", int(-1))
                }),
                ("missing model", |v| remove(body(v), "model")),
            ],
        ),
        (
            "device.activated",
            &[
                ("token hash as text", |v| {
                    set(body(v), "activation_token_hash", txt("00"))
                }),
                ("fingerprint as integer", |v| {
                    set(body(v), "fingerprint", int(3))
                }),
                ("missing qr", |v| remove(body(v), "qr")),
                ("extra key", |v| set(body(v), "serial", txt("SN-1"))),
            ],
        ),
        (
            "device.setup_completed",
            &[
                ("role root", |v| set(body(v), "role", txt("root"))),
                ("role upper case", |v| set(body(v), "role", txt("Owner"))),
                ("missing owner", |v| remove(body(v), "owner")),
            ],
        ),
        (
            "pairing.requested",
            &[
                ("manager not a device id", |v| {
                    set(body(v), "manager", txt("device:18d60a00d5b622b0"))
                }),
                ("missing sensor", |v| remove(body(v), "sensor")),
            ],
        ),
        (
            "pairing.offered",
            &[
                ("nonce 17 bytes", |v| {
                    set(body(v), "nonce", Value::Bytes(vec![0; 17]))
                }),
                ("missing expires_at", |v| remove(body(v), "expires_at")),
                ("extra manager", |v| {
                    set(body(v), "manager", txt("18d60a00d5b622b0"))
                }),
            ],
        ),
        (
            "pairing.accepted",
            &[("nonce as text", |v| set(body(v), "nonce", txt("n")))],
        ),
        (
            "pairing.declined",
            &[("missing reason", |v| remove(body(v), "reason"))],
        ),
        (
            "pairing.cancelled",
            &[("missing nonce", |v| remove(body(v), "nonce"))],
        ),
        (
            "pairing.unpaired",
            &[("peer 16 upper-case digits", |v| {
                set(body(v), "peer", txt("AAAAAAAAAAAAAAAA"))
            })],
        ),
        (
            "device.mode_changed",
            &[
                ("mode paired", |v| set(body(v), "mode", txt("paired"))),
                ("missing mode", |v| remove(body(v), "mode")),
            ],
        ),
        (
            "command.issued",
            &[
                ("command reboot", |v| set(body(v), "command", txt("reboot"))),
                ("missing params", |v| remove(body(v), "params")),
                ("target missing", |v| remove(body(v), "target")),
            ],
        ),
        (
            "command.completed",
            &[
                ("outcome maybe", |v| set(body(v), "outcome", txt("maybe"))),
                ("command_id 8 bytes", |v| {
                    set(body(v), "command_id", Value::Bytes(vec![0; 8]))
                }),
                ("result as text", |v| set(body(v), "result", txt("ok"))),
            ],
        ),
        (
            "device.revoked",
            &[
                ("reason as bytes", |v| {
                    set(body(v), "reason", Value::Bytes(b"stolen".to_vec()))
                }),
                ("empty body", |v| remove(body(v), "reason")),
            ],
        ),
    ];
    for (name, mutations) in per_type {
        let payload = unhex(&vector(name).payload_hex);
        let t = EventType::parse(name).expect("known type");
        check_refused(&[rule_of(t)], &payload, mutations, decode_event);
    }
}

/// The vector's protected header as a map value.
fn protected_header(cose: &mut Value) -> Value {
    let Value::Tag(17, inner) = cose else {
        panic!("COSE_Mac0 is tag 17")
    };
    let Value::Array(items) = inner.as_mut() else {
        panic!("COSE_Mac0 is an array")
    };
    let Value::Bytes(b) = &items[0] else {
        panic!("protected header is a bstr")
    };
    cbor_value(b)
}

/// Item `i` of the COSE_Mac0 array.
fn cose_item(cose: &mut Value, i: usize) -> &mut Value {
    let Value::Tag(17, inner) = cose else {
        panic!("COSE_Mac0 is tag 17")
    };
    let Value::Array(items) = inner.as_mut() else {
        panic!("COSE_Mac0 is an array")
    };
    &mut items[i]
}

#[test]
fn bad_envelopes_are_refused() {
    let good = unhex(&vector("device.revoked").cose_hex);
    let mutations: &[Mutation] = &[
        ("untagged", |v| {
            let Value::Tag(_, inner) = v.clone() else {
                unreachable!()
            };
            *v = *inner;
        }),
        ("tag 18 (COSE_Sign1)", |v| {
            let Value::Tag(_, inner) = v.clone() else {
                unreachable!()
            };
            *v = Value::Tag(18, inner);
        }),
        ("alg 6", |v| {
            let mut h = protected_header(v);
            entries(&mut h)[0].1 = int(6);
            *cose_item(v, 0) = Value::Bytes(canonical(h));
        }),
        ("extra protected header", |v| {
            let mut h = protected_header(v);
            entries(&mut h).push((int(3), int(0)));
            *cose_item(v, 0) = Value::Bytes(canonical(h));
        }),
        ("no kid", |v| {
            let mut h = protected_header(v);
            entries(&mut h).retain(|(k, _)| k != &int(4));
            *cose_item(v, 0) = Value::Bytes(canonical(h));
        }),
        ("kid as text", |v| {
            let mut h = protected_header(v);
            entries(&mut h)[1].1 = txt("operator:admin");
            *cose_item(v, 0) = Value::Bytes(canonical(h));
        }),
        ("protected header not a bstr", |v| {
            let h = protected_header(v);
            *cose_item(v, 0) = h;
        }),
        ("unprotected kid", |v| {
            *cose_item(v, 1) = Value::Map(vec![(int(4), Value::Bytes(b"broker".to_vec()))]);
        }),
        ("detached payload", |v| *cose_item(v, 2) = Value::Null),
        ("payload not an event", |v| {
            *cose_item(v, 2) = Value::Bytes(canonical(Value::Map(vec![])));
        }),
        ("payload with an unknown type", |v| {
            let Value::Bytes(p) = cose_item(v, 2) else {
                unreachable!()
            };
            let mut event = cbor_value(p);
            set(&mut event, "type", txt("device.exploded"));
            *cose_item(v, 2) = Value::Bytes(canonical(event));
        }),
        ("tag 16 bytes (truncated MAC)", |v| {
            *cose_item(v, 3) = Value::Bytes(vec![0; 16]);
        }),
        ("five items", |v| {
            let Value::Tag(_, inner) = v else {
                unreachable!()
            };
            let Value::Array(items) = inner.as_mut() else {
                unreachable!()
            };
            items.push(Value::Bytes(vec![]));
        }),
    ];
    assert_valid("event-envelope", &good, "unmodified");
    for (name, mutate) in mutations {
        let mut v = cbor_value(&good);
        mutate(&mut v);
        let bytes = canonical(v);
        assert_ne!(bytes, good, "{name}: the mutation changes something");
        assert_invalid("event-envelope", &bytes, name);
    }
}

fn decode_qr_claims(bytes: &[u8]) -> Result<(), String> {
    // QrClaims::decode is private: go through a QR code sealed around the claims, whose
    // refusal comes back as `Malformed("claims: …")`.
    let kid = Kid::parse("factory:line-1").unwrap();
    let key = root().derive(&kid);
    let cose = pairbus_schemas::envelope::seal_payload(&kid, &key, bytes.to_vec());
    let text = format!("PB1:{}", base45::encode(cose));
    match verify_qr(&text, 0, |_| Some(key.clone())) {
        Ok(_) => Ok(()),
        Err(pairbus_schemas::qr::QrError::Malformed(m)) if m.starts_with("claims: ") => Err(m),
        Err(e) => panic!("unexpected QR error: {e}"),
    }
}

#[test]
fn qr_claims_and_envelope() {
    let v = vector("qr");
    let payload = unhex(&v.payload_hex);
    let mutations: &[Mutation] = &[
        ("missing exp", |v| remove(v, "exp")),
        ("extra key", |v| set(v, "serial", txt("SN-0001"))),
        ("device_id upper case", |v| {
            set(v, "device_id", txt("18D60A00D5B622B0"))
        }),
        ("iat negative", |v| set(v, "iat", int(-1))),
        ("model as integer", |v| set(v, "model", int(1))),
    ];
    check_refused(&["qr-claims"], &payload, mutations, decode_qr_claims);

    // A QR code made by the library validates, its claims inside the envelope too.
    let kid = Kid::parse("factory:line-2").unwrap();
    let claims = QrClaims {
        device_id: DeviceId::parse("0000000000000000").unwrap(),
        device_type: "sensor".into(),
        model: "S".into(),
        iat: 0,
        exp: u64::MAX,
    };
    let text = encode_qr(&claims, &kid, &root().derive(&kid));
    let cose = base45::decode(text.strip_prefix("PB1:").unwrap()).unwrap();
    assert_valid("qr-envelope", &cose, "library QR");
    // An event payload is not a QR claims map.
    let mut event_in_qr = cbor_value(&cose);
    *cose_item(&mut event_in_qr, 2) = Value::Bytes(unhex(&vector("device.revoked").payload_hex));
    assert_invalid("qr-envelope", &canonical(event_in_qr), "event inside a QR");
}

#[test]
fn log_records() {
    let good = unhex(&vector("log-record").record_hex.expect("record"));
    assert_valid("log-record", &good, "vector");
    let mutations: &[Mutation] = &[
        ("seq 0", |v| set(v, "seq", int(0))),
        ("prev 31 bytes", |v| {
            set(v, "prev", Value::Bytes(vec![0; 31]))
        }),
        ("hash missing", |v| remove(v, "hash")),
        ("received_at as text", |v| set(v, "received_at", txt("now"))),
        ("extra key", |v| set(v, "device", txt("18d60a00d5b622b0"))),
        ("event is a bare payload", |v| {
            let p = unhex(&vector("device.action").payload_hex);
            set(v, "event", Value::Bytes(p));
        }),
        ("event not CBOR-wrapped", |v| {
            let cose = cbor_value(&unhex(&vector("log-record").cose_hex));
            set(v, "event", cose);
        }),
    ];
    for (name, mutate) in mutations {
        let mut v = cbor_value(&good);
        mutate(&mut v);
        assert_invalid("log-record", &canonical(v), name);
    }
}

#[test]
fn service_messages() {
    for status in [CommitStatus::Committed, CommitStatus::AlreadyCommitted] {
        let c = Committed {
            id: EventId([9; 16]),
            seq: 1,
            status,
        };
        assert_valid("committed", &c.encode(), status.as_str());
    }
    let checkpoint = Checkpoint::sign(
        7,
        [1; 32],
        1_767_225_600_000,
        &root().derive(&Kid::broker()),
    );
    assert_valid("checkpoint", &checkpoint.encode(), "checkpoint");
    for count in [0, 1, u64::MAX] {
        assert_valid("replay-end", &ReplayEnd { count }.encode(), "replay end");
    }

    let committed = Committed {
        id: EventId([9; 16]),
        seq: 3,
        status: CommitStatus::Committed,
    }
    .encode();
    let refused: &[(&str, &[u8], &[Mutation])] = &[
        (
            "committed",
            &committed,
            &[
                ("status pending", |v| set(v, "status", txt("pending"))),
                ("id 32 bytes", |v| set(v, "id", Value::Bytes(vec![0; 32]))),
                ("missing seq", |v| remove(v, "seq")),
                ("extra key", |v| set(v, "reason", txt("x"))),
            ],
        ),
        (
            "checkpoint",
            &checkpoint.encode(),
            &[
                ("mac 31 bytes", |v| set(v, "mac", Value::Bytes(vec![0; 31]))),
                ("missing at", |v| remove(v, "at")),
                ("extra kid", |v| set(v, "kid", txt("broker"))),
            ],
        ),
        (
            "replay-end",
            &ReplayEnd { count: 2 }.encode(),
            &[
                ("end false", |v| set(v, "end", Value::Bool(false))),
                ("count negative", |v| set(v, "count", int(-2))),
                ("extra key", |v| set(v, "more", Value::Bool(true))),
            ],
        ),
    ];
    for (rule, base, mutations) in refused {
        for (name, mutate) in mutations.iter() {
            let mut v = cbor_value(base);
            mutate(&mut v);
            assert_invalid(rule, &canonical(v), name);
        }
    }
    // The messages are not interchangeable.
    assert_invalid("checkpoint", &committed, "committed as checkpoint");
    assert_invalid("event", &committed, "committed as event");
}
