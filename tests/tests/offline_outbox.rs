//! An agent records events while no broker runs; the real broker comes up later (on the port
//! the identities already name) and every queued event enters the log exactly once, with the
//! ids and seqs assigned while offline. Then a broker outage while `run` is connected.

use pairbus_tests::{
    agent, device_events, drain_outbox, free_port, init_data, make, queued, wait_until, Broker,
    Running,
};
use std::path::{Path, PathBuf};

struct Offline {
    _dir: tempfile::TempDir,
    data: PathBuf,
    device_addr: String,
    operator_addr: String,
    factory: PathBuf,
    operator: PathBuf,
}

/// A data folder initialized without a broker, identities naming ports nobody listens on yet.
fn offline_fleet() -> Offline {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let device_addr = format!("127.0.0.1:{}", free_port());
    let operator_addr = format!("127.0.0.1:{}", free_port());
    init_data(&data, &operator_addr);
    Offline {
        factory: data.join("factory-default.toml"),
        operator: data.join("operator-admin.toml"),
        _dir: dir,
        data,
        device_addr,
        operator_addr,
    }
}

/// factory `make`, operator `activate` from the PNG, the device's `setup`: all queued offline.
fn make_activate_setup_offline(
    f: &Offline,
    out: &Path,
    serial: &str,
) -> (pairbus_tests::Made, Vec<(String, u64)>) {
    let m = make(
        &f.factory,
        &["--wait", "0"],
        &f.device_addr,
        out,
        serial,
        &[],
    );
    assert!(
        m.out.contains("run `send` (or `run`) to deliver"),
        "{}",
        m.out
    );
    let act = agent(
        &f.operator,
        &[
            "--wait",
            "0",
            "activate",
            "--qr",
            m.png.to_str().unwrap(),
            "--owner",
            "alice",
        ],
    );
    assert_eq!(queued(&act)[0].0, "device.activated", "{act}");
    let setup = agent(&m.identity, &["--wait", "0", "setup", "--owner", "alice"]);
    let q = queued(&setup);
    assert_eq!(
        (q[0].0.as_str(), q[0].2),
        ("device.setup_completed", 1),
        "{setup}"
    );
    let assigned = vec![(q[0].1.clone(), q[0].2)];
    (m, assigned)
}

#[test]
fn actions_queued_while_no_broker_runs_are_committed_once_by_send() {
    let f = offline_fleet();
    let out = f.data.parent().unwrap().join("devices");
    let (m, mut assigned) = make_activate_setup_offline(&f, &out, "SN-OFFLINE-1");
    for i in 0..8 {
        let n = format!("n={i}");
        let o = agent(
            &m.identity,
            &["--wait", "0", "action", "voice_recording", "--meta", &n],
        );
        let q = queued(&o);
        assert_eq!(q.len(), 1, "{o}");
        assigned.push((q[0].1.clone(), q[0].2));
    }
    // With a wait but no broker: the command still succeeds and says the event is kept.
    let o = agent(&m.identity, &["--wait", "1", "action", "login"]);
    assert!(o.contains("still queued"), "{o}");
    assert!(
        o.contains(&f.device_addr),
        "names the unreachable broker: {o}"
    );
    let q = queued(&o);
    assigned.push((q[0].1.clone(), q[0].2));
    assert_eq!(
        assigned.iter().map(|a| a.1).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "seqs from 1, one per event"
    );
    let listed = agent(&m.identity, &["outbox"]);
    assert_eq!(listed.matches("pending ").count(), 10, "{listed}");

    // The broker comes up on the ports the identities name.
    let broker = Broker::start_at(&f.data, &f.device_addr, &f.operator_addr);
    assert_eq!(broker.device, f.device_addr);
    let o = agent(&f.factory, &["send"]);
    assert!(o.contains("delivered: 1 event(s) committed"), "{o}");
    let o = agent(&f.operator, &["send"]);
    assert!(o.contains("delivered: 1 event(s) committed"), "{o}");
    let o = agent(&m.identity, &["send"]);
    assert!(o.contains("10 event(s) pending"), "{o}");
    assert!(o.contains("delivered: 10 event(s) committed"), "{o}");
    // Nothing is left, and sending again sends nothing.
    let o = agent(&m.identity, &["send"]);
    assert!(o.contains("0 event(s) pending"), "{o}");
    let listed = agent(&m.identity, &["outbox"]);
    assert!(!listed.contains("pending "), "{listed}");
    assert!(!listed.contains("refused "), "{listed}");
    // The embedded projector accepted them all.
    let history = broker.history(&m.id);
    let actions: Vec<_> = history
        .iter()
        .filter(|e| e["type"] == "device.action")
        .collect();
    assert_eq!(actions.len(), 9, "{history:?}");
    assert!(
        history.iter().all(|e| e["status"] == "accepted"),
        "{history:?}"
    );
    let log = broker.stop_and_read_log();
    assert_eq!(
        device_events(&log, &format!("device:{}", m.id)),
        assigned,
        "each event once, with the id and seq it got offline, in seq order"
    );
    assert_eq!(log.len(), 12, "manufactured + activated + 10 device events");
}

#[test]
fn a_running_agent_records_offline_and_delivers_after_the_broker_comes_up_and_after_an_outage() {
    let f = offline_fleet();
    let out = f.data.parent().unwrap().join("devices");
    let (m, mut assigned) = make_activate_setup_offline(&f, &out, "SN-OFFLINE-2");
    // `run` with no broker: it keeps trying; actions are handed to it.
    let run = Running::device_with(&m.identity, &["--resend-after", "1"]);
    run.wait_ready(&m.identity);
    let hand = |assigned: &mut Vec<(String, u64)>, from: usize, to: usize| {
        for i in from..to {
            let n = format!("n={i}");
            let o = agent(&m.identity, &["action", "tap", "--meta", &n]);
            assert!(o.contains("handed to the running agent"), "{o}");
            let q = queued(&o);
            assigned.push((q[0].1.clone(), q[0].2));
        }
    };
    hand(&mut assigned, 0, 6);

    let broker = Broker::start_at(&f.data, &f.device_addr, &f.operator_addr);
    agent(&f.factory, &["send"]);
    agent(&f.operator, &["send"]);
    let count_actions = |b: &Broker| {
        b.history(&m.id)
            .iter()
            .filter(|e| e["type"] == "device.action")
            .count()
    };
    wait_until(30, "the running agent's 6 actions in the log", || {
        count_actions(&broker) == 6
    });

    // An outage: the broker stops (SIGTERM) while `run` stays up; more actions are recorded;
    // the broker comes back on the same ports and data.
    broker.stop();
    hand(&mut assigned, 6, 10);
    let broker = Broker::start_at(&f.data, &f.device_addr, &f.operator_addr);
    wait_until(30, "all 10 actions in the log after the outage", || {
        count_actions(&broker) == 10
    });
    run.term();
    drain_outbox(&m.identity);
    let log = broker.stop_and_read_log();
    assert_eq!(
        device_events(&log, &format!("device:{}", m.id)),
        assigned,
        "each event once, with the id and seq it got while offline, in seq order"
    );
}
