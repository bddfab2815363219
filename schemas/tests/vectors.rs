//! The published vectors are exactly what the code produces, and each one verifies.

use pairbus_schemas::qr::verify_qr;
use pairbus_schemas::record::MAX_RECORD_SIZE;
use pairbus_schemas::vectors::{generate, root, to_json, Vector};
use pairbus_schemas::{open_event, Event, Kid, Record, MAX_EVENT_SIZE};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[test]
fn vector_files_match_a_fresh_generation_byte_for_byte() {
    let fresh = generate();
    assert_eq!(fresh.len(), 14 + 2, "one per event type, a QR and a record");
    for v in &fresh {
        let path = dir().join(format!("{}.json", v.name));
        let stored = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run the gen_vectors example)", path.display()));
        assert_eq!(
            stored,
            to_json(v),
            "{} differs from the generator: the wire format changed; if on purpose, rerun \
             `cargo run -p pairbus-schemas --example gen_vectors` and say so in the change",
            path.display()
        );
    }
    let files = std::fs::read_dir(dir()).unwrap().count();
    assert_eq!(files, fresh.len(), "stray files in schemas/vectors");
}

#[test]
fn every_vector_verifies_and_decodes_to_its_payload() {
    for v in generate() {
        let stored: Vector = serde_json::from_str(&to_json(&v)).unwrap();
        let kid = Kid::parse(&stored.kid).unwrap();
        let key = root().derive(&kid);
        assert_eq!(key.to_hex().as_str(), stored.key_hex);
        let cose = hex::decode(&stored.cose_hex).unwrap();
        let payload = hex::decode(&stored.payload_hex).unwrap();
        match stored.name.as_str() {
            "qr" => {
                let text = stored.qr_text.as_deref().unwrap();
                let ok = verify_qr(text, 1_767_225_600, |k| Some(root().derive(k))).unwrap();
                assert_eq!(ok.factory, kid);
                assert_eq!(
                    base45::decode(&text[4..]).unwrap(),
                    cose,
                    "qr_text is PB1: + base45(cose)"
                );
            }
            name => {
                let event = open_event(&cose, MAX_EVENT_SIZE, |k| Some(root().derive(k))).unwrap();
                assert_eq!(event.encode(), payload);
                assert_eq!(Event::decode(&payload, MAX_EVENT_SIZE).unwrap(), event);
                if name == "log-record" {
                    let rec = hex::decode(stored.record_hex.as_deref().unwrap()).unwrap();
                    let rec = Record::decode(&rec, MAX_RECORD_SIZE).unwrap();
                    assert!(rec.hash_is_valid());
                    assert_eq!(rec.seq, 1);
                    assert_eq!(rec.event, cose);
                } else {
                    assert_eq!(event.event_type().as_str(), name);
                }
            }
        }
    }
}
