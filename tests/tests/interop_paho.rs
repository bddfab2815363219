//! A device made only of third-party clients and the written docs, against the real broker.
//!
//! `tests/interop/paho_device.py` (paho-mqtt, cbor2, pycose, cryptography; no pairbus code)
//! derives the keys from `fleet.key`, mints the MQTT tokens, connects a device and an operator,
//! publishes a `device.action` (committed, on the log topic, on the audit topics) and a forged
//! one (refused as `bad_mac` on `rejected/`). This test starts the broker from a fresh data
//! folder, makes the device with `pairbus-agent make` (so it is manufactured in the log), runs
//! the script, then checks the broker's side: the refusal journal, and the log (the genuine
//! event stored once, the forged one never).
//!
//! The Python comes from `PAIRBUS_PYTHON` (see `pairbus_tests::python`).

use pairbus_tests::{device_events, logged_events, make, python, Broker};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_paho_device_publishes_a_committed_event_and_a_forged_one_is_refused() {
    let Some(python) = python("the paho-mqtt third-party device test") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let made = make(
        &data.join("factory-default.toml"),
        &[],
        &broker.device,
        &dir.path().join("devices"),
        "SN-PAHO-1",
        &[],
    );

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/paho_device.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--fleet-key")
        .arg(data.join("fleet.key"))
        .arg("--device-identity")
        .arg(&made.identity)
        .arg("--operator-identity")
        .arg(data.join("operator-admin.toml"))
        .args(["--device-plane", &broker.device])
        .args(["--operator-plane", &broker.operator])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stderr}",
        script.display(),
        out.status
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the script's stdout is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let field = |k: &str| {
        seen[k]
            .as_str()
            .unwrap_or_else(|| panic!("no `{k}` in {seen}"))
            .to_owned()
    };
    assert_eq!(field("device"), made.id);
    let (genuine, forged) = (field("event_id"), field("forged_id"));

    // The broker journaled the forged event as bad_mac, for that device.
    let refusals = broker.get("/v1/refusals").to_string();
    assert!(
        refusals.contains("bad_mac") && refusals.contains(&made.id),
        "{refusals}"
    );

    let data = broker.data.clone();
    broker.stop();
    let log = logged_events(&data);
    let kid = format!("device:{}", made.id);
    assert_eq!(
        device_events(&log, &kid),
        vec![(genuine, 1)],
        "the paho device's one genuine event, logged once, and nothing forged"
    );
    assert!(
        log.iter().all(|l| l.event.id.to_hex() != forged),
        "the forged event reached the log"
    );
    assert!(
        log.iter()
            .any(|l| l.event.event_type().as_str() == "device.manufactured"
                && l.event.device.as_str() == made.id),
        "the device was manufactured in the log"
    );
}
