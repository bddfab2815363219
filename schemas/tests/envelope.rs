//! Each way an envelope can be wrong is refused with its own typed error.

use coset::{iana, CoseMac0Builder, HeaderBuilder, TaggedCborSerializable};
use pairbus_schemas::envelope::{seal_payload, EnvelopeError};
use pairbus_schemas::event::SignerError;
use pairbus_schemas::messages::RejectReason;
use pairbus_schemas::vectors::{root, sample_events};
use pairbus_schemas::{open_event, seal, Event, EventType, Key, Kid, MAX_EVENT_SIZE};

fn open(bytes: &[u8]) -> Result<Event, EnvelopeError> {
    open_event(bytes, MAX_EVENT_SIZE, |k| Some(root().derive(k)))
}

fn sample(t: EventType) -> Event {
    sample_events()
        .into_iter()
        .find(|e| e.event_type() == t)
        .unwrap()
}

fn build(
    protected: coset::Header,
    unprotected: coset::Header,
    payload: Vec<u8>,
    key: &Key,
    tag_len: usize,
) -> Vec<u8> {
    let mut mac0 = CoseMac0Builder::new()
        .protected(protected)
        .unprotected(unprotected)
        .payload(payload)
        .create_tag(&[], |data| key.mac(&[data]).to_vec())
        .build();
    mac0.tag.truncate(tag_len);
    mac0.to_tagged_vec().unwrap()
}

fn hdr(alg: iana::Algorithm, kid: &Kid) -> coset::Header {
    HeaderBuilder::new()
        .algorithm(alg)
        .key_id(kid.to_string().into_bytes())
        .build()
}

#[test]
fn a_good_envelope_opens() {
    let e = sample(EventType::Action);
    assert_eq!(open(&seal(&e, &root().derive(&e.src))).unwrap(), e);
}

#[test]
fn the_algorithm_is_pinned_to_hmac_256_256() {
    let e = sample(EventType::Action);
    let key = root().derive(&e.src);
    for alg in [
        iana::Algorithm::HMAC_256_64,
        iana::Algorithm::HMAC_384_384,
        iana::Algorithm::Direct,
    ] {
        let bytes = build(hdr(alg, &e.src), Default::default(), e.encode(), &key, 32);
        assert_eq!(
            open(&bytes).unwrap_err(),
            EnvelopeError::BadAlgorithm,
            "{alg:?}"
        );
    }
}

#[test]
fn a_truncated_tag_is_refused() {
    let e = sample(EventType::Action);
    let key = root().derive(&e.src);
    let p = hdr(iana::Algorithm::HMAC_256_256, &e.src);
    for len in [0, 8, 16, 31] {
        let bytes = build(p.clone(), Default::default(), e.encode(), &key, len);
        assert_eq!(
            open(&bytes).unwrap_err(),
            EnvelopeError::BadMac(e.src.clone()),
            "{len}"
        );
    }
}

#[test]
fn the_kid_must_be_protected_and_alone_with_the_alg() {
    let e = sample(EventType::Action);
    let key = root().derive(&e.src);
    let no_kid = HeaderBuilder::new()
        .algorithm(iana::Algorithm::HMAC_256_256)
        .build();
    let kid_unprotected = HeaderBuilder::new()
        .key_id(e.src.to_string().into_bytes())
        .build();
    assert_eq!(
        open(&build(no_kid, kid_unprotected, e.encode(), &key, 32)).unwrap_err(),
        EnvelopeError::MissingKid
    );
    let extra = HeaderBuilder::new()
        .algorithm(iana::Algorithm::HMAC_256_256)
        .key_id(e.src.to_string().into_bytes())
        .content_type("application/cbor".into())
        .build();
    assert_eq!(
        open(&build(extra, Default::default(), e.encode(), &key, 32)).unwrap_err(),
        EnvelopeError::ExtraHeaders
    );
    let unprot = HeaderBuilder::new().iv(vec![1, 2, 3]).build();
    let p = hdr(iana::Algorithm::HMAC_256_256, &e.src);
    assert_eq!(
        open(&build(p, unprot, e.encode(), &key, 32)).unwrap_err(),
        EnvelopeError::ExtraHeaders
    );
}

