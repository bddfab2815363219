//! `pairbus-projector serve` beside a real broker: events committed before it starts are
//! caught up through the replay service, later ones arrive on `pairbus/v1/log`; killed with
//! SIGKILL and restarted, it resumes from its checkpoint, catches up what was committed
//! meanwhile, and answers `history` and `graph` exactly as the broker's embedded projector does
//! for the same log. Refusals (a cloned device's `seq_conflict`, a `bad_mac`) appear in the
//! alerts of both projectors and on `pairbus/v1/audit/alerts`; garbage and forged records on
//! the log topic are counted and never applied. The embedded projections resume from their
//! checkpoint when the broker restarts.

use pairbus_schemas::event::{Action, Body, Metadata};
use pairbus_schemas::{DeviceId, Event, EventId, Kid};
use pairbus_tests::{
    activate_and_set_up, agent, api_get, bin, fleet_root, free_port, make, raw_publish, wait_until,
    Broker, Made,
};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `pairbus-projector serve`, killed on drop.
struct Serve {
    child: Child,
    http: String,
    resumed_from: u64,
    operator: std::path::PathBuf,
}

impl Serve {
    fn start(broker: &Broker, data: &Path) -> Serve {
        let operator = broker.data.join("operator-admin.toml");
        let mut child = Command::new(bin("pairbus-projector"))
            .arg("--fleet-key")
            .arg(broker.data.join("fleet.key"))
            .arg("serve")
            .arg("--identity")
            .arg(&operator)
            .args(["--broker", &broker.operator, "--http-listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(data)
            .env("PAIRBUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pairbus-projector serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let http = line
            .split("HTTP http://")
            .nth(1)
            .and_then(|r| r.split([',', ' ']).next())
            .unwrap_or_else(|| panic!("no HTTP address in {line:?}"))
            .to_owned();
        let resumed_from = line
            .split("resumed from seq ")
            .nth(1)
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("no checkpoint in {line:?}"));
        Serve {
            child,
            http,
            resumed_from,
            operator,
        }
    }

    fn get(&self, path: &str) -> Value {
        api_get(&self.http, &self.operator, path)
    }

    fn last_seq(&self) -> u64 {
        self.get("/v1/stats")["last_seq"]
            .as_u64()
            .expect("last_seq")
    }

    fn metric(&self, name: &str) -> u64 {
        metric(&self.http, name)
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    fn term(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_until(15, "serve to stop on SIGTERM", || {
            self.child.try_wait().expect("try_wait").is_some()
        });
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a metric on `http`'s `/metrics` (no auth).
fn metric(http: &str, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).expect("connect");
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// A device made, activated and set up (three events in the log).
fn configured(broker: &Broker, out: &Path, serial: &str) -> Made {
    let factory = broker.data.join("factory-default.toml");
    let m = make(&factory, &[], &broker.device, out, serial, &[]);
    let o = activate_and_set_up(broker, &m);
    assert!(o.contains("committed"), "{o}");
    m
}

fn head(broker: &Broker) -> u64 {
    broker.get("/v1/stats")["last_seq"].as_u64().unwrap()
}

/// The projector has applied everything the broker has.
fn caught_up(p: &Serve, broker: &Broker) {
    let h = head(broker);
    wait_until(30, &format!("the projector to reach seq {h}"), || {
        p.last_seq() == h
    });
}

/// The answers that must be the same from both projectors.
fn same_views(p: &Serve, broker: &Broker, devices: &[&Made]) {
    for d in devices {
        let path = format!("/v1/devices/{}/history", d.id);
        assert_eq!(p.get(&path), broker.get(&path), "{path}");
        let path = format!("/v1/devices/{}", d.id);
        assert_eq!(p.get(&path), broker.get(&path), "{path}");
    }
    assert_eq!(p.get("/v1/graph"), broker.get("/v1/graph"));
    assert_eq!(p.get("/v1/devices"), broker.get("/v1/devices"));
    assert_eq!(
        p.get("/v1/replay?as_of=3&view=devices"),
        broker.get("/v1/replay?as_of=3&view=devices")
    );
}

#[test]
fn serve_catches_up_follows_live_and_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let devices = dir.path().join("devices");
    let pdata = dir.path().join("projector");

    // Before the projector exists: caught up through the replay service.
    let a = configured(&broker, &devices, "SN-PS-A");
    let p = Serve::start(&broker, &pdata);
    assert_eq!(p.resumed_from, 0);
    caught_up(&p, &broker);
    assert!(p.metric("pairbus_projector_replay_requests_total") >= 1);
    same_views(&p, &broker, &[&a]);

    // While it runs: live on the log topic.
    let b = configured(&broker, &devices, "SN-PS-B");
    let o = agent(&a.identity, &["action", "login"]);
    assert!(o.contains("committed"), "{o}");
    caught_up(&p, &broker);
    same_views(&p, &broker, &[&a, &b]);
    assert_eq!(p.metric("pairbus_projector_chain_errors_total"), 0);
    assert_eq!(p.metric("pairbus_projector_garbage_total"), 0);

    // Killed; more is committed; restarted: resumes from its checkpoint and catches up.
    let before = head(&broker);
    p.kill9();
    let c = configured(&broker, &devices, "SN-PS-C");
    agent(&b.identity, &["action", "voice_recording"]);
    let p = Serve::start(&broker, &pdata);
    assert!(
        p.resumed_from > 0 && p.resumed_from <= before,
        "resumed from {} (head was {before})",
        p.resumed_from
    );
    caught_up(&p, &broker);
    same_views(&p, &broker, &[&a, &b, &c]);
    assert_eq!(
        p.get("/v1/stats")["devices"],
        broker.get("/v1/stats")["devices"]
    );

    // A clean stop saves the checkpoint: the next start resumes from the head.
    let h = head(&broker);
    p.term();
    let p = Serve::start(&broker, &pdata);
    assert_eq!(p.resumed_from, h);
    caught_up(&p, &broker);
    same_views(&p, &broker, &[&a, &b, &c]);
}

#[test]
fn serve_reconnects_after_a_broker_restart_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let devices = dir.path().join("devices");
    let (device, operator) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let broker = Broker::start_at(&data, &device, &operator);
    let a = configured(&broker, &devices, "SN-PS-R1");
    let p = Serve::start(&broker, &dir.path().join("projector"));
    caught_up(&p, &broker);
    let requests = p.metric("pairbus_projector_replay_requests_total");

    // The broker goes away and comes back on the same addresses with more in its log.
    broker.stop();
    let broker = Broker::start_at(&data, &device, &operator);
    let b = configured(&broker, &devices, "SN-PS-R2");
    agent(&a.identity, &["action", "login"]);
    caught_up(&p, &broker);
    assert!(p.metric("pairbus_projector_replay_requests_total") > requests);
    same_views(&p, &broker, &[&a, &b]);
}

/// One `device.action` of `m` with the given per-device `seq`, sealed with `key_of`'s key.
fn action(m: &Made, seq: u64, key_of: &Kid, data: &Path) -> Vec<u8> {
    let device = DeviceId::parse(&m.id).unwrap();
    let ev = Event {
        id: EventId(*uuid::Uuid::now_v7().as_bytes()),
        src: device.kid(),
        seq,
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        device,
        body: Body::Action(Action {
            action: "login".into(),
            metadata: Metadata::new(),
            ip: None,
            user_agent: None,
        }),
    };
    pairbus_schemas::seal(&ev, &fleet_root(data).derive(key_of))
}

fn codes(alerts: &Value, id: &str) -> Vec<String> {
    alerts
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["device"] == id)
        .map(|a| a["code"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn refusals_appear_in_the_alerts_of_both_projectors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let m = configured(&broker, &dir.path().join("devices"), "SN-PS-CLONE");
    let p = Serve::start(&broker, &dir.path().join("projector"));
    caught_up(&p, &broker);

    // The operators' audit topic, subscribed before anything is refused.
    let operator = broker.data.join("operator-admin.toml");
    let token = agent(&operator, &["token"]);
    let (host, port) = broker.operator.rsplit_once(':').unwrap();
    // Line-buffered (coreutils' stdbuf): its SUBACK line must arrive before it exits.
    let mut sub = Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            host,
            "-p",
            port,
            "-i",
            "operator:admin-alerts",
        ])
        .args(["-u", "operator:admin", "-P", token.trim()])
        .args(["-t", "pairbus/v1/audit/alerts", "-C", "2", "-W", "30", "-d"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (mosquitto-clients) runs");
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("SUBACK") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "mosquitto_sub ended");
    }

    // A clone reuses the device's seq 1 (its setup) for another event; a forger has no key.
    let kid = Kid::parse(&format!("device:{}", m.id)).unwrap();
    let dev_token = agent(&m.identity, &["token"]);
    let topic = format!("pairbus/v1/in/device/{}", m.id);
    let clone = action(&m, 1, &kid, &broker.data);
    raw_publish(
        &broker.device,
        &kid.to_string(),
        &kid.to_string(),
        dev_token.trim(),
        &topic,
        &clone,
    );
    let other = Kid::parse("device:0123456789abcdef").unwrap();
    let forged = action(&m, 2, &other, &broker.data);
    raw_publish(
        &broker.device,
        &kid.to_string(),
        &kid.to_string(),
        dev_token.trim(),
        &topic,
        &forged,
    );

    let want = |alerts: &Value| {
        let c = codes(alerts, &m.id);
        c.contains(&"seq_conflict".to_owned()) && c.contains(&"rejected".to_owned())
    };
    wait_until(20, "the refusals in the broker's alerts", || {
        want(&broker.get("/v1/alerts"))
    });
    wait_until(
        20,
        "the refusals in the standalone projector's alerts",
        || want(&p.get("/v1/alerts")),
    );
    let alerts = p.get("/v1/alerts");
    let clone_alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == "seq_conflict")
        .unwrap();
    assert!(
        clone_alert["detail"]
            .as_str()
            .unwrap()
            .contains("possible cloned device"),
        "{clone_alert}"
    );
    assert_eq!(clone_alert["seq"], 0, "not a log position");
    let bad_mac = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["code"] == "rejected")
        .unwrap();
    assert!(
        bad_mac["detail"].as_str().unwrap().contains("bad_mac"),
        "{bad_mac}"
    );
    assert_eq!(
        p.get("/v1/stats")["alerts"]["seq_conflict"],
        broker.get("/v1/stats")["alerts"]["seq_conflict"]
    );

