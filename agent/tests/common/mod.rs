//! A plain embedded rumqttd playing the pairbus broker for the agent's tests: a local link
//! reads `pairbus/v1/in/+/+`, verifies each event with keys derived from the test root,
//! deduplicates by id, refuses seq conflicts and revoked devices, publishes a `Committed` for
//! each (optionally dropping the first confirmation of every id, to force re-sends), and
//! relays events to devices' `cmd/` topics as DESIGN.md says.
#![allow(dead_code)]

use pairbus_schemas::event::Body;
use pairbus_schemas::ids::{DeviceId, EventId, Kid, PrincipalKind};
use pairbus_schemas::messages::{CommitStatus, Committed, RejectReason, Rejection};
use pairbus_schemas::{open_event, Event, RootSecret, Topic, MAX_EVENT_SIZE};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> RootSecret {
    RootSecret::from_bytes([42; 32])
}

/// A free ephemeral port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Default)]
pub struct FakeLog {
    /// Appended events, in log order.
    pub events: Vec<Event>,
    /// Every `in/` message received (re-sends included).
    pub received: usize,
    /// `already_committed` answers sent.
    pub duplicates: usize,
    /// Rejections sent (reason, event id).
    pub rejections: Vec<(RejectReason, Option<EventId>)>,
    /// Presence payloads seen, by device.
    pub presence: HashMap<String, Vec<String>>,
    /// Ids whose first confirmation was dropped.
    dropped: HashSet<EventId>,
    by_id: HashMap<EventId, u64>,
    by_kid_seq: HashMap<(Kid, u64), EventId>,
    offers: HashMap<[u8; 16], (DeviceId, DeviceId)>,
    managers: HashMap<DeviceId, DeviceId>,
    commands: HashMap<EventId, DeviceId>,
    pub revoked: HashSet<Kid>,
    /// Tokens seen by the auth handler: (client id, username, ok).
    pub logins: Vec<(String, String, bool)>,
}

impl FakeLog {
    pub fn of_type(&self, t: &str) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| e.event_type().as_str() == t)
            .collect()
    }
}

pub struct TestBroker {
    pub port: u16,
    pub log: Arc<Mutex<FakeLog>>,
}

impl TestBroker {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until `f(log)` holds, or panics after `secs`.
    pub fn wait_for(&self, secs: u64, what: &str, f: impl Fn(&FakeLog) -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if f(&self.log.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.log.lock().unwrap();
        panic!(
            "timed out waiting for {what}: {} events, {} received, rejections {:?}",
            log.events.len(),
            log.received,
            log.rejections
        );
    }
}

#[derive(Clone, Copy, Default)]
pub struct FakeOptions {
    /// Drop the first confirmation of every event id (the agent must re-send).
    pub drop_first_confirmation: bool,
}

/// Starts rumqttd on 127.0.0.1:`port` with token authentication, and the fake ingest.
pub fn start_broker(port: u16, opts: FakeOptions) -> TestBroker {
    let log = Arc::new(Mutex::new(FakeLog::default()));
    let mut server = rumqttd::ServerSettings {
        name: format!("test-v4-{port}"),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 5000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let auth_log = log.clone();
    server.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = Kid::parse(&user)
            .map(|kid| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let id_ok = kid.kind() != PrincipalKind::Device || client_id == user;
                id_ok && root().derive(&kid).check_token(&kid, &pass, now).is_ok()
            })
            .unwrap_or(false);
        auth_log.lock().unwrap().logins.push((client_id, user, ok));
        async move { ok }
    });
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 16,
            ..Default::default()
        },
        v4: Some([("v4".to_owned(), server)].into()),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    let (mut tx, mut rx) = broker.link("pairbus-test-ingest").unwrap();
    std::thread::spawn(move || {
        let _ = broker.start();
    });
    tx.subscribe("pairbus/v1/in/+/+").unwrap();
    tx.subscribe("pairbus/v1/presence/+").unwrap();
    let ingest_log = log.clone();
    std::thread::spawn(move || loop {
        let n = match rx.recv() {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(_) => return,
        };
        if let rumqttd::Notification::Forward(f) = n {
            let topic = String::from_utf8_lossy(&f.publish.topic).to_string();
            let out = ingest(
                &mut ingest_log.lock().unwrap(),
                &topic,
                &f.publish.payload,
                opts,
            );
            for (t, p) in out {
                let _ = tx.publish(t, p);
            }
        }
    });
    // Wait until the listener accepts connections.
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "rumqttd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    TestBroker { port, log }
}

fn reject(
    kid: &Kid,
    reason: RejectReason,
    detail: String,
    id: Option<EventId>,
) -> (String, Vec<u8>) {
    (
        Topic::Rejected(kid.clone()).to_string(),
        Rejection {
            reason,
            detail,
            event_id: id.map(|i| i.to_hex()),
        }
        .to_json()
        .into_bytes(),
    )
}

