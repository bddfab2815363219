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
