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

use pairbus_tests::{device_events, logged_events, make, python, Broker, ScriptOutput};
use std::path::PathBuf;

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
    let fleet = data.join("fleet.key");
    let operator = data.join("operator-admin.toml");
    let seen = ScriptOutput::run(
        &python,
        &script,
        &[
            "--fleet-key".as_ref(),
            fleet.as_os_str(),
            "--device-identity".as_ref(),
            made.identity.as_os_str(),
            "--operator-identity".as_ref(),
            operator.as_os_str(),
            "--device-plane".as_ref(),
            broker.device.as_ref(),
            "--operator-plane".as_ref(),
            broker.operator.as_ref(),
        ],
    );
    let field = |k: &str| seen.field(k);
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
