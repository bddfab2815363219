//! Property tests: every event type round-trips through its deterministic encoding and the
//! envelope, and no single-bit flip anywhere in a signed envelope is accepted.

use pairbus_schemas::event::*;
use pairbus_schemas::keys::device_id_from_serial_hash;
use pairbus_schemas::vectors::root;
use pairbus_schemas::{open_event, seal, DeviceId, EventId, Kid, PrincipalKind};
use proptest::prelude::*;

fn device() -> impl Strategy<Value = DeviceId> {
    "[0-9a-f]{16}".prop_map(|s| DeviceId::parse(&s).unwrap())
}

fn txt() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn opt_txt() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(txt())
}

fn meta() -> impl Strategy<Value = Metadata> {
    proptest::collection::btree_map(
        ".{0,12}",
        prop_oneof![
            txt().prop_map(MetaValue::Text),
            any::<i64>().prop_map(MetaValue::Int),
            any::<bool>().prop_map(MetaValue::Bool),
        ],
        0..6,
    )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (
            any::<[u8; 32]>(),
            txt(),
            txt(),
            txt(),
            txt(),
            proptest::collection::vec((txt(), txt()), 0..4),
            any::<u64>()
        )
            .prop_map(
                |(serial_hash, device_type, model, manufacturer, name, comps, qr_expires_at)| {
                    Body::Manufactured(Manufactured {
                        serial_hash,
                        device_type,
                        model,
                        manufacturer,
                        name,
                        components: comps
                            .into_iter()
                            .map(|(kind, spec)| Component { kind, spec })
                            .collect(),
                        qr_expires_at,
                    })
                }
            ),
        (
            txt(),
            txt(),
            any::<[u8; 32]>(),
            opt_txt(),
            opt_txt(),
            opt_txt()
        )
            .prop_map(
                |(qr, owner, activation_token_hash, ip, user_agent, fingerprint)| {
                    Body::Activated(Activated {
                        qr,
                        owner,
                        activation_token_hash,
                        ip,
                        user_agent,
                        fingerprint,
                    })
                }
            ),
        (txt(), any::<bool>()).prop_map(|(owner, admin)| Body::SetupCompleted(SetupCompleted {
            owner,
            role: if admin { Role::Admin } else { Role::Owner },
        })),
        (device(), device()).prop_map(|(manager, sensor)| Body::PairingRequested(
            PairingRequested { manager, sensor }
        )),
        (device(), any::<[u8; 16]>(), any::<u64>()).prop_map(|(sensor, nonce, expires_at)| {
            Body::PairingOffered(PairingOffered {
                sensor,
                nonce,
                expires_at,
            })
        }),
        (device(), any::<[u8; 16]>())
            .prop_map(|(manager, nonce)| Body::PairingAccepted(PairingAccepted { manager, nonce })),
        (any::<[u8; 16]>(), txt())
            .prop_map(|(nonce, reason)| Body::PairingDeclined(PairingEnded { nonce, reason })),
        (any::<[u8; 16]>(), txt())
            .prop_map(|(nonce, reason)| Body::PairingCancelled(PairingEnded { nonce, reason })),
        device().prop_map(|peer| Body::PairingUnpaired(Unpaired { peer })),
        Just(Body::ModeChanged(ModeChanged)),
        (txt(), meta(), opt_txt(), opt_txt()).prop_map(|(action, metadata, ip, user_agent)| {
            Body::Action(Action {
                action,
                metadata,
                ip,
                user_agent,
            })
        }),
        (device(), 0..3u8, meta(), any::<u64>()).prop_map(|(target, c, params, expires_at)| {
            Body::CommandIssued(CommandIssued {
                target,
                command: [Command::StartScan, Command::Status, Command::Shutdown][c as usize],
                params,
                expires_at,
            })
        }),
        (any::<[u8; 16]>(), 0..3u8, meta()).prop_map(|(id, o, result)| {
            Body::CommandCompleted(CommandCompleted {
                command_id: EventId(id),
                outcome: [Outcome::Ok, Outcome::Error, Outcome::Refused][o as usize],
                result,
            })
        }),
        txt().prop_map(|reason| Body::Revoked(Revoked { reason })),
    ]
}