fn ingest(
    log: &mut FakeLog,
    topic: &str,
    payload: &[u8],
    opts: FakeOptions,
) -> Vec<(String, Vec<u8>)> {
    let kid = match Topic::parse(topic) {
        Ok(Topic::In(k)) => k,
        Ok(Topic::Presence(d)) => {
            log.presence
                .entry(d.to_string())
                .or_default()
                .push(String::from_utf8_lossy(payload).to_string());
            return vec![];
        }
        _ => return vec![],
    };
    log.received += 1;
    let r = root();
    let ev = match open_event(payload, MAX_EVENT_SIZE, |k| Some(r.derive(k))) {
        Ok(ev) => ev,
        Err(e) => {
            log.rejections.push((e.reason(), None));
            return vec![reject(&kid, e.reason(), e.to_string(), None)];
        }
    };
    if ev.src != kid {
        log.rejections
            .push((RejectReason::TopicMismatch, Some(ev.id)));
        return vec![reject(
            &kid,
            RejectReason::TopicMismatch,
            "kid".into(),
            Some(ev.id),
        )];
    }
    let confirm = |log: &mut FakeLog, seq: u64, status| {
        if opts.drop_first_confirmation && log.dropped.insert(ev.id) {
            return None;
        }
        Some((
            Topic::Committed(kid.clone()).to_string(),
            Committed {
                id: ev.id,
                seq,
                status,
            }
            .encode(),
        ))
    };
    if let Some(seq) = log.by_id.get(&ev.id).copied() {
        log.duplicates += 1;
        return confirm(log, seq, CommitStatus::AlreadyCommitted)
            .into_iter()
            .collect();
    }
    if log.revoked.contains(&kid) {
        log.rejections.push((RejectReason::Revoked, Some(ev.id)));
        return vec![reject(
            &kid,
            RejectReason::Revoked,
            "revoked".into(),
            Some(ev.id),
        )];
    }
    if log.by_kid_seq.contains_key(&(kid.clone(), ev.seq)) {
        log.rejections
            .push((RejectReason::SeqConflict, Some(ev.id)));
        return vec![reject(
            &kid,
            RejectReason::SeqConflict,
            format!("seq {}", ev.seq),
            Some(ev.id),
        )];
    }
    log.events.push(ev.clone());
    let log_seq = log.events.len() as u64;
    log.by_id.insert(ev.id, log_seq);
    log.by_kid_seq.insert((kid.clone(), ev.seq), ev.id);
    let mut out: Vec<(String, Vec<u8>)> = confirm(log, log_seq, CommitStatus::Committed)
        .into_iter()
        .collect();
    let relay = |d: &DeviceId| (Topic::Cmd(d.clone()).to_string(), payload.to_vec());
    let from = ev.device.clone();
    match &ev.body {
        Body::PairingRequested(p) => out.push(relay(&p.manager)),
        Body::PairingOffered(o) => {
            log.offers.insert(o.nonce, (from.clone(), o.sensor.clone()));
            out.push(relay(&o.sensor));
        }
        Body::PairingAccepted(a) => {
            if let Some((m, s)) = log.offers.get(&a.nonce).cloned() {
                if s == from && m == a.manager {
                    log.managers.insert(s, m);
                }
            }
            out.push(relay(&a.manager));
        }
        Body::PairingDeclined(e) | Body::PairingCancelled(e) => {
            if let Some((m, s)) = log.offers.get(&e.nonce).cloned() {
                if matches!(ev.body, Body::PairingCancelled(_)) && log.managers.get(&s) == Some(&m)
                {
                    log.managers.remove(&s);
                }
                out.push(relay(if from == m { &s } else { &m }));
            }
        }
        Body::PairingUnpaired(u) => {
            if log.managers.get(&u.peer) == Some(&from) {
                log.managers.remove(&u.peer);
            }
            if log.managers.get(&from) == Some(&u.peer) {
                log.managers.remove(&from);
            }
            out.push(relay(&u.peer));
            if ev.src.kind() == PrincipalKind::Operator {
                out.push(relay(&from));
            }
        }
        // Relayed only if the issuer manages the target at this point of the log.
        Body::CommandIssued(c) if log.managers.get(&c.target) == Some(&from) => {
            log.commands.insert(ev.id, from.clone());
            out.push(relay(&c.target));
        }
        Body::CommandCompleted(c) => {
            if let Some(issuer) = log.commands.get(&c.command_id) {
                out.push(relay(issuer));
            }
        }
        Body::Revoked(_) => {
            log.revoked.insert(from.kid());
            out.push(relay(&from));
        }
        Body::SetupCompleted(_) | Body::ModeChanged(_)
            if ev.src.kind() == PrincipalKind::Operator =>
        {
            out.push(relay(&from))
        }
        _ => {}
    }
    out
}

/// Publishes raw bytes on `topic` as an authenticated operator (rumqttd 0.20 has no topic
/// ACLs: this is how a replayed or forged relay reaches a device's `cmd/` topic).
pub async fn raw_publish(port: u16, topic: &str, payload: Vec<u8>) {
    let kid = Kid::parse("operator:hostile").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut o = rumqttc::MqttOptions::new("operator-hostile", "127.0.0.1", port);
    o.set_credentials(
        kid.to_string(),
        root().derive(&kid).mint_token(&kid, now + 60),
    );
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_secs(1), el.poll()).await
        {
            break;
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
}
