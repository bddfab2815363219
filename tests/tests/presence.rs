//! Discovery through the presence cards: a running device is listed online by an operator's
//! `discover` (the broker mirrors the device-plane cards on the operator plane), its last will
//! marks it offline when it dies, and a card a device writes for another device is not
//! mirrored.

use pairbus_tests::{agent, agent_output, make, raw_publish, wait_until, Broker, Running};

fn discover_all(operator: &std::path::Path) -> serde_json::Value {
    let out = agent(operator, &["discover", "--all", "--json", "--timeout", "1"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("discover --json: {e}: {out}"))
}

fn status_of(cards: &serde_json::Value, device: &str) -> Option<String> {
    cards
        .as_array()?
        .iter()
        .find(|c| c["device"] == device)
        .and_then(|c| c["status"].as_str().map(str::to_owned))
}

#[test]
fn discover_lists_running_devices_and_the_last_will_marks_them_offline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let broker = Broker::start(&data);
    let factory = data.join("factory-default.toml");
    let operator = data.join("operator-admin.toml");
    let devices = dir.path().join("devices");
    let a = make(&factory, &[], &broker.device, &devices, "SN-PRES-A", &[]);
    let b = make(&factory, &[], &broker.device, &devices, "SN-PRES-B", &[]);

    // Nobody runs yet: nothing online, and waiting for a device fails with its id.
    assert_eq!(
        agent(&operator, &["discover", "--timeout", "1"]).trim(),
        "no device online"
    );
    let out = agent_output(
        &operator,
        &["discover", "--expect", &a.id, "--timeout", "1"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("not online within 1 s: {}", a.id)),
        "{err}"
    );
    // Devices may not discover (the operator plane is not theirs).
    let out = agent_output(&a.identity, &["discover"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is an operator command"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = Running::device(&a.identity);
    let listed = agent(
        &operator,
        &["discover", "--expect", &a.id, "--timeout", "20"],
    );
    let line = listed
        .lines()
        .find(|l| l.starts_with(&a.id))
        .unwrap_or_else(|| panic!("{} not listed: {listed}", a.id));
    assert!(line.contains("  online  "), "{line}");
    assert!(!listed.contains(&b.id), "{listed}");

    // Device b (never running) writes a card for a on a's topic, and junk on its own:
    // neither is mirrored (a stays online for operators).
    let kid_b = format!("device:{}", b.id);
    let token_b = agent(&b.identity, &["token"]);
    raw_publish(
        &broker.device,
        &kid_b,
        &kid_b,
        token_b.trim(),
        &format!("pairbus/v1/presence/{}", a.id),
        format!(r#"{{"device":"{}","status":"offline"}}"#, b.id).as_bytes(),
    );
    raw_publish(
        &broker.device,
        &kid_b,
        &kid_b,
        token_b.trim(),
        &format!("pairbus/v1/presence/{}", b.id),
        b"not a card",
    );
    let cards = discover_all(&operator);
    assert_eq!(
        status_of(&cards, &a.id).as_deref(),
        Some("online"),
        "{cards}"
    );
    assert_eq!(status_of(&cards, &b.id), None, "{cards}");

    // SIGKILL: the broker publishes a's last will, mirrored to the operators.
    run.kill9();
    wait_until(30, "the last will (offline card) mirrored", || {
        status_of(&discover_all(&operator), &a.id).as_deref() == Some("offline")
    });
    assert_eq!(
        agent(&operator, &["discover", "--timeout", "1"]).trim(),
        "no device online"
    );
}