#[test]
fn src_must_equal_the_kid_and_the_signer_must_be_allowed() {
    // Signed by an operator, but the payload says the device made it.
    let e = sample(EventType::Action);
    let operator = Kid::parse("operator:admin").unwrap();
    let bytes = seal_payload(&operator, &root().derive(&operator), e.encode());
    assert!(matches!(
        open(&bytes).unwrap_err(),
        EnvelopeError::KidMismatch { .. }
    ));

    // A device may not revoke.
    let mut revoke = sample(EventType::Revoked);
    revoke.src = revoke.device.kid();
    let err = open(&seal(&revoke, &root().derive(&revoke.src))).unwrap_err();
    assert!(matches!(
        err,
        EnvelopeError::Signer(SignerError::KindNotAllowed { .. })
    ));
    assert_eq!(err.reason(), RejectReason::Malformed);

    // A device may only speak about itself.
    let mut other = sample(EventType::Action);
    other.device = sample(EventType::PairingAccepted).device;
    let err = open(&seal(&other, &root().derive(&other.src))).unwrap_err();
    assert!(matches!(
        err,
        EnvelopeError::Signer(SignerError::NotItself { .. })
    ));

    // A factory may not manufacture a device whose id does not match the serial hash.
    let mut m = sample(EventType::Manufactured);
    m.device = other.device.clone();
    let err = open(&seal(&m, &root().derive(&m.src))).unwrap_err();
    assert!(matches!(
        err,
        EnvelopeError::Signer(SignerError::SerialMismatch { .. })
    ));
}

#[test]
fn unknown_kids_wrong_keys_and_oversize_have_their_own_codes() {
    let e = sample(EventType::Action);
    let bytes = seal(&e, &root().derive(&e.src));
    let unknown = open_event(&bytes, MAX_EVENT_SIZE, |_| None).unwrap_err();
    assert_eq!(unknown.reason(), RejectReason::UnknownKid);
    let wrong = open_event(&bytes, MAX_EVENT_SIZE, |_| Some(Key::from_bytes([0; 32]))).unwrap_err();
    assert_eq!(wrong.reason(), RejectReason::BadMac);
    let big = open_event(&bytes, bytes.len() - 1, |k| Some(root().derive(k))).unwrap_err();
    assert_eq!(big.reason(), RejectReason::TooLarge);
    assert_eq!(open(b"").unwrap_err().reason(), RejectReason::Malformed);
    // An untagged COSE_Mac0 (no tag 17) is refused.
    assert!(matches!(
        open(&bytes[1..]).unwrap_err(),
        EnvelopeError::Malformed(_)
    ));
}

#[test]
fn strict_payload_errors_name_the_field() {
    use ciborium::value::Value;
    let e = sample(EventType::Action);
    let key = root().derive(&e.src);
    let reseal = |v: Value| {
        let payload = pairbus_schemas::cbor::encode_canonical(v).unwrap();
        open(&seal_payload(&e.src, &key, payload))
            .unwrap_err()
            .to_string()
    };
    type Entries = Vec<(Value, Value)>;
    let edit = |f: &dyn Fn(&mut Entries)| {
        let mut v = e.to_value();
        if let Value::Map(m) = &mut v {
            f(m);
        }
        v
    };
    let set = |name: &'static str, val: Value| {
        move |m: &mut Entries| {
            for (k, v) in m.iter_mut() {
                if k.as_text() == Some(name) {
                    *v = val.clone();
                }
            }
        }
    };
    assert!(
        reseal(edit(&set("v", Value::Integer(2.into())))).contains("unsupported schema version 2")
    );
    assert!(reseal(edit(&set("seq", Value::Text("1".into())))).contains("`seq`"));
    assert!(
        reseal(edit(&set("type", Value::Text("device.exploded".into()))))
            .contains("device.exploded")
    );
    assert!(reseal(edit(&set("id", Value::Bytes(vec![1; 15])))).contains("`id`"));
    let unknown = reseal(edit(&|m| m.push((Value::Text("zz".into()), Value::Null))));
    assert!(unknown.contains("unknown field `zz`"), "{unknown}");
    let missing = reseal(edit(&|m| m.retain(|(k, _)| k.as_text() != Some("ts"))));
    assert!(missing.contains("`ts` is missing"), "{missing}");
    let in_body = reseal(edit(&|m| {
        for (k, v) in m.iter_mut() {
            if k.as_text() == Some("body") {
                if let Value::Map(b) = v {
                    b.retain(|(k, _)| k.as_text() != Some("action"));
                }
            }
        }
    }));
    assert!(in_body.contains("`body.action` is missing"), "{in_body}");
    // A non-deterministic payload (unsorted keys) is refused even with a valid MAC.
    let mut items = match e.to_value() {
        Value::Map(m) => m,
        _ => unreachable!(),
    };
    items.reverse();
    let raw = pairbus_schemas::cbor::encode_value(&Value::Map(items));
    let err = open(&seal_payload(&e.src, &key, raw)).unwrap_err();
    assert!(err.to_string().contains("deterministically"), "{err}");
}
