//! `pairbus-broker demo`, the one-command story, run as a user runs it: twice on the same data
//! folder (the second run reuses it and makes new devices), each time exiting 0 with the key
//! lines of the story; then the log verifies offline and holds each principal's events once,
//! with unbroken `seq` counters across the runs.

use pairbus_tests::{bin, device_events, logged_events, verify};
use std::path::Path;
use std::process::{Command, Output};

fn demo(data: &Path) -> Output {
    Command::new(bin("pairbus-broker"))
        .args(["demo", "--data"])
        .arg(data)
        .env_remove("PAIRBUS_LOG")
        .output()
        .expect("pairbus-broker demo runs")
}

/// The id printed after `label` in the manufacture step (`hub      <id> (hub H1) …`).
fn device_id(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(label) && l.contains(" serial DEMO-"))
                .then(|| it.next().map(str::to_owned))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no `{label} <id>` line in:\n{out}"))
}

/// The lines of the numbered step whose title contains `title`, up to the next step.
fn step<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = out
        .lines()
        .skip_while(|l| !(l.starts_with('[') && l.contains(title)));
    let mut v: Vec<&str> = lines.next().into_iter().collect();
    v.extend(lines.take_while(|l| !l.starts_with('[')));
    assert!(!v.is_empty(), "no step `{title}` in:\n{out}");
    v
}

/// Checks one successful run; returns the three device ids (hub, sensor-a, sensor-b).
fn check_run(out: &Output, first: bool) -> [String; 3] {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{text}\n{err}");
    let summary = text.lines().last().unwrap_or_default();
    assert!(summary.starts_with("demo OK: "), "{summary}");
    assert!(
        summary.contains("3 attacks refused and alerted"),
        "{summary}"
    );
    let folder = step(&text, "data folder").join("\n");
    assert!(
        folder.contains(if first { "created" } else { "reused" }),
        "{folder}"
    );
    let bus = step(&text, "bus started").join("\n");
    assert!(bus.contains("device plane 127.0.0.1:"), "{bus}");
    let ids = [
        device_id(&text, "hub"),
        device_id(&text, "sensor-a"),
        device_id(&text, "sensor-b"),
    ];
    let [hub, a, b] = &ids;

    // The forged QR code: refused by the trusted station, refused and alerted by the projector.
    let forged = step(&text, "attack 1").join("\n");
    assert!(forged.contains("REFUSED, forged QR code"), "{forged}");
    assert!(
        forged.contains("REFUSED forged_qr, alert raised"),
        "{forged}"
    );
    // The replayed bytes: already committed, the log did not grow.
    let replay = step(&text, "attack 2").join("\n");
    assert!(replay.contains("broker: already_committed"), "{replay}");
    assert!(replay.contains("the log did not grow"), "{replay}");
    // The replayed pairing token.
    let token = step(&text, "attack 3").join("\n");
    assert!(token.contains("REFUSED it (nonce_reused)"), "{token}");

    // Commands completed on both sensors.
    let commands = step(&text, "runs commands").join("\n");
    assert_eq!(commands.matches("completed: ok").count(), 4, "{commands}");

    // Each history ends with its count, and sensor-b's shows the forged activation refused.
    for (label, id) in [("hub", hub), ("sensor-a", a), ("sensor-b", b)] {
        let h = step(&text, &format!("history of {label} {id}"));
        assert!(
            h.iter().any(|l| l.trim().ends_with(&format!("for {id}"))),
            "{h:?}"
        );
    }
    let hb = step(&text, &format!("history of sensor-b {b}")).join("\n");
    assert!(hb.contains("REFUSED forged_qr"), "{hb}");
    for t in [
        "device.activated",
        "pairing.accepted",
        "command.completed",
        "device.action",
    ] {
        assert!(hb.contains(t), "{t} missing: {hb}");
    }

    // The graph: the hub, and the two sensors under it.
    let graph = step(&text, "pairing graph");
    let hub_line = graph
        .iter()
        .position(|l| l.trim_start().starts_with(&format!("{hub} (hub-")))
        .unwrap_or_else(|| panic!("no hub line in {graph:?}"));
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut under: Vec<&str> = graph[hub_line + 1..]
        .iter()
        .take_while(|l| indent(l) > indent(graph[hub_line]))
        .map(|l| l.split_whitespace().next().unwrap_or_default())
        .collect();
    under.sort_unstable();
    let mut sensors = [a.as_str(), b.as_str()];
    sensors.sort_unstable();
    assert_eq!(under, sensors, "{graph:?}");

    let alerts = step(&text, "alerts raised").join("\n");
    assert!(alerts.contains("2 alert(s)"), "{alerts}");
    ids
}

#[test]
fn the_demo_runs_twice_on_one_folder_and_tells_the_whole_story() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let first = check_run(&demo(&data), true);
    let second = check_run(&demo(&data), false);
    for id in &first {
        assert!(!second.contains(id), "fresh devices every run: {id}");
    }
    assert!(data.join("fleet.key").exists());

    // Offline, the log verifies; no event is in it twice, and the operator's and the
    // factory's seq counters run on unbroken across the two runs (their outboxes persist).
    verify(&data);
    let log = logged_events(&data);
    for kid in ["operator:admin", "factory:default"] {
        let seqs: Vec<u64> = device_events(&log, kid).iter().map(|(_, s)| *s).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{kid}'s seqs");
    }
    assert_eq!(
        device_events(&log, "factory:default").len(),
        6,
        "three devices per run"
    );
}

#[test]
fn the_demo_fails_clearly_when_its_data_folder_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let out = demo(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data folder"), "{err}");
}
