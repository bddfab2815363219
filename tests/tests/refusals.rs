//! Refusals against the real broker: forged, expired, reused and malformed QR codes are refused
//! by the operator's agent with distinct, clear errors (and nothing is published for them); a
//! pairing offer to a sensor that already has a manager, a replayed offer (reused nonce) and an
//! expired offer are declined by the sensor's agent with `pairing.declined` in the log.
//!
//! The offers reach the sensor through a hostile but authenticated device-plane client writing
//! straight onto the sensor's `cmd/` topic (rumqttd 0.20 has no topic ACLs, README "Known
//! limits"): through the CLI none of the three can be provoked, because the broker's embedded
//! projector refuses a `pairing.requested` for a managed sensor and does not relay it, and a
//! manager always makes a fresh nonce valid for 10 minutes.

use pairbus_schemas::event::{Body, PairingOffered};
use pairbus_schemas::identity::Identity;
use pairbus_schemas::{DeviceId, Event, EventId, Kid, RootSecret};
use pairbus_tests::{
    activate_and_set_up, agent, agent_output, fleet_root, make, point_identity, queued,
    raw_publish, wait_online, wait_until, Broker, Made, Running,
};
use std::path::Path;
use std::time::Duration;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs `activate` and expects a failure; returns stderr.
fn activate_fails(operator: &Path, qr: &str, extra: &[&str]) -> String {
    let mut args = vec!["--wait", "0", "activate", "--qr", qr, "--owner", "eve"];
    args.extend(extra);
    let o = agent_output(operator, &args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "activate should be refused: {}\n{err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        queued(&String::from_utf8_lossy(&o.stdout)).is_empty(),
        "nothing queued"
    );
    err
}

/// The QR text with one base45 digit of its last chunk changed by one, so that it still decodes
/// (same length, no overflow) but the last byte of the COSE MAC tag differs.
fn tamper(qr: &str) -> String {
    const B45: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
    let body = qr.strip_prefix("PB1:").expect("PB1: prefix");
    let mut bytes = body.as_bytes().to_vec();
    // The least significant digit of the last chunk (3 digits, or 2 for a final odd byte).
    let i = match bytes.len() % 3 {
        0 => bytes.len() - 3,
        2 => bytes.len() - 2,
        _ => panic!("not base45: {qr}"),
    };
    let d = B45
        .iter()
        .position(|&c| c == bytes[i])
        .expect("base45 digit");
    bytes[i] = B45[if d > 0 { d - 1 } else { d + 1 }];
    format!("PB1:{}", String::from_utf8(bytes).unwrap())
}

