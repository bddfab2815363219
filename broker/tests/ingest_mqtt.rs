//! The broker end to end over real MQTT on ephemeral loopback ports: a device connects with a
//! token, publishes signed events and gets durable confirmations; forged, replayed, misrouted
//! and conflicting events are refused with their codes; an operator reads the log topic.

mod bus_common;

use bus_common::{collect, connect, http_get, next_publish, now_secs, start, subscribe};
use pairbus_broker::bus::Bus;
use pairbus_broker::log::LogStore;
use pairbus_schemas::event::{Action, Body, Metadata};
use pairbus_schemas::messages::{CommitStatus, Committed, RejectReason, Rejection};
use pairbus_schemas::{seal, DeviceId, Event, EventId, Kid, Record, RootSecret, Topic};
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet, QoS};
use std::time::Duration;

fn action(device: &DeviceId, seq: u64, n: u8) -> Event {
    Event {
        id: EventId::new_v7(1_767_225_600_000 + seq, [n; 10]),
        src: device.kid(),
        seq,
        ts: 1_767_225_600_000 + seq,
        device: device.clone(),
        body: Body::Action(Action {
            action: "login".into(),
            metadata: Metadata::new(),
            ip: None,
            user_agent: None,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_events_are_confirmed_only_after_commit_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([42; 32]);
    let bus = start(dir.path(), &root);
    let device = DeviceId::parse("0123456789abcdef").unwrap();
    let kid = device.kid();
    let key = root.derive(&kid);

    // Operator listening to the log and the device's rejections.
    let op = Kid::parse("operator:admin").unwrap();
    let op_token = root.derive(&op).mint_token(&op, now_secs() + 600);
    let (op_client, mut op_ev) = connect(bus.operator_addr(), "op-1", &op, &op_token).await;
    subscribe(&op_client, &mut op_ev, "pairbus/v1/log").await;
    subscribe(&op_client, &mut op_ev, "pairbus/v1/checkpoints").await;

    // The device.
    let token = key.mint_token(&kid, now_secs() + 600);
    let (client, mut ev) = connect(bus.device_addr(), &kid.to_string(), &kid, &token).await;
    subscribe(&client, &mut ev, &Topic::Committed(kid.clone()).to_string()).await;
    subscribe(&client, &mut ev, &Topic::Rejected(kid.clone()).to_string()).await;
    let in_topic = Topic::In(kid.clone()).to_string();

    // 1. A good event: committed, seq 1, and on the log topic with a valid hash.
    let e1 = action(&device, 1, 1);
    client
        .publish(&in_topic, QoS::AtLeastOnce, false, seal(&e1, &key))
        .await
        .unwrap();
    let (topic, payload) = next_publish(&mut ev).await;
    assert_eq!(topic, Topic::Committed(kid.clone()).to_string());
    let c = Committed::decode(&payload).unwrap();
    assert_eq!((c.id, c.seq, c.status), (e1.id, 1, CommitStatus::Committed));
    assert_eq!(bus.log().head().seq, 1, "confirmed means in the log");
    let (topic, payload) = next_publish(&mut op_ev).await;
    assert_eq!(topic, "pairbus/v1/log");
    let rec = Record::decode(&payload, 70_000).unwrap();
    assert!(rec.hash_is_valid());
    assert_eq!(rec.event, seal(&e1, &key));
    // The first commit also signed a checkpoint, published retained for auditors.
    let (topic, payload) = next_publish(&mut op_ev).await;
    assert_eq!(topic, "pairbus/v1/checkpoints");
    let cp = pairbus_schemas::messages::Checkpoint::decode(&payload).unwrap();
    assert_eq!((cp.seq, cp.hash), (1, rec.hash));
    assert!(cp.verify(&root.derive(&Kid::broker())));

    // 2. The same event again: already_committed, stored once.
    client
        .publish(&in_topic, QoS::AtLeastOnce, false, seal(&e1, &key))
        .await
        .unwrap();
    let c = Committed::decode(&next_publish(&mut ev).await.1).unwrap();
    assert_eq!(
        (c.id, c.seq, c.status),
        (e1.id, 1, CommitStatus::AlreadyCommitted)
    );

    // 3. A forged event (wrong key): bad_mac, nothing stored.
    let forged = seal(
        &action(&device, 2, 2),
        &root.derive(&Kid::parse("operator:admin").unwrap()),
    );
    client
        .publish(&in_topic, QoS::AtLeastOnce, false, forged)
        .await
        .unwrap();
    let (topic, payload) = next_publish(&mut ev).await;
    assert_eq!(topic, Topic::Rejected(kid.clone()).to_string());
    let r: Rejection = serde_json::from_str(std::str::from_utf8(&payload).unwrap()).unwrap();
    assert_eq!(r.reason, RejectReason::BadMac, "{r:?}");

    // 4. The same seq with a different id: seq_conflict.
    let clone = action(&device, 1, 9);
    client
        .publish(&in_topic, QoS::AtLeastOnce, false, seal(&clone, &key))
        .await
        .unwrap();
    let r: Rejection = serde_json::from_slice(&next_publish(&mut ev).await.1).unwrap();
    assert_eq!(r.reason, RejectReason::SeqConflict);
    assert_eq!(r.event_id.as_deref(), Some(clone.id.to_hex().as_str()));

    // 5. Garbage: malformed.
    client
        .publish(&in_topic, QoS::AtLeastOnce, false, vec![1, 2, 3])
        .await
        .unwrap();
    let r: Rejection = serde_json::from_slice(&next_publish(&mut ev).await.1).unwrap();
    assert_eq!(r.reason, RejectReason::Malformed);

    assert_eq!(bus.log().head().seq, 1);
    // The refusals journal over HTTP, for operators only.
    assert_eq!(http_get(bus.http_addr(), "/v1/refusals", None).status, 401);
    let bearer = format!("{op}:{op_token}");
    let reply = http_get(bus.http_addr(), "/v1/refusals", Some(&bearer));
    let (status, body) = (reply.status, reply.body);
    assert_eq!(status, 200, "{body}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let reasons: Vec<&str> = entries
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["bad_mac", "seq_conflict", "malformed"], "{body}");
    assert_eq!(entries[0]["principal"], kid.to_string());
    let reply = http_get(bus.http_addr(), "/metrics", None);
    let (status, metrics) = (reply.status, reply.body);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("pairbus_group_commit_seconds_count"),
        "{metrics}"
    );
    let rendered = bus.metrics().render();
    assert!(
        rendered.contains("pairbus_events_rejected_total{reason=\"bad_mac\"} 1"),
        "{rendered}"
    );
    assert!(
        rendered.contains("pairbus_events_committed_total 1"),
        "{rendered}"
    );
    bus.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_valid_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([43; 32]);
    let bus = start(dir.path(), &root);
    let kid = DeviceId::parse("0123456789abcdef").unwrap().kid();
    let bad = [
        (
            "expired",
            kid.to_string(),
            root.derive(&kid).mint_token(&kid, now_secs() - 1),
        ),
        (
            "wrong key",
            kid.to_string(),
            RootSecret::from_bytes([1; 32])
                .derive(&kid)
                .mint_token(&kid, now_secs() + 60),
        ),
        (
            "client id is not the kid",
            "someone-else".into(),
            root.derive(&kid).mint_token(&kid, now_secs() + 60),
        ),
    ];
    for (what, client_id, password) in bad {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", bus.device_addr().port());
        opts.set_credentials(kid.to_string(), password);
        let (_c, mut ev) = AsyncClient::new(opts, 10);
        let r = tokio::time::timeout(Duration::from_secs(5), ev.poll())
            .await
            .unwrap();
        assert!(
            !matches!(r, Ok(MqttEvent::Incoming(Packet::ConnAck(_)))),
            "{what}: connection accepted"
        );
    }
    // No credentials at all.
    let opts = MqttOptions::new("anon", "127.0.0.1", bus.device_addr().port());
    let (_c, mut ev) = AsyncClient::new(opts, 10);
    let r = tokio::time::timeout(Duration::from_secs(5), ev.poll())
        .await
        .unwrap();
    assert!(
        !matches!(r, Ok(MqttEvent::Incoming(Packet::ConnAck(_)))),
        "anonymous accepted"
    );
    // Counters saw them.
    let refused = bus.metrics().auth_refused();
    assert!(
        refused.get("token_expired").copied().unwrap_or(0) >= 1,
        "{refused:?}"
    );
    assert!(
        refused.get("token_bad_mac").copied().unwrap_or(0) >= 1,
        "{refused:?}"
    );
    assert!(
        refused.get("client_id_mismatch").copied().unwrap_or(0) >= 1,
        "{refused:?}"
    );
    bus.shutdown();
}

async fn device_client(
    bus: &Bus,
    root: &RootSecret,
    device: &DeviceId,
) -> (AsyncClient, EventLoop) {
    let kid = device.kid();
    let token = root.derive(&kid).mint_token(&kid, now_secs() + 600);
    connect(bus.device_addr(), &kid.to_string(), &kid, &token).await
}

async fn operator_client(
    bus: &Bus,
    root: &RootSecret,
    client_id: &str,
) -> (AsyncClient, EventLoop) {
    let op = Kid::parse("operator:admin").unwrap();
    let token = root.derive(&op).mint_token(&op, now_secs() + 600);
    connect(bus.operator_addr(), client_id, &op, &token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_streams_matching_records_then_the_end_marker_and_devices_never_see_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([44; 32]);
    let bus = start(dir.path(), &root);
    let a = DeviceId::parse("00000000000000aa").unwrap();
    let b = DeviceId::parse("00000000000000bb").unwrap();
    let (ca, mut ea) = device_client(&bus, &root, &a).await;
    // Device a listens to everything it can on its plane.
    subscribe(&ca, &mut ea, "pairbus/v1/#").await;
    let (cb, mut eb) = device_client(&bus, &root, &b).await;
    subscribe(&cb, &mut eb, &Topic::Committed(b.kid()).to_string()).await;
    for seq in 1..=3 {
        for (n, d, c, e) in [(0u8, &a, &ca, &mut ea), (100u8, &b, &cb, &mut eb)] {
            let ev = action(d, seq, n + seq as u8);
            c.publish(
                Topic::In(d.kid()).to_string(),
                QoS::AtLeastOnce,
                false,
                seal(&ev, &root.derive(&d.kid())),
            )
            .await
            .unwrap();
            // Wait for this device's confirmation.
            loop {
                let (t, _) = next_publish(e).await;
                if t == Topic::Committed(d.kid()).to_string() {
                    break;
                }
            }
        }
    }
    assert_eq!(bus.log().head().seq, 6);

    let (op, mut oe) = operator_client(&bus, &root, "investigator").await;
    subscribe(&op, &mut oe, "pairbus/v1/replay/reply/q1").await;
    let req = r#"{"request_id":"q1","from_seq":1,"device":"00000000000000bb"}"#;
    op.publish("pairbus/v1/replay/request", QoS::AtLeastOnce, false, req)
        .await
        .unwrap();
    let mut seqs = Vec::new();
    loop {
        let (t, p) = next_publish(&mut oe).await;
        assert_eq!(t, "pairbus/v1/replay/reply/q1");
        if let Ok(end) = pairbus_schemas::messages::ReplayEnd::decode(&p) {
            assert_eq!(end.count, 3);
            break;
        }
        let r = Record::decode(&p, 70_000).unwrap();
        assert!(r.hash_is_valid());
        seqs.push(r.seq);
    }
    assert_eq!(seqs, vec![2, 4, 6], "b's records, in order");

    // Device a saw its confirmations and b's (the known limit of rumqttd 0.20: no read ACLs
    // on the device plane), but never the log, audit or replay topics: they are not on its plane.
    let mut seen = Vec::new();
    while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(300), ea.poll()).await {
        if let MqttEvent::Incoming(Packet::Publish(p)) = ev {
            seen.push(p.topic);
        }
    }
    assert!(
        seen.iter()
            .all(|t| !t.contains("/log") && !t.contains("/audit/") && !t.contains("/replay/")),
        "{seen:?}"
    );
    bus.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_garbage_does_not_stop_others_from_committing() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([45; 32]);
    let bus = start(dir.path(), &root);
    let attacker = DeviceId::parse("00000000000000ee").unwrap();
    let honest = DeviceId::parse("0000000000000001").unwrap();
    let (ca, mut ea) = device_client(&bus, &root, &attacker).await;
    // Drive the attacker's connection concurrently, or its request queue fills and blocks.
    let poller = tokio::spawn(async move { while ea.poll().await.is_ok() {} });
    let flood = tokio::spawn(async move {
        let topic = Topic::In(attacker.kid()).to_string();
        for i in 0..3000u32 {
            let mut junk = vec![0xd1u8; 200];
            junk[1..5].copy_from_slice(&i.to_be_bytes());
            if ca
                .publish(&topic, QoS::AtMostOnce, false, junk)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (ch, mut eh) = device_client(&bus, &root, &honest).await;
    subscribe(&ch, &mut eh, &Topic::Committed(honest.kid()).to_string()).await;
    let key = root.derive(&honest.kid());
    for seq in 1..=50 {
        let ev = action(&honest, seq, 1);
        ch.publish(
            Topic::In(honest.kid()).to_string(),
            QoS::AtLeastOnce,
            false,
            seal(&ev, &key),
        )
        .await
        .unwrap();
    }
    let mut confirmed = std::collections::HashSet::new();
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        while confirmed.len() < 50 {
            if let MqttEvent::Incoming(Packet::Publish(p)) = eh.poll().await.expect("MQTT error") {
                confirmed.insert(Committed::decode(&p.payload).unwrap().id);
            }
        }
    })
    .await;
    if all.is_err() {
        let m = bus.metrics();
        panic!(
            "{} of 50 honest events confirmed; log head {}, router dropped {}, refused {:?}",
            confirmed.len(),
            bus.log().head().seq,
            m.router_dropped.load(std::sync::atomic::Ordering::Relaxed),
            m.rejected()
        );
    }
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .unwrap()
        .unwrap();
    poller.abort();
    let m = bus.metrics();
    assert!(m.rejected().get("malformed").copied().unwrap_or(0) > 0);
    assert_eq!(
        bus.log().head().seq,
        50,
        "only the honest events are stored"
    );
    bus.shutdown();
}

async fn recv(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) -> (String, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("client gone")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_relayed_to_the_device_and_audit_views_are_published() {
    use pairbus_schemas::event::{Manufactured, Revoked};
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([46; 32]);
    let bus = start(dir.path(), &root);
    let serial_hash = root.serial_hash("SN-42");
    let device = pairbus_schemas::keys::device_id_from_serial_hash(&serial_hash);
    let factory = Kid::parse("factory:line-1").unwrap();
    let operator = Kid::parse("operator:admin").unwrap();

    let (dc, mut de) = device_client(&bus, &root, &device).await;
    subscribe(&dc, &mut de, &Topic::Cmd(device.clone()).to_string()).await;
    let mut device_rx = collect(de);
    let (oc, mut oe) = operator_client(&bus, &root, "auditor").await;
    subscribe(
        &oc,
        &mut oe,
        &Topic::AuditDevice(device.clone()).to_string(),
    )
    .await;
    let mut operator_rx = collect(oe);
    let ftoken = root.derive(&factory).mint_token(&factory, now_secs() + 600);
    let (fc, fe) = connect(bus.operator_addr(), "factory-1", &factory, &ftoken).await;
    let _factory_rx = collect(fe);

    let made = Event {
        id: EventId::new_v7(1_767_225_600_000, [1; 10]),
        src: factory.clone(),
        seq: 1,
        ts: 1_767_225_600_000,
        device: device.clone(),
        body: Body::Manufactured(Manufactured {
            serial_hash,
            device_type: "sensor".into(),
            model: "S1".into(),
            manufacturer: "Acme".into(),
            name: "Sensor 42".into(),
            components: vec![],
            qr_expires_at: 1_767_225_600_000 + 1_000_000,
        }),
    };
    fc.publish(
        Topic::In(factory.clone()).to_string(),
        QoS::AtLeastOnce,
        false,
        seal(&made, &root.derive(&factory)),
    )
    .await
    .unwrap();
    // The retained device card appears on the operator plane.
    let (topic, card) = recv(&mut operator_rx).await;
    assert_eq!(topic, Topic::AuditDevice(device.clone()).to_string());
    let card: serde_json::Value = serde_json::from_slice(&card).unwrap();
    assert_eq!(card["model"], "S1", "{card}");

    let revoke = Event {
        id: EventId::new_v7(1_767_225_600_001, [2; 10]),
        src: operator.clone(),
        seq: 1,
        ts: 1_767_225_600_001,
        device: device.clone(),
        body: Body::Revoked(Revoked {
            reason: "stolen".into(),
        }),
    };
    let revoke_bytes = seal(&revoke, &root.derive(&operator));
    oc.publish(
        Topic::In(operator.clone()).to_string(),
        QoS::AtLeastOnce,
        false,
        revoke_bytes.clone(),
    )
    .await
    .unwrap();
    // The device hears of its revocation on its cmd/ topic: the event exactly as signed.
    let (topic, payload) = recv(&mut device_rx).await;
    assert_eq!(topic, Topic::Cmd(device.clone()).to_string());
    assert_eq!(payload, revoke_bytes);
    // A late subscriber gets the retained card, now showing the revocation.
    let (lc, mut le) = operator_client(&bus, &root, "late").await;
    subscribe(
        &lc,
        &mut le,
        &Topic::AuditDevice(device.clone()).to_string(),
    )
    .await;
    let mut late_rx = collect(le);
    // The retained card, or (if it was read just before the update landed) the update itself.
    loop {
        let (_, card) = recv(&mut late_rx).await;
        let card: serde_json::Value = serde_json::from_slice(&card).unwrap();
        if card.to_string().contains("stolen") {
            break;
        }
        assert_eq!(card["model"], "S1", "{card}");
    }
    bus.shutdown();
}

/// Publishes `count` signed actions of `device` (seqs 1..=count, `tag` in their ids) at QoS 1
/// without waiting for anything; the task returns the client when all are handed to it.
fn publish_burst(
    client: AsyncClient,
    root: &RootSecret,
    device: &DeviceId,
    count: u64,
    tag: u8,
) -> tokio::task::JoinHandle<AsyncClient> {
    let key = root.derive(&device.kid());
    let sealed: Vec<Vec<u8>> = (1..=count)
        .map(|seq| seal(&action(device, seq, tag), &key))
        .collect();
    let topic = Topic::In(device.kid()).to_string();
    tokio::spawn(async move {
        for payload in sealed {
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    })
}

/// A flood is slowed to the speed of the commits, never dropped: with a tiny back-pressure
/// threshold the front doors must pause many times, and still every event of four devices
/// publishing flat out is committed and confirmed, and the router dropped nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_held_back_by_the_gate_and_nothing_is_dropped() {
    use pairbus_broker::ingest::IngestSettings;
    use std::sync::atomic::Ordering::Relaxed;
    const DEVICES: u64 = 4;
    const EACH: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([46; 32]);
    let bus = bus_common::start_with(
        dir.path(),
        &root,
        IngestSettings {
            pause_at: 64,
            resume_at: 16,
            ..IngestSettings::default()
        },
    );
    let mut devices = Vec::new();
    for d in 1..=DEVICES {
        let device = DeviceId::parse(&format!("{d:016x}")).unwrap();
        let (client, mut ev) = device_client(&bus, &root, &device).await;
        subscribe(
            &client,
            &mut ev,
            &Topic::Committed(device.kid()).to_string(),
        )
        .await;
        devices.push((device, client, ev));
    }
    let mut tasks = Vec::new();
    for (n, (device, client, mut ev)) in devices.into_iter().enumerate() {
        // Distinct ids per device (the id's random part); this task counts confirmations.
        let publisher = publish_burst(client, &root, &device, EACH, n as u8 + 1);
        tasks.push(tokio::spawn(async move {
            let mut seqs = std::collections::BTreeSet::new();
            let done = tokio::time::timeout(Duration::from_secs(120), async {
                while (seqs.len() as u64) < EACH {
                    if let MqttEvent::Incoming(Packet::Publish(p)) =
                        ev.poll().await.expect("MQTT error")
                    {
                        let c = Committed::decode(&p.payload).unwrap();
                        assert_eq!(c.status, CommitStatus::Committed);
                        seqs.insert(c.seq);
                    }
                }
            })
            .await;
            let _client = publisher.await.unwrap();
            (done.is_ok(), seqs.len() as u64)
        }));
    }
    for t in tasks {
        let (done, confirmed) = t.await.unwrap();
        let m = bus.metrics();
        assert!(
            done,
            "{confirmed} of {EACH} confirmed; log head {}, router dropped {}, pending {}",
            bus.log().head().seq,
            m.router_dropped.load(Relaxed),
            m.backpressure.get().unwrap().pending()
        );
    }
    let m = bus.metrics();
    let gate = m.backpressure.get().expect("the bus made a gate");
    assert_eq!(bus.log().head().seq, DEVICES * EACH);
    assert_eq!(m.router_dropped.load(Relaxed), 0);
    assert!(gate.pauses() > 0, "the flood never reached the threshold");
    // The committer settles a batch just after handing its confirmations to the router.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gate.pending() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gate.pending(), 0, "every event read was settled");
    assert!(gate.is_open());
    bus.shutdown();
}

/// Graceful shutdown commits what rumqttd acknowledged: a device publishes a burst, and the
/// bus is shut down the moment the last PUBACK arrives (most events are then still queued
/// for a group commit). Reopened, the log holds every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_every_acknowledged_event() {
    use pairbus_broker::log::{LogConfig, SledLog};
    const N: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let root = RootSecret::from_bytes([47; 32]);
    let bus = start(dir.path(), &root);
    let device = DeviceId::parse("00000000000000a1").unwrap();
    let (client, mut ev) = device_client(&bus, &root, &device).await;
    let publisher = publish_burst(client, &root, &device, N, 9);
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while acked < N {
            if let MqttEvent::Incoming(Packet::PubAck(_)) = ev.poll().await.expect("MQTT error") {
                acked += 1;
            }
        }
    })
    .await
    .expect("every publish acknowledged");
    let committed_before = bus.log().head().seq;
    bus.shutdown();
    drop(publisher.await.unwrap());
    let log = SledLog::open(LogConfig::new(dir.path().join("log")), root.clone()).unwrap();
    assert_eq!(
        log.head().seq,
        N,
        "committed before shutdown: {committed_before}; the rest must be committed by it"
    );
    assert!(log.verify().unwrap().is_ok());
}
