//! `kill -9` of `pairbus-broker serve` under load, then `verify` and a restart: every event
//! that had been confirmed on its `committed/` topic is in the log, and the chain verifies.

use pairbus_schemas::event::{Action, Body, Metadata};
use pairbus_schemas::messages::Committed;
use pairbus_schemas::{
    open_event, seal, DeviceId, Event, EventId, RootSecret, Topic, MAX_EVENT_SIZE,
};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_pairbus-broker");

fn root() -> RootSecret {
    RootSecret::from_bytes([77; 32])
}

/// Starts `serve` on free ports and returns the child and the device plane port.
fn serve(data: &Path) -> (Child, u16) {
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(data)
        .args([
            "--device-listen",
            "127.0.0.1:0",
            "--operator-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("PAIRBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let device = pairbus_broker::ready::Ready::parse(&line)
        .unwrap_or_else(|| panic!("unexpected ready line: {line:?}"))
        .device;
    assert_eq!(device.ip().to_string(), "127.0.0.1", "{line:?}");
    let port = device.port();
    (child, port)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Publishes events of `device` from `first_seq` on until the connection breaks; every
/// confirmed id goes into `confirmed`.
async fn load(
    port: u16,
    device: DeviceId,
    first_seq: u64,
    confirmed: Arc<Mutex<HashSet<EventId>>>,
) -> u64 {
    let kid = device.kid();
    let key = root().derive(&kid);
    let mut opts = MqttOptions::new(kid.to_string(), "127.0.0.1", port);
    opts.set_credentials(kid.to_string(), key.mint_token(&kid, now() / 1000 + 600));
    let (client, mut ev) = AsyncClient::new(opts, 1000);
    client
        .subscribe(Topic::Committed(kid.clone()).to_string(), QoS::AtLeastOnce)
        .await
        .unwrap();
    let topic = Topic::In(kid.clone()).to_string();
    let mut seq = first_seq;
    let mut in_flight = 0u32;
    loop {
        while in_flight < 200 {
            let e = Event {
                id: EventId::new_v7(
                    now(),
                    [
                        seq as u8,
                        (seq >> 8) as u8,
                        device.as_str().as_bytes()[15],
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        1,
                    ],
                ),
                src: kid.clone(),
                seq,
                ts: now(),
                device: device.clone(),
                body: Body::Action(Action {
                    action: "login".into(),
                    metadata: Metadata::new(),
                    ip: None,
                    user_agent: None,
                }),
            };
            if client
                .try_publish(&topic, QoS::AtLeastOnce, false, seal(&e, &key))
                .is_err()
            {
                break;
            }
            seq += 1;
            in_flight += 1;
        }
        match ev.poll().await {
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                if let Ok(c) = Committed::decode(&p.payload) {
                    confirmed.lock().unwrap().insert(c.id);
                    in_flight = in_flight.saturating_sub(1);
                }
            }
            Ok(_) => {}
            Err(_) => return seq,
        }
    }
}

fn stored_ids(data: &Path) -> HashSet<EventId> {
    let out = Command::new(BIN)
        .args(["export", "--format", "jsonl", "--data"])
        .arg(data)
        .env("PAIRBUS_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let cose = hex::decode(v["event"].as_str().unwrap()).unwrap();
            open_event(&cose, MAX_EVENT_SIZE, |k| Some(root().derive(k)))
                .unwrap()
                .id
        })
        .collect()
}

fn verify(data: &Path) {
    let out = Command::new(BIN)
        .args(["verify", "--data"])
        .arg(data)
        .env("PAIRBUS_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify failed after kill -9: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_confirmed_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("fleet.key"), root().to_hex().as_bytes()).unwrap();
    let devices: Vec<DeviceId> = (1..=4)
        .map(|i| DeviceId::parse(&format!("00000000000000{i:02x}")).unwrap())
        .collect();
    let confirmed = Arc::new(Mutex::new(HashSet::new()));
    let mut next_seq = vec![1u64; devices.len()];
    for round in 0..3u64 {
        let (mut child, port) = serve(&data);
        let tasks: Vec<_> = devices
            .iter()
            .zip(&next_seq)
            .map(|(d, s)| tokio::spawn(load(port, d.clone(), *s, confirmed.clone())))
            .collect();
        // Kill under load: once this round has had confirmations (a loaded machine can take
        // seconds to start `serve` and connect), then a little later, mid-stream.
        let before = confirmed.lock().unwrap().len();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while confirmed.lock().unwrap().len() == before && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + 150 * round)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for (i, t) in tasks.into_iter().enumerate() {
            // Seqs that were sent but not confirmed may or may not be stored: continue after them.
            next_seq[i] = tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .unwrap()
                .unwrap();
        }
        verify(&data);
        let stored = stored_ids(&data);
        let confirmed = confirmed.lock().unwrap();
        assert!(
            confirmed.len() > before,
            "round {round}: nothing was confirmed before the kill"
        );
        let lost: Vec<_> = confirmed.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: confirmed but not stored: {lost:?}"
        );
        eprintln!(
            "round {round}: {} confirmed, {} stored",
            confirmed.len(),
            stored.len()
        );
    }
    // And a final restart serves the same log.
    let (mut child, _) = serve(&data);
    child.kill().unwrap();
    child.wait().unwrap();
    verify(&data);
}
