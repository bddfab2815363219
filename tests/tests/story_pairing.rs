//! The seed stories end to end with the real binaries: a factory makes two devices with QR
//! codes, an operator activates them from the QR images, the devices prove their keys at
//! setup, the operator asks one to manage the other, the devices run the pairing handshake
//! through the broker's relays, the manager sends a `status` command, the sensor answers and
//! records an action.
//! Then the log verifies and the projector's history and graph show all of it.

use pairbus_tests::{agent, bin, run_ok, wait_until, Broker, Running};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn projector(export: &Path, fleet_key: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        Command::new(bin("pairbus-projector"))
            .arg("--export")
            .arg(export)
            .arg("--fleet-key")
            .arg(fleet_key)
            .args(args)
            .arg("--json"),
    );
    serde_json::from_slice(&out.stdout).expect("projector prints JSON")
}

fn export(data: &Path, out: &Path) {
    run_ok(
        Command::new(bin("pairbus-broker"))
            .args(["export", "--format", "cbor-seq", "--data"])
            .arg(data)
            .arg("--out")
            .arg(out)
            .env("PAIRBUS_LOG", "warn"),
    );
}

#[test]
fn make_activate_setup_pair_and_command_through_the_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let devices = dir.path().join("devices");
    let broker = Broker::start(&data);
    let factory = data.join("factory-default.toml");
    let operator = data.join("operator-admin.toml");
    let fleet = data.join("fleet.key");

    // Factory: two devices, identity files and QR images.
    let mut ids = Vec::new();
    for serial in ["SN-MANAGER", "SN-SENSOR"] {
        let out = agent(
            &factory,
            &[
                "make",
                "--serial",
                serial,
                "--type",
                "sensor",
                "--component",
                "radio=lora",
                "--fleet-key",
                fleet.to_str().unwrap(),
                "--device-broker",
                &broker.device,
                "--out",
                devices.to_str().unwrap(),
                "--no-terminal",
            ],
        );
        let id = out
            .split("made device ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no device id in {out}"))
            .to_owned();
        assert!(devices.join(format!("{id}.png")).exists());
        ids.push(id);
    }
    let (m, s) = (ids[0].clone(), ids[1].clone());
    let identity = |d: &str| devices.join(format!("{d}.toml"));

    // Operator activates from the QR photos; each device proves its key with its own setup.
    for d in [&m, &s] {
        let png = devices.join(format!("{d}.png"));
        agent(
            &operator,
            &[
                "activate",
                "--qr",
                png.to_str().unwrap(),
                "--owner",
                "alice",
            ],
        );
        agent(&identity(d), &["setup", "--owner", "alice"]);
    }

    // Both devices online; the operator asks m to manage s.
    let _rm = Running::device(&identity(&m));
    let _rs = Running::device(&identity(&s));
    std::thread::sleep(Duration::from_millis(1500));
    agent(&operator, &["pair", "--manager", &m, "--sensor", &s]);
    // The handshake (offered → accepted) runs through the relays; then a command.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut issued = false;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if !issued {
            let out = Command::new(bin("pairbus-agent"))
                .arg("--identity")
                .arg(identity(&m))
                .args(["command", "--target", &s, "status"])
                .output()
                .unwrap();
            // Refused locally until the manager knows it manages s.
            issued = out.status.success();
        }
        if issued {
            break;
        }
        assert!(Instant::now() < deadline, "the pairing never completed");
    }
    // The sensor records an action while it runs (handed to its running agent).
    let out = agent(
        &identity(&s),
        &[
            "action",
            "voice_recording",
            "--meta",
            "seconds=12",
            "--ip",
            "10.1.2.3",
        ],
    );
    assert!(out.contains("handed to the running agent"), "{out}");
    wait_until(
        20,
        "the completion and the action in the sensor's history",
        || {
            let h = broker.history(&s);
            ["command.completed", "device.action"]
                .iter()
                .all(|t| h.iter().any(|e| e["type"] == *t))
        },
    );
    drop(_rm);
    drop(_rs);
    let data_dir = broker.data.clone();
    broker.stop();

    // The log verifies, and the projector tells the story.
    run_ok(
        Command::new(bin("pairbus-broker"))
            .args(["verify", "--data"])
            .arg(&data_dir)
            .env("PAIRBUS_LOG", "warn"),
    );
    let log = dir.path().join("log.cbor");
    export(&data_dir, &log);
    let graph = projector(&log, &fleet, &["graph"]);
    let edges = graph["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 1, "{graph}");
    assert_eq!(edges[0]["manager"], m.as_str());
    assert_eq!(edges[0]["sensor"], s.as_str());
    let history = projector(&log, &fleet, &["history", &s]);
    let text = history.to_string();
    for t in [
        "device.manufactured",
        "device.activated",
        "device.setup_completed",
        "pairing.offered",
        "pairing.accepted",
        "command.issued",
        "command.completed",
        "device.action",
    ] {
        assert!(
            text.contains(t),
            "{t} missing from the sensor's history: {text}"
        );
    }
    assert!(
        !text.contains("\"refused\""),
        "nothing in this story is refused: {text}"
    );
    let card = projector(&log, &fleet, &["device", &s]);
    assert_eq!(card["manager"], m.as_str(), "{card}");
    assert_eq!(card["state"], "paired", "{card}");
}