    // And on the audit topic.
    let mut payloads = Vec::new();
    let mut all = Vec::new();
    for l in out.lines() {
        let l = l.unwrap();
        all.push(l.clone());
        if l.starts_with('{') {
            payloads.push(serde_json::from_str::<Value>(&l).unwrap());
        }
    }
    let _ = sub.wait();
    let published: Vec<&str> = payloads
        .iter()
        .map(|v| v["code"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(published, vec!["seq_conflict", "rejected"], "{all:?}");

    // rumqttd has no topic ACLs: any operator-plane client can write on the log topic. Garbage
    // is counted and dropped; a well-formed record that is not the broker's is never applied.
    let h = head(&broker);
    let op_token = agent(&operator, &["token"]);
    let hostile = |payload: &[u8]| {
        raw_publish(
            &broker.operator,
            "operator:admin-hostile",
            "operator:admin",
            op_token.trim(),
            "pairbus/v1/log",
            payload,
        )
    };
    hostile(b"garbage");
    let next = pairbus_schemas::Record::chain([7; 32], h + 1, 1, b"forged".to_vec());
    hostile(&next.encode());
    let ahead = pairbus_schemas::Record::chain([7; 32], h + 5, 1, b"forged".to_vec());
    hostile(&ahead.encode());
    wait_until(20, "the garbage to be counted", || {
        let (g, c) = (
            p.metric("pairbus_projector_garbage_total"),
            p.metric("pairbus_projector_chain_errors_total"),
        );
        eprintln!(
            "garbage {g}, chain errors {c}, requests {}, gaps {}, dups {}",
            p.metric("pairbus_projector_replay_requests_total"),
            p.metric("pairbus_projector_gaps_total"),
            p.metric("pairbus_projector_duplicates_total")
        );
        g == 1 && c == 2
    });
    agent(&m.identity, &["action", "login"]);
    caught_up(&p, &broker);
    same_views(&p, &broker, &[&m]);
    assert_eq!(
        p.get("/v1/stats")["last_seq"],
        broker.get("/v1/stats")["last_seq"]
    );
}

/// The views of the embedded projector that a restart must keep.
fn embedded_views(broker: &Broker, devices: &[&Made]) -> Vec<Value> {
    let mut v = vec![
        broker.get("/v1/devices"),
        broker.get("/v1/graph"),
        broker.get("/v1/alerts"),
        broker.get("/v1/stats"),
    ];
    for d in devices {
        v.push(broker.get(&format!("/v1/devices/{}/history", d.id)));
    }
    v
}

#[test]
fn the_embedded_projections_resume_from_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let devices = dir.path().join("devices");
    let broker = Broker::start(&data);
    assert_eq!(
        metric(&broker.http, "pairbus_projections_resumed_from_seq"),
        0
    );
    let a = configured(&broker, &devices, "SN-EMB-A");
    agent(&a.identity, &["action", "login"]);
    let views = embedded_views(&broker, &[&a]);
    let h = head(&broker);

    // A clean stop saves the checkpoint: nothing is folded again at start.
    broker.stop();
    let broker = Broker::start(&data);
    assert_eq!(
        metric(&broker.http, "pairbus_projections_resumed_from_seq"),
        h
    );
    assert_eq!(
        metric(&broker.http, "pairbus_projections_folded_at_start"),
        0
    );
    assert_eq!(embedded_views(&broker, &[&a]), views);

    // Killed: at most the records after the last save are folded again, and the views are
    // those of the whole log.
    let b = configured(&broker, &devices, "SN-EMB-B");
    let views = embedded_views(&broker, &[&a, &b]);
    let h2 = head(&broker);
    drop(broker); // SIGKILL
    let broker = Broker::start(&data);
    let from = metric(&broker.http, "pairbus_projections_resumed_from_seq");
    assert!(
        (h..=h2).contains(&from),
        "resumed from {from}, not in {h}..={h2}"
    );
    assert_eq!(
        metric(&broker.http, "pairbus_projections_folded_at_start"),
        h2 - from
    );
    assert_eq!(embedded_views(&broker, &[&a, &b]), views);
}
