//! The offline CLI over export files in both formats.

use pairbus_projector::export::{write_records, Format};
use pairbus_projector::testkit::{fleet, LogBuilder};
use std::process::Command;

fn cli(args: &[&str], key: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pairbus-projector"))
        .args(args)
        .env("PAIRBUS_FLEET_KEY", key)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn queries_over_both_export_formats() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, LogBuilder::new().root().to_hex().as_str()).unwrap();
    let log = fleet(8, 200);
    for (name, f) in [("log.cbor", Format::CborSeq), ("log.jsonl", Format::Jsonl)] {
        let path = dir.path().join(name);
        let mut buf = Vec::new();
        write_records(&mut buf, &log.records, f).unwrap();
        std::fs::write(&path, buf).unwrap();
        let p = path.to_str().unwrap();

        let (ok, out, err) = cli(
            &["--export", p, "devices", "--state", "paired", "--json"],
            &key,
        );
        assert!(ok, "{err}");
        let devices: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(devices.as_array().unwrap().len(), 8);
        let id = devices[1]["device_id"].as_str().unwrap().to_owned();

        let (ok, out, _) = cli(
            &[
                "--export",
                p,
                "history",
                &id,
                "--type",
                "device.action",
                "--json",
            ],
            &key,
        );
        assert!(ok);
        let h: serde_json::Value = serde_json::from_str(&out).unwrap();
        let entries = h["entries"].as_array().unwrap();
        assert!(!entries.is_empty());
        assert!(entries
            .iter()
            .all(|e| e["type"] == "device.action" && e["details"]["action"].is_string()));

        let (ok, out, _) = cli(&["--export", p, "graph", "--format", "dot"], &key);
        assert!(ok && out.starts_with("digraph"));
        let (ok, out, _) = cli(
            &["--export", p, "replay", "--as-of", "5", "devices", "--json"],
            &key,
        );
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v.as_array().unwrap().len(),
            2,
            "5 records: two devices made"
        );
        let (ok, out, _) = cli(&["--export", p, "stats", "--json"], &key);
        assert!(ok);
        let s: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(s["last_seq"], log.records.len());
        let (ok, _, _) = cli(&["--export", p, "device", "0000000000000000"], &key);
        assert!(!ok, "unknown device is an error");
    }
    // MACs re-checked offline: a consistent chain over a forged event is still caught.
    let mut forged = log.records.clone();
    forged[20].event[30] ^= 1;
    let mut prev = forged[19].hash;
    for r in forged.iter_mut().skip(20) {
        *r = pairbus_schemas::Record::chain(prev, r.seq, r.received_at, r.event.clone());
        prev = r.hash;
    }
    let path = dir.path().join("rechained.cbor");
    let mut buf = Vec::new();
    write_records(&mut buf, &forged, Format::CborSeq).unwrap();
    std::fs::write(&path, buf).unwrap();
    let p = path.to_str().unwrap();
    let (ok, _, _) = cli(&["--export", p, "stats"], &key);
    assert!(ok, "the chain alone cannot tell");
    let (ok, _, err) = cli(&["--export", p, "--verify-macs", "stats"], &key);
    assert!(!ok && err.contains("record 21"), "{err}");
    let good = dir.path().join("log.cbor");
    let (ok, _, err) = cli(
        &["--export", good.to_str().unwrap(), "--verify-macs", "stats"],
        &key,
    );
    assert!(ok, "{err}");

    // A tampered export is refused with the record named.
    let mut recs = log.records.clone();
    recs[10].event[20] ^= 1;
    let path = dir.path().join("bad.cbor");
    let mut buf = Vec::new();
    write_records(&mut buf, &recs, Format::CborSeq).unwrap();
    std::fs::write(&path, buf).unwrap();
    let (ok, _, err) = cli(&["--export", path.to_str().unwrap(), "alerts"], &key);
    assert!(!ok && err.contains("record 11"), "{err}");
}
