//! The projector's query API served by the broker, end to end: a signed story (two devices
//! made, activated, set up and paired, actions, a seq gap, a second activation, a device left
//! unconfigured) goes in over MQTT; every `/v1/` view must be exactly the offline fold's answer
//! over the broker's own log; errors are typed; and `pairbus-projector --api` prints what
//! `pairbus-projector --export` prints for the same log.

mod bus_common;

use bus_common::{http_get, now_ms, operator_bearer, publish_in_order, start};
use pairbus_broker::bus::Bus;
use pairbus_broker::log::LogStore;
use pairbus_projector::query::{self, Query};
use pairbus_projector::testkit::LogBuilder;
use pairbus_projector::{Config, Projector};
use pairbus_schemas::event::{Action, Metadata};
use pairbus_schemas::{Body, DeviceId, Record, RootSecret};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The devices of the story.
struct Story {
    manager: DeviceId,
    sensor: DeviceId,
    unconfigured: DeviceId,
}

/// The story as signed events (test-vector root secret), timed now so that the broker's
/// clock keeps the pairing offer and the QR codes valid.
fn story() -> (Vec<Vec<u8>>, Story) {
    let mut b = LogBuilder::new();
    b.now = now_ms();
    let manager = b.configured(2, "alice");
    let sensor = b.configured(1, "alice");
    b.pair(&manager, &sensor);
    b.action(&sensor, "login");
    b.action(&sensor, "voice_recording");
    // Device seq skips one number: a gap on the trail and a `seq_gap` alert.
    b.push_with(
        &sensor.kid(),
        &sensor,
        Body::Action(Action {
            action: "login".into(),
            metadata: Metadata::new(),
            ip: None,
            user_agent: None,
        }),
        1,
    );
    // A second activation: refused (`already_activated`), stays on the trail.
    b.activate(1, "mallory", false);
    let unconfigured = b.manufacture(3);
    let events = b.records.iter().map(|r| r.event.clone()).collect();
    (
        events,
        Story {
            manager,
            sensor,
            unconfigured,
        },
    )
}

/// A bus fed with the story; its log's records.
async fn running(dir: &Path) -> (Bus, RootSecret, Vec<Record>, Story) {
    let root = LogBuilder::new().root();
    let bus = start(dir, &root);
    let (events, story) = story();
    publish_in_order(&bus, &root, &events).await;
    let head = bus.log().head().seq;
    assert_eq!(head, events.len() as u64);
    let records = bus.log().range(1..head + 1).unwrap();
    (bus, root, records, story)
}