/// A well-formed event whose signer is allowed to make it.
fn event() -> impl Strategy<Value = Event> {
    (
        body(),
        device(),
        "[a-z0-9_.-]{1,16}",
        any::<[u8; 16]>(),
        1..u64::MAX,
        any::<u64>(),
    )
        .prop_map(|(body, mut dev, name, id, seq, ts)| {
            let src = match body.event_type().signers()[0] {
                PrincipalKind::Device => dev.kid(),
                kind => Kid::new(kind, &name).unwrap(),
            };
            if let Body::Manufactured(m) = &body {
                dev = device_id_from_serial_hash(&m.serial_hash);
            }
            Event {
                id: EventId(id),
                src,
                seq,
                ts,
                device: dev,
                body,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn payload_round_trips_for_every_type(e in event()) {
        let bytes = e.encode();
        prop_assert_eq!(Event::decode(&bytes, MAX_EVENT_SIZE).unwrap(), e);
    }

    #[test]
    fn envelope_round_trips(e in event()) {
        let cose = seal(&e, &root().derive(&e.src));
        let back = open_event(&cose, MAX_EVENT_SIZE, |k| Some(root().derive(k))).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn any_single_bit_flip_is_refused(e in event(), pos in any::<prop::sample::Index>(), bit in 0..8u8) {
        let mut cose = seal(&e, &root().derive(&e.src));
        let i = pos.index(cose.len());
        cose[i] ^= 1 << bit;
        let res = open_event(&cose, MAX_EVENT_SIZE, |k| Some(root().derive(k)));
        prop_assert!(res.is_err(), "flip of bit {} of byte {} accepted", bit, i);
    }
}

#[test]
fn every_bit_flip_of_every_sample_is_refused() {
    // Exhaustive over the fixed samples (one per type), to complement the random positions.
    for e in pairbus_schemas::vectors::sample_events() {
        let cose = seal(&e, &root().derive(&e.src));
        for i in 0..cose.len() {
            for bit in 0..8 {
                let mut bad = cose.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    open_event(&bad, MAX_EVENT_SIZE, |k| Some(root().derive(k))).is_err(),
                    "{}: flip of bit {bit} of byte {i} accepted",
                    e.event_type()
                );
            }
        }
    }
}

/// An arbitrary CBOR value of the kinds the fast strict decoder handles, plus some it leaves
/// to the reference (null, floats, tags), maps with any keys.
fn cbor_value() -> impl Strategy<Value = ciborium::value::Value> {
    use ciborium::value::Value;
    let leaf = prop_oneof![
        any::<u64>().prop_map(|n| Value::Integer(n.into())),
        any::<i64>().prop_map(|n| Value::Integer(n.into())),
        (0..30u64).prop_map(|n| Value::Integer(n.into())),
        (0..30i64).prop_map(|n| Value::Integer((-n).into())),
        ".{0,30}".prop_map(Value::Text),
        "[a-z]{0,3}".prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        Just(Value::Float(1.5)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..6).prop_map(Value::Map),
            inner.prop_map(|v| Value::Tag(1, Box::new(v))),
        ]
    })
}

// Differential tests of the fast paths (`decode_strict`, `Event::decode`, `Unverified::parse`)
// against their references: identical `Result`s, error variants and messages included.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn fast_paths_equal_references_on_arbitrary_bytes(
        data in proptest::collection::vec(any::<u8>(), 0..300)
    ) {
        pairbus_schemas::differential::check_all(&data);
    }

    #[test]
    fn fast_paths_equal_references_on_mutated_events(
        e in event(),
        ops in proptest::collection::vec(any::<u8>(), 0..12)
    ) {
        pairbus_schemas::differential::check_mutated_event(&e, &ops);
    }

    #[test]
    fn fast_strict_decoder_equals_reference_on_cbor_values(
        v in cbor_value(),
        ops in proptest::collection::vec(any::<u8>(), 0..6)
    ) {
        use pairbus_schemas::cbor::{encode_canonical, encode_value};
        use pairbus_schemas::differential::{check_payload, mutate};
        let raw = encode_value(&v);
        check_payload(&raw);
        check_payload(&mutate(raw, &ops));
        if let Ok(canonical) = encode_canonical(v) {
            check_payload(&canonical);
            check_payload(&mutate(canonical, &ops));
        }
    }
}

#[test]
fn fast_paths_equal_references_on_long_strings_and_deep_nesting() {
    use ciborium::value::Value;
    use pairbus_schemas::cbor::encode_value;
    use pairbus_schemas::differential::check_payload;
    // Longer than ciborium's 4 KiB scratch buffer, and around the size limit.
    for n in [23, 24, 255, 256, 4095, 4096, 4097, 20_000, 65_530, 65_540] {
        check_payload(&encode_value(&Value::Text("é".repeat(n / 2))));
        check_payload(&encode_value(&Value::Bytes(vec![7; n])));
        check_payload(&encode_value(&Value::Array(vec![Value::Bool(true); n])));
    }
    // Around the fast decoder's depth limit and beyond ciborium's recursion limit.
    for depth in [15, 16, 17, 18, 255, 256, 257, 300] {
        let mut v = Value::Integer(1.into());
        for _ in 0..depth {
            v = Value::Array(vec![v]);
        }
        check_payload(&encode_value(&v));
    }
}
