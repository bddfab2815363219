//! Shared helpers for the tests that run a whole [`Bus`] in-process on ephemeral loopback
//! ports: start it, connect MQTT clients, feed it a signed log, and talk HTTP to it.
//!
//! (`ingest_mqtt.rs` still has its own copies of several of these; it can switch to them,
//! minding that [`http_get`] here answers an [`HttpReply`].)
#![allow(dead_code)]

use pairbus_broker::bus::{Bus, BusSettings};
use pairbus_broker::ingest::IngestSettings;
use pairbus_broker::log::LogStore;
use pairbus_schemas::{Kid, PrincipalKind, RootSecret, Topic, Unverified, MAX_EVENT_SIZE};
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A bus on `127.0.0.1:0` for both planes and HTTP, data in `dir`.
pub fn start(dir: &std::path::Path, root: &RootSecret) -> Bus {
    start_with(dir, root, IngestSettings::default())
}

/// [`start`] with these ingest settings.
pub fn start_with(dir: &std::path::Path, root: &RootSecret, ingest: IngestSettings) -> Bus {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Bus::start(
        BusSettings {
            data_dir: dir.to_owned(),
            device_listen: any,
            operator_listen: any,
            http_listen: any,
            ingest,
        },
        root.clone(),
    )
    .unwrap()
}

/// An MQTT client connected (CONNACK received) as `kid` with `password`.
pub async fn connect(
    addr: SocketAddr,
    client_id: &str,
    kid: &Kid,
    password: &str,
) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", addr.port());
    opts.set_credentials(kid.to_string(), password);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => continue,
            other => panic!("{client_id}: no CONNACK: {other:?}"),
        }
    }
    (client, ev)
}

/// Subscribes and waits for the SUBACK.
pub async fn subscribe(client: &AsyncClient, ev: &mut EventLoop, filter: &str) {
    client
        .subscribe(filter, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let MqttEvent::Incoming(Packet::SubAck(_)) = next(ev).await {
            return;
        }
    }
}

/// The next MQTT event (10 s at most).
pub async fn next(ev: &mut EventLoop) -> MqttEvent {
    tokio::time::timeout(Duration::from_secs(10), ev.poll())
        .await
        .expect("timed out waiting for MQTT")
        .expect("MQTT error")
}

/// The next PUBLISH received: (topic, payload).
pub async fn next_publish(ev: &mut EventLoop) -> (String, Vec<u8>) {
    loop {
        if let MqttEvent::Incoming(Packet::Publish(p)) = next(ev).await {
            return (p.topic, p.payload.to_vec());
        }
    }
}

/// Drives a client's event loop in the background and hands over what it receives.
pub fn collect(mut ev: EventLoop) -> tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(p)) = e {
                if tx.send((p.topic, p.payload.to_vec())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// `operator:admin`'s bearer credential (`<kid>:<token>`), valid ten minutes.
pub fn operator_bearer(root: &RootSecret) -> String {
    let op = Kid::parse("operator:admin").unwrap();
    format!(
        "{op}:{}",
        root.derive(&op).mint_token(&op, now_secs() + 600)
    )
}

/// Publishes each signed event (COSE_Mac0 bytes) on `pairbus/v1/in/<its signer>`, from a
/// client connected as that signer on its plane, and waits for each to be in the log before
/// the next (so the log keeps their order). Every event must be accepted by ingest.
pub async fn publish_in_order(bus: &Bus, root: &RootSecret, events: &[Vec<u8>]) {
    let mut clients: HashMap<Kid, AsyncClient> = HashMap::new();
    for (i, bytes) in events.iter().enumerate() {
        let kid = Unverified::parse(bytes, MAX_EVENT_SIZE)
            .unwrap()
            .kid()
            .clone();
        if !clients.contains_key(&kid) {
            let token = root.derive(&kid).mint_token(&kid, now_secs() + 600);
            let addr = if kid.kind() == PrincipalKind::Device {
                bus.device_addr()
            } else {
                bus.operator_addr()
            };
            let (c, mut ev) = connect(addr, &kid.to_string(), &kid, &token).await;
            tokio::spawn(async move { while ev.poll().await.is_ok() {} });
            clients.insert(kid.clone(), c);
        }
        clients[&kid]
            .publish(
                Topic::In(kid.clone()).to_string(),
                rumqttc::QoS::AtLeastOnce,
                false,
                bytes.clone(),
            )
            .await
            .unwrap();
        let want = i as u64 + 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while bus.log().head().seq < want {
            assert!(
                Instant::now() < deadline,
                "event {i} (by {kid}) was not committed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased: `name: value`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 GET over a plain socket (`bearer` = `<kid>:<token>`).
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> HttpReply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_owned(),
    }
}