/// What the offline fold answers for `q` over `records`, as JSON.
fn offline(root: &RootSecret, records: &[Record], q: &Query) -> Value {
    let p = Projector::new(Config::default(), root.clone()).rebuild(records);
    serde_json::to_value(query::run(&p, records, q).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_is_the_offline_answer_and_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, root, records, st) = running(dir.path()).await;
    let addr = bus.http_addr();
    let bearer = operator_bearer(&root);
    let get = |path: &str| {
        let r = http_get(addr, path, Some(&bearer));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r
    };
    let (m, s, u) = (
        st.manager.to_string(),
        st.sensor.to_string(),
        st.unconfigured.to_string(),
    );
    let t_mid = records[records.len() / 2].received_at;
    let cases = [
        ("/v1/devices".to_owned(), Query::Devices { state: None }),
        (
            "/v1/devices?state=paired".into(),
            Query::Devices {
                state: Some(pairbus_projector::DeviceState::Paired),
            },
        ),
        (format!("/v1/devices/{m}"), Query::Device { id: m.clone() }),
        (format!("/v1/devices/{u}"), Query::Device { id: u.clone() }),
        (
            format!("/v1/devices/{s}/history"),
            Query::History {
                id: s.clone(),
                since: None,
                until: None,
                types: vec![],
            },
        ),
        (
            format!(
                "/v1/devices/{s}/history?type=device.action&type=pairing.accepted&until={t_mid}"
            ),
            Query::History {
                id: s.clone(),
                since: None,
                until: Some(t_mid),
                types: vec!["device.action".into(), "pairing.accepted".into()],
            },
        ),
        (
            format!("/v1/devices/{s}/history?since={t_mid}&type=device.action,device.activated"),
            Query::History {
                id: s.clone(),
                since: Some(t_mid),
                until: None,
                types: vec!["device.action".into(), "device.activated".into()],
            },
        ),
        ("/v1/graph".into(), Query::Graph),
        ("/v1/graph?format=json".into(), Query::Graph),
        ("/v1/alerts".into(), Query::Alerts),
        ("/v1/stats".into(), Query::Stats),
    ];
    for (path, q) in &cases {
        let r = get(path);
        assert_eq!(r.json(), offline(&root, &records, q), "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{path}: {:?}",
            r.headers
        );
    }

    // The story is in the views (not only equal to the fold: the fold saw what we meant).
    let devices = get("/v1/devices").json();
    assert_eq!(devices.as_array().unwrap().len(), 3, "{devices}");
    let card = get(&format!("/v1/devices/{m}")).json();
    assert_eq!(card["state"], "paired", "{card}");
    assert_eq!(card["sensors"], serde_json::json!([s]), "{card}");
    let h = get(&format!("/v1/devices/{s}/history")).json();
    let entries = h["entries"].as_array().unwrap();
    assert_eq!(h["device"], s.as_str());
    assert!(entries
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(entries.iter().all(|e| e["details"].is_object()), "{h}");
    assert!(entries.iter().any(|e| e["gap"].is_object()), "{h}");
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["status"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{h}");
    assert_eq!(refused[0]["refusal"]["code"], "already_activated");
    assert_eq!(refused[0]["details"]["owner"], "mallory");
    let g = get("/v1/graph").json();
    assert_eq!(g["edges"][0]["manager"], m.as_str(), "{g}");
    let alerts = get("/v1/alerts").json().to_string();
    assert!(
        alerts.contains("seq_gap") && alerts.contains("already_activated"),
        "{alerts}"
    );
    let stats = get("/v1/stats").json();
    assert_eq!(stats["last_seq"], records.len() as u64);
    assert_eq!(stats["devices"]["paired"], 2, "{stats}");
    let actions: u64 = stats["actions"]["login"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(actions, 2, "{stats}");

    // Graph renderings.
    let dot = get("/v1/graph?format=dot");
    assert!(dot
        .header("content-type")
        .unwrap()
        .starts_with("text/vnd.graphviz"));
    assert!(
        dot.body.contains(&format!("\"{m}\" -> \"{s}\"")),
        "{}",
        dot.body
    );
    let text = get("/v1/graph?format=text");
    assert!(text
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        text.body.contains(&m) && text.body.contains(&s),
        "{}",
        text.body
    );

    // Replay: before the pairing was accepted, by seq and by time (RFC 3339 too).
    let pr = Projector::new(Config::default(), root.clone());
    let accepted = records
        .iter()
        .position(|r| event_type(&records, r.seq) == "pairing.accepted")
        .unwrap();
    let before = records[accepted - 1].seq;
    let r = get(&format!("/v1/replay?as_of={before}&view=device&id={s}"));
    let then = query::as_of_seq(&pr, &records, before);
    assert_eq!(
        r.json(),
        serde_json::to_value(
            query::run(&then, &query::NoRecords, &Query::Device { id: s.clone() }).unwrap()
        )
        .unwrap()
    );
    assert_eq!(r.json()["state"], "configured");
    assert_eq!(
        r.header("pairbus-as-of-seq"),
        Some(before.to_string().as_str())
    );
    assert_eq!(
        r.header("pairbus-as-of-received-at"),
        Some(records[accepted - 1].received_at.to_string().as_str())
    );
    for view in ["graph", "devices"] {
        let r = get(&format!("/v1/replay?as_of={before}&view={view}"));
        let q = if view == "graph" {
            Query::Graph
        } else {
            Query::Devices { state: None }
        };
        let want = serde_json::to_value(query::run(&then, &query::NoRecords, &q).unwrap()).unwrap();
        assert_eq!(r.json(), want, "{view}");
    }
    let t = records[accepted - 1].received_at;
    let rfc = rfc3339(t);
    let r = get(&format!("/v1/replay?as_of={rfc}&view=devices"));
    let then = query::as_of_time(&pr, &records, t);
    assert_eq!(
        r.json(),
        serde_json::to_value(
            query::run(&then, &query::NoRecords, &Query::Devices { state: None }).unwrap()
        )
        .unwrap()
    );
    // As of now (and beyond the head): the live views.
    let r = get("/v1/replay?as_of=1000000&view=graph");
    assert_eq!(r.json(), get("/v1/graph").json());
    assert_eq!(
        r.header("pairbus-as-of-seq"),
        Some(records.len().to_string().as_str())
    );
    let r = get("/v1/replay?as_of=0&view=devices");
    assert_eq!(r.json(), serde_json::json!([]));
    assert_eq!(r.header("pairbus-as-of-received-at"), None);

    // Errors: typed JSON.
    let err = |path: &str, bearer: Option<&str>, status: u16, code: &str| {
        let r = http_get(addr, path, bearer);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["code"], code, "{path}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    };
    let b = Some(bearer.as_str());
    for path in [
        "/v1/devices",
        "/v1/stats",
        "/v1/graph?format=dot",
        "/v1/replay?as_of=1&view=devices",
    ] {
        err(path, None, 401, "unauthorized");
    }
    let device_bearer = {
        let k = st.sensor.kid();
        format!(
            "{k}:{}",
            root.derive(&k).mint_token(&k, bus_common::now_secs() + 60)
        )
    };
    err("/v1/devices", Some(&device_bearer), 401, "unauthorized");
    err("/v1/devices/00000000000000ff", b, 404, "unknown_device");
    err("/v1/nothing-here", b, 404, "not_found");
    err(
        "/v1/devices/00000000000000ff/history",
        b,
        404,
        "unknown_device",
    );
    err(
        "/v1/replay?as_of=1&view=device&id=00000000000000ff",
        b,
        404,
        "unknown_device",
    );
    for path in [
        "/v1/devices/not-a-device".to_owned(),
        "/v1/devices?state=sleepy".into(),
        "/v1/devices?colour=red".into(),
        "/v1/devices?state=paired&state=revoked".into(),
        format!("/v1/devices/{s}/history?since=yesterday"),
        format!("/v1/devices/{s}/history?type=device.nap"),
        "/v1/graph?format=png".into(),
        "/v1/replay".into(),
        "/v1/replay?as_of=3".into(),
        "/v1/replay?as_of=3&view=device".into(),
        format!("/v1/replay?as_of=3&view=graph&id={s}"),
        "/v1/replay?as_of=soon&view=graph".into(),
        "/v1/replay?as_of=3&view=everything".into(),
    ] {
        err(&path, b, 400, "bad_request");
    }
    bus.shutdown();
}

/// The wire type of record `seq`'s event.
fn event_type(records: &[Record], seq: u64) -> &'static str {
    let r = records.iter().find(|r| r.seq == seq).unwrap();
    pairbus_projector::decode::decode_event(&r.event)
        .unwrap()
        .body
        .event_type()
        .as_str()
}

/// Unix ms as RFC 3339 with milliseconds and `Z` (the CLI's and the API's accepted form).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The `pairbus-projector` binary next to this test's (built if missing: only the broker
/// package's targets are built by `cargo test -p pairbus-broker`).
fn projector_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    let dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let bin = dir.join(format!("pairbus-projector{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "pairbus-projector", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building pairbus-projector"
        );
    }
    assert!(bin.exists(), "{} not found", bin.display());
    bin
}

/// Runs the projector CLI; (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(projector_bin())
        .args(args)
        .env_remove("PAIRBUS_API")
        .env_remove("PAIRBUS_TOKEN")
        .env_remove("PAIRBUS_FLEET_KEY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_over_the_api_prints_what_it_prints_over_an_export() {
    let dir = tempfile::tempdir().unwrap();
    let (bus, root, records, st) = running(&dir.path().join("bus")).await;
    // The same log as an export file, and the fleet key the offline fold needs.
    let export = dir.path().join("log.cbor");
    let mut f = std::fs::File::create(&export).unwrap();
    pairbus_broker::export::export(
        &**bus.log(),
        1,
        pairbus_broker::export::Format::CborSeq,
        &mut f,
    )
    .unwrap();
    drop(f);
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, root.to_hex().as_bytes()).unwrap();
    let url = format!("http://{}", bus.http_addr());
    let bearer = format!("Bearer {}", operator_bearer(&root));
    let (export, key) = (export.to_str().unwrap(), key.to_str().unwrap());
    let (m, s) = (st.manager.to_string(), st.sensor.to_string());
    let before = (records.len() / 2).to_string();
    let t = rfc3339(records[3].received_at);
    let commands: Vec<Vec<&str>> = vec![
        vec!["devices"],
        vec!["devices", "--state", "paired"],
        vec!["device", &m],
        vec!["history", &s],
        vec!["history", &s, "--type", "device.action", "--since", &t],
        vec!["graph"],
        vec!["graph", "--format", "dot"],
        vec!["graph", "--format", "json"],
        vec!["alerts"],
        vec!["stats"],
        vec!["replay", "--as-of", &before, "devices"],
        vec!["replay", "--as-of", &before, "device", &s],
        vec!["replay", "--as-of", &t, "graph"],
        vec!["replay", "--as-of", "0", "devices"],
    ];
    for c in &commands {
        for json in [false, true] {
            let mut off = vec!["--export", export, "--fleet-key", key];
            let mut on = vec!["--api", &url, "--token", &bearer];
            off.extend(c);
            on.extend(c);
            if json {
                off.push("--json");
                on.push("--json");
            }
            let (ok_off, out_off, err_off) = cli(&off);
            assert!(ok_off, "{off:?}: {err_off}");
            let (ok_on, out_on, err_on) = cli(&on);
            assert!(ok_on, "{on:?}: {err_on}");
            assert_eq!(out_on, out_off, "{c:?} json={json}");
            assert!(!out_on.is_empty(), "{c:?}");
        }
    }
    // `devices --json` is the API's JSON.
    let (_, out, _) = cli(&["--api", &url, "--token", &bearer, "devices", "--json"]);
    let api = http_get(
        bus.http_addr(),
        "/v1/devices",
        Some(&operator_bearer(&root)),
    );
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), api.json());
    // Errors come back with the API's message and a failing exit code.
    let (ok, _, err) = cli(&["--api", &url, "--token", "operator:admin:1.00", "stats"]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = cli(&[
        "--api",
        &url,
        "--token",
        &bearer,
        "device",
        "00000000000000ff",
    ]);
    assert!(
        !ok && err.contains("404") && err.contains("unknown device"),
        "{err}"
    );
    let (ok, _, err) = cli(&["--api", &url, "devices"]);
    assert!(!ok && err.contains("--token"), "{err}");
    bus.shutdown();
}
