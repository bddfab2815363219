//! Interoperability with a third-party MQTT client: Debian's `mosquitto_pub`/`mosquitto_sub`
//! connect with a token, publish a published test vector, and read the log topic and the
//! confirmation. (`.ci/run` installs `mosquitto-clients`; elsewhere the test is skipped with a
//! note unless `CI` is set.)

use pairbus_broker::bus::{Bus, BusSettings};
use pairbus_broker::ingest::IngestSettings;
use pairbus_broker::log::LogStore;
use pairbus_schemas::vectors::{generate, root};
use pairbus_schemas::{Kid, Record, Topic};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn have_mosquitto() -> bool {
    let ok = Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto-clients is missing: .ci/run should have installed it"
        );
        eprintln!("skipped: install mosquitto-clients to run the mosquitto interop test");
    }
    ok
}

fn token(kid: &Kid) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    root().derive(kid).mint_token(kid, now + 600)
}

fn sub(port: u16, client: &str, kid: &Kid, topic: &str) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", client])
        .args(["-u", &kid.to_string(), "-P", &token(kid)])
        .args(["-t", topic, "-C", "1", "-W", "20", "-F", "%x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts")
}

fn hex_out(child: std::process::Child) -> Vec<u8> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

#[test]
fn mosquitto_clients_publish_a_test_vector_and_read_the_log() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let bus = Bus::start(
        BusSettings {
            data_dir: dir.path().to_owned(),
            device_listen: any,
            operator_listen: any,
            http_listen: any,
            ingest: IngestSettings::default(),
        },
        root(),
    )
    .unwrap();
    let vector = generate()
        .into_iter()
        .find(|v| v.name == "device.action")
        .unwrap();
    let kid = Kid::parse(&vector.kid).unwrap();
    let cose = hex::decode(&vector.cose_hex).unwrap();
    let file = dir.path().join("event.cbor");
    std::fs::write(&file, &cose).unwrap();

    let operator = Kid::parse("operator:admin").unwrap();
    let op_port = bus.operator_addr().port();
    let publish = |payload: &std::path::Path| {
        // On the device plane the client id must be the kid.
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &bus.device_addr().port().to_string(),
            ])
            .args([
                "-i",
                &kid.to_string(),
                "-u",
                &kid.to_string(),
                "-P",
                &token(&kid),
            ])
            .args(["-t", &Topic::In(kid.clone()).to_string(), "-q", "1", "-f"])
            .arg(payload)
            .status()
            .unwrap();
        assert!(status.success());
    };

    // A valid event: its record appears on the log topic (operator plane).
    let log_sub = sub(op_port, "op-log", &operator, "pairbus/v1/log");
    // mosquitto_sub has no "subscribed" signal: give it a moment.
    std::thread::sleep(Duration::from_millis(700));
    publish(&file);
    let record = Record::decode(&hex_out(log_sub), 70_000).unwrap();
    assert!(record.hash_is_valid());
    assert_eq!(record.seq, 1);
    assert_eq!(
        record.event, cose,
        "the log holds the bytes exactly as published"
    );

    // A forged one (last tag byte flipped): refused, and operators see why.
    let rejected_sub = sub(
        op_port,
        "op-rej",
        &operator,
        &Topic::Rejected(kid.clone()).to_string(),
    );
    std::thread::sleep(Duration::from_millis(700));
    let mut forged = cose.clone();
    *forged.last_mut().unwrap() ^= 1;
    let forged_file = dir.path().join("forged.cbor");
    std::fs::write(&forged_file, &forged).unwrap();
    publish(&forged_file);
    let json: serde_json::Value = serde_json::from_slice(&hex_out(rejected_sub)).unwrap();
    assert_eq!(json["reason"], "bad_mac", "{json}");
    assert_eq!(bus.log().head().seq, 1);
    bus.shutdown();
}