/// A factory identity of another fleet, and that fleet's key file.
fn foreign_factory(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let other = RootSecret::from_bytes([0x5a; 32]);
    let kid = Kid::parse("factory:default").unwrap();
    let id = Identity {
        key: other.derive(&kid),
        kid,
        broker: "127.0.0.1:1".into(),
    };
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("factory-default.toml");
    std::fs::write(&file, id.to_toml().as_bytes()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = dir.join("fleet.key");
    std::fs::write(&key, other.to_hex().as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (file, key)
}

#[test]
fn forged_expired_reused_and_malformed_qr_codes_are_refused_by_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let factory = broker.data.join("factory-default.toml");
    let operator = broker.data.join("operator-admin.toml");
    let fleet = broker.data.join("fleet.key");
    let fleet_s = fleet.to_str().unwrap();
    let devices = dir.path().join("devices");
    let good = make(&factory, &[], &broker.device, &devices, "SN-QR-GOOD", &[]);
    let tampered = make(&factory, &[], &broker.device, &devices, "SN-QR-TAMPER", &[]);
    let short = make(
        &factory,
        &[],
        &broker.device,
        &devices,
        "SN-QR-SHORT",
        &["--ttl", "1"],
    );

    // A good code activates once (checked with the fleet key)...
    let o = agent(
        &operator,
        &[
            "activate",
            "--qr",
            good.png.to_str().unwrap(),
            "--owner",
            "alice",
            "--fleet-key",
            fleet_s,
        ],
    );
    assert!(o.contains("factory MAC checked"), "{o}");
    assert!(o.contains("delivered: 1 event(s) committed"), "{o}");
    // ... and is refused the second time, from the image as from its text.
    for qr in [good.png.to_str().unwrap(), good.qr.as_str()] {
        let e = activate_fails(&operator, qr, &[]);
        assert!(e.contains("reused QR code"), "{e}");
    }

    // Another operator cannot know that the code was used (agent/README.md "Reused QR codes"):
    // its activation is published, and the broker's projector refuses it.
    let bob = dir.path().join("operator-bob.toml");
    {
        use std::os::unix::fs::PermissionsExt;
        let kid = Kid::parse("operator:bob").unwrap();
        let id = Identity {
            key: fleet_root(&broker.data).derive(&kid),
            kid,
            broker: broker.operator.clone(),
        };
        std::fs::write(&bob, id.to_toml().as_bytes()).unwrap();
        std::fs::set_permissions(&bob, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = agent(&bob, &["activate", "--qr", &good.qr, "--owner", "mallory"]);
    assert!(o.contains("delivered: 1 event(s) committed"), "{o}");
    wait_until(15, "the projector's verdict on the reused code", || {
        broker.history(&good.id).iter().any(|e| {
            e["type"] == "device.activated"
                && e["src"] == "operator:bob"
                && e["refusal"]["code"] == "already_activated"
        })
    });

    // Forged: a genuine code with its MAC tag altered, and a code of another fleet's factory.
    let forged = tamper(&tampered.qr);
    assert_ne!(forged, tampered.qr);
    let e = activate_fails(&operator, &forged, &["--fleet-key", fleet_s]);
    assert!(e.contains("forged QR code"), "{e}");
    let (other_factory, _other_key) = foreign_factory(&dir.path().join("other-fleet"));
    let foreign = make(
        &other_factory,
        &["--wait", "0"],
        "127.0.0.1:1",
        &dir.path().join("other-devices"),
        "SN-QR-FOREIGN",
        &[],
    );
    let e = activate_fails(&operator, &foreign.qr, &["--fleet-key", fleet_s]);
    assert!(e.contains("forged QR code"), "{e}");

    // Expired: a one-second lifetime, two seconds later.
    std::thread::sleep(Duration::from_millis(2100));
    let e = activate_fails(&operator, short.png.to_str().unwrap(), &[]);
    assert!(e.contains("expired QR code"), "{e}");

    // Malformed, and a broken image.
    let e = activate_fails(&operator, "PB1:NOTBASE45!!", &[]);
    assert!(e.contains("malformed QR code"), "{e}");
    let e = activate_fails(&operator, &tampered.qr[..tampered.qr.len() - 7], &[]);
    assert!(e.contains("malformed QR code"), "a truncated code: {e}");
    let not_a_qr = dir.path().join("blank.png");
    std::fs::write(&not_a_qr, &std::fs::read(&good.png).unwrap()[..60]).unwrap();
    let e = activate_fails(&operator, not_a_qr.to_str().unwrap(), &[]);
    assert!(e.contains("no readable QR code"), "{e}");

    // Without the fleet key an operator cannot see the forgery (agent/README.md "Key custody"):
    // it says so, publishes, and the broker's projector refuses the activation as forged.
    let o = agent(&operator, &["activate", "--qr", &forged, "--owner", "eve"]);
    assert!(o.contains("factory MAC not checked here"), "{o}");
    wait_until(15, "the projector's verdict on the forged code", || {
        broker.history(&tampered.id).iter().any(|e| {
            e["type"] == "device.activated"
                && e["status"] == "refused"
                && e["refusal"]["code"] == "forged_qr"
        })
    });

    // Exactly three activations were published: the good one, bob's reuse, and the forged
    // one checked without the key; none for the refused codes.
    let log = broker.stop_and_read_log();
    let activated: Vec<String> = log
        .iter()
        .filter(|l| matches!(l.event.body, Body::Activated(_)))
        .map(|l| l.event.device.to_string())
        .collect();
    assert_eq!(
        activated,
        [good.id.clone(), good.id.clone(), tampered.id.clone()]
    );
}

/// An offer as the manager `from` would make it.
/// `(id, seq, ts)`: the header fields of an offer.
type Head = (EventId, u64, u64);

fn offer(from: &str, sensor: &str, (id, seq, ts): Head, nonce: [u8; 16], expires_at: u64) -> Event {
    let device = DeviceId::parse(from).unwrap();
    Event {
        id,
        src: device.kid(),
        seq,
        ts,
        device,
        body: Body::PairingOffered(PairingOffered {
            sensor: DeviceId::parse(sensor).unwrap(),
            nonce,
            expires_at,
        }),
    }
}

fn fresh_id_and_nonce() -> (EventId, [u8; 16]) {
    // Two UUIDv7s: 74 random bits each, enough for distinct test nonces.
    let id = uuid::Uuid::now_v7();
    let nonce = uuid::Uuid::now_v7();
    (EventId(*id.as_bytes()), *nonce.as_bytes())
}

/// The `pairing.declined` entries of a device's history: their reasons, in log order.
fn declines(broker: &Broker, device: &str) -> Vec<String> {
    broker
        .history(device)
        .iter()
        .filter(|e| e["type"] == "pairing.declined")
        .map(|e| e["details"]["reason"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn manager_of(broker: &Broker, device: &str) -> Option<String> {
    broker.get(&format!("/v1/devices/{device}"))["manager"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn offers_to_a_managed_sensor_with_a_reused_or_an_expired_nonce_are_declined() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let factory = broker.data.join("factory-default.toml");
    let operator = broker.data.join("operator-admin.toml");
    let devices = dir.path().join("devices");
    let root = fleet_root(&broker.data);
    let mk = |serial: &str| -> Made { make(&factory, &[], &broker.device, &devices, serial, &[]) };
    let (m, s, x, h) = (
        mk("SN-MGR"),
        mk("SN-SENSOR"),
        mk("SN-OTHER"),
        mk("SN-HOSTILE"),
    );
    for d in [&m, &s, &x] {
        activate_and_set_up(&broker, d);
    }
    let runs: Vec<Running> = [&m, &s, &x]
        .iter()
        .map(|d| {
            let r = Running::device(&d.identity);
            r.wait_ready(&d.identity);
            r
        })
        .collect();
    // Their retained presence cards tell when each is connected and subscribed to its cmd/.
    point_identity(&h.identity, &broker.device);
    for d in [&m, &s, &x] {
        wait_online(&broker.device, &h.identity, &d.id);
    }

    // m manages s.
    agent(&operator, &["pair", "--manager", &m.id, "--sensor", &s.id]);
    wait_until(20, "s managed by m", || {
        manager_of(&broker, &s.id).as_deref() == Some(m.id.as_str())
    });
    // Through the CLI, asking x to manage s is stopped at the broker: the request is committed
    // but refused by the embedded projector, and not relayed to x.
    agent(&operator, &["pair", "--manager", &x.id, "--sensor", &s.id]);
    wait_until(15, "the refused request", || {
        broker.history(&x.id).iter().any(|e| {
            e["type"] == "pairing.requested" && e["refusal"]["code"] == "sensor_has_manager"
        })
    });

    // A hostile client (device h, authenticated) writes offers onto s's cmd/ topic.
    let h_kid = format!("device:{}", h.id);
    let mut injected = Vec::new();
    let mut publish = |ev: &Event| {
        injected.push(ev.id);
        let cose = pairbus_schemas::seal(ev, &root.derive(&ev.src));
        let token = agent(&h.identity, &["token"]);
        raw_publish(
            &broker.device,
            &h_kid,
            &h_kid,
            token.trim(),
            &format!("pairbus/v1/cmd/{}", s.id),
            &cose,
        );
    };

    // 1. An offer from x (properly signed, fresh nonce, not expired) to s, which has a manager.
    let (id, nonce) = fresh_id_and_nonce();
    publish(&offer(
        &x.id,
        &s.id,
        (id, 1000, now_ms()),
        nonce,
        now_ms() + 600_000,
    ));
    wait_until(15, "a decline by s", || {
        !declines(&broker, &s.id).is_empty()
    });
    assert_eq!(declines(&broker, &s.id), ["has_manager"]);

    // s leaves m; from now on s is pairable.
    let o = agent(&s.identity, &["unpair", "--peer", &m.id]);
    assert!(o.contains("handed to the running agent"), "{o}");
    wait_until(15, "s unpaired", || manager_of(&broker, &s.id).is_none());

    // 2. m's original offer replayed byte for byte (rebuilt from the log: same id, seq, ts,
    //    nonce and a still valid expiry): the nonce was used, so s declines it.
    let original = broker
        .history(&s.id)
        .into_iter()
        .find(|e| e["type"] == "pairing.offered")
        .expect("m's offer in s's history");
    assert_eq!(original["src"], format!("device:{}", m.id));
    let nonce: [u8; 16] = hex::decode(original["details"]["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let expires_at = original["details"]["expires_at"].as_u64().unwrap();
    assert!(expires_at > now_ms(), "the original offer has not expired");
    let replayed = offer(
        &m.id,
        &s.id,
        (
            EventId::parse(original["event_id"].as_str().unwrap()).unwrap(),
            original["src_seq"].as_u64().unwrap(),
            original["ts"].as_u64().unwrap(),
        ),
        nonce,
        expires_at,
    );
    publish(&replayed);
    wait_until(15, "a second decline by s", || {
        declines(&broker, &s.id).len() == 2
    });

    // 3. A fresh nonce but an expired offer from m.
    let (id, nonce) = fresh_id_and_nonce();
    publish(&offer(
        &m.id,
        &s.id,
        (id, 1001, now_ms() - 60_000),
        nonce,
        now_ms() - 1_000,
    ));
    wait_until(15, "a third decline by s", || {
        declines(&broker, &s.id).len() == 3
    });
    assert_eq!(
        declines(&broker, &s.id),
        ["has_manager", "nonce_reused", "expired"]
    );

    // Control: s was pairable all along (the declines were for the nonce and the expiry): a
    // real request makes x its manager.
    agent(&operator, &["pair", "--manager", &x.id, "--sensor", &s.id]);
    wait_until(20, "s managed by x", || {
        manager_of(&broker, &s.id).as_deref() == Some(x.id.as_str())
    });
    drop(runs);
    // In the log: s accepted exactly two offers (m's first, x's real one) and declined three.
    let log = broker.stop_and_read_log();
    let s_kid = format!("device:{}", s.id);
    let mut accepted = 0;
    let mut declined = Vec::new();
    for l in log.iter().filter(|l| l.event.src.to_string() == s_kid) {
        match &l.event.body {
            Body::PairingAccepted(_) => accepted += 1,
            Body::PairingDeclined(d) => declined.push(d.reason.clone()),
            _ => {}
        }
    }
    assert_eq!(accepted, 2);
    // The replay was m's logged offer itself (same event, so byte for byte the same COSE);
    // the injected offers never went through ingest.
    let logged_offer = log
        .iter()
        .find(|l| l.event.id == replayed.id)
        .expect("m's offer in the log");
    assert_eq!(logged_offer.event, replayed);
    let in_log = log
        .iter()
        .filter(|l| injected.contains(&l.event.id))
        .count();
    assert_eq!(in_log, 1, "only the replayed original is in the log");
    assert_eq!(declined, ["has_manager", "nonce_reused", "expired"]);
}
