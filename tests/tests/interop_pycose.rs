//! Interop with an independent COSE implementation (pycose 1.1, cbor2, cryptography).
//!
//! `tests/interop/check_vectors.py` checks every `schemas/vectors/*.json` with the Python
//! libraries (HKDF, COSE_Mac0 structure and tag, payload, QR base45, log record hash), then
//! makes a `device.action` event of its own with cbor2 + pycose. This test opens that envelope
//! with `pairbus_schemas::open_event` and checks every field.
//!
//! The Python comes from `PAIRBUS_PYTHON` (the venv made by `tests/interop/setup-venv.sh`).
//! Unset, the test is skipped, except under CI (`CI` set), where it fails.

use pairbus_schemas::event::{Action, MetaValue};
use pairbus_schemas::keys::device_id_from_serial_hash;
use pairbus_schemas::{open_event, seal, Body, EventType, Kid, RootSecret, MAX_EVENT_SIZE};
use pairbus_tests::ScriptOutput;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

struct PyEnvelope {
    kid: String,
    root_secret_hex: String,
    serial: String,
    cose: Vec<u8>,
}

/// Runs the Python side (which also checks all the vectors) and parses what it made.
fn run_python(python: &str) -> PyEnvelope {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("interop/check_vectors.py");
    let vectors = root.join("../schemas/vectors");
    let out = ScriptOutput::run(python, &script, &[vectors.as_os_str()]);
    let field = |name: &str| out.field(name);
    PyEnvelope {
        kid: field("kid"),
        root_secret_hex: field("root_secret_hex"),
        serial: field("serial"),
        cose: hex::decode(field("cose_hex")).expect("cose_hex is hex"),
    }
}

#[test]
fn pycose_envelope_opens_with_open_event() -> Result<(), Box<dyn std::error::Error>> {
    let Some(python) = pairbus_tests::python("the pycose interop test") else {
        return Ok(());
    };
    let py = run_python(&python);

    let root = RootSecret::from_hex(&py.root_secret_hex)?;
    let kid = Kid::parse(&py.kid)?;
    let key = root.derive(&kid);

    let mut asked = None;
    let event = open_event(&py.cose, MAX_EVENT_SIZE, |k| {
        asked = Some(k.clone());
        Some(key.clone())
    })
    .map_err(|e| format!("open_event refused the pycose envelope: {e}"))?;
    assert_eq!(
        asked.as_ref(),
        Some(&kid),
        "key looked up under the wrong kid"
    );

    // Header fields.
    assert_eq!(event.event_type(), EventType::Action);
    assert_eq!(event.src, kid);
    assert_eq!(event.seq, 7);
    let device = kid.device_id().expect("a device kid");
    assert_eq!(event.device, device);
    // The device id follows the serial-hash rule, computed on the Python side with
    // `cryptography` (HKDF + HMAC-SHA256).
    assert_eq!(
        device_id_from_serial_hash(&root.serial_hash(&py.serial)),
        device
    );
    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    assert!(
        event.ts <= now_ms && now_ms - event.ts < 10 * 60 * 1000,
        "ts {} is not a recent Unix ms time (now {now_ms})",
        event.ts
    );
    let id = uuid::Uuid::from_bytes(event.id.0);
    assert_eq!(id.get_version_num(), 7, "id {id} is not a UUIDv7");
    let (secs, nanos) = id.get_timestamp().expect("a v7 uuid has a time").to_unix();
    assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, event.ts);

    // Body.
    let Body::Action(Action {
        action,
        metadata,
        ip,
        user_agent,
    }) = &event.body
    else {
        panic!("not a device.action body: {:?}", event.body)
    };
    assert_eq!(action, "file_upload");
    assert_eq!(ip, &None);
    assert_eq!(user_agent.as_deref(), Some("pycose-interop/1"));
    let expected = [
        ("name", MetaValue::Text("scan.pdf".into())),
        ("bytes", MetaValue::Int(123_456)),
        ("offset", MetaValue::Int(-5)),
        ("resumed", MetaValue::Bool(false)),
        (
            "content_type_as_declared_by_client",
            MetaValue::Text("application/pdf".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(metadata, &expected);

    // Both sides encode the same event to the same bytes.
    assert_eq!(
        hex::encode(seal(&event, &key)),
        hex::encode(&py.cose),
        "pairbus re-seals the decoded event differently from pycose + cbor2"
    );

    // Any single flipped byte is refused.
    for i in 0..py.cose.len() {
        let mut bad = py.cose.clone();
        bad[i] ^= 0x01;
        assert!(
            open_event(&bad, MAX_EVENT_SIZE, |_| Some(key.clone())).is_err(),
            "open_event accepted the pycose envelope with byte {i} flipped"
        );
    }
    // Flipping a byte of the tag is a MAC failure, not a parse failure.
    let mut bad = py.cose.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    let err = open_event(&bad, MAX_EVENT_SIZE, |_| Some(key.clone())).unwrap_err();
    assert!(
        matches!(err, pairbus_schemas::EnvelopeError::BadMac(ref k) if *k == kid),
        "flipped tag byte gave {err:?}, expected BadMac"
    );
    Ok(())
}
