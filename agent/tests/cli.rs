//! The `pairbus-agent` binary: kinds, factory make/batch and QR images, activation checks,
//! a SIGKILL in the middle of publishing, and an end-to-end run over a loopback broker.

mod common;

use common::{free_port, root, start_broker, FakeOptions};
use pairbus_agent::outbox::Outbox;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::ids::{EventId, Kid};
use pairbus_schemas::RootSecret;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pairbus-agent");

fn write_identity(dir: &Path, name: &str, root: &RootSecret, kid: &str, broker: &str) -> PathBuf {
    let kid = Kid::parse(kid).unwrap();
    let id = Identity {
        key: root.derive(&kid),
        kid,
        broker: broker.to_owned(),
    };
    let p = dir.join(name);
    pairbus_agent::factory::write_secret_file(&p, id.to_toml().as_bytes()).unwrap();
    p
}

fn write_fleet(dir: &Path, name: &str, root: &RootSecret) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, root.to_hex().as_bytes()).unwrap();
    p
}

fn agent(identity: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--identity")
        .arg(identity)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn fails(o: Output) -> String {
    assert!(
        !o.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `queued <type> id=<hex> seq=<n>` lines.
fn queued(out: &str) -> Vec<(String, EventId, u64)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("queued ")?;
            let mut it = rest.split_whitespace();
            let t = it.next()?.to_owned();
            let id = EventId::parse(it.next()?.strip_prefix("id=")?)?;
            let seq = it.next()?.strip_prefix("seq=")?.parse().ok()?;
            Some((t, id, seq))
        })
        .collect()
}

#[test]
fn commands_are_refused_for_the_wrong_kind_of_principal() {
    let dir = tempfile::tempdir().unwrap();
    let r = root();
    let dev = write_identity(
        dir.path(),
        "dev.toml",
        &r,
        "device:00000000000000d1",
        "127.0.0.1:1",
    );
    let op = write_identity(dir.path(), "op.toml", &r, "operator:admin", "127.0.0.1:1");
    let e = fails(agent(
        &dev,
        &[
            "make",
            "--serial",
            "X",
            "--type",
            "phone",
            "--fleet-key",
            "f",
        ],
    ));
    assert!(
        e.contains("`make` is a factory command, but this identity is device:00000000000000d1"),
        "{e}"
    );
    assert!(
        e.contains(
            "a device may run: setup, unpair, standalone, run, health, action, command, send, outbox"
        ),
        "{e}"
    );
    let e = fails(agent(&op, &["action", "login"]));
    assert!(e.contains("`action` is a device command"), "{e}");
    let e = fails(agent(
        &dev,
        &[
            "pair",
            "--manager",
            "00000000000000d1",
            "--sensor",
            "00000000000000d2",
        ],
    ));
    assert!(e.contains("`pair` is an operator command"), "{e}");
    let e = fails(agent(
        &op,
        &[
            "make",
            "--serial",
            "X",
            "--type",
            "phone",
            "--fleet-key",
            "f",
        ],
    ));
    assert!(e.contains("(an operator); an operator may run: activate, setup, pair, unpair, standalone, revoke, discover, send, outbox"), "{e}");
    let e = fails(agent(&op, &["setup", "--owner", "ann"]));
    assert!(e.contains("needs --device"), "{e}");
    let e = fails(agent(&dir.path().join("missing.toml"), &["send"]));
    assert!(e.contains("reading identity file"), "{e}");
}

#[test]
fn make_writes_identity_and_qr_images_and_activation_checks_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = root();
    let fleet = write_fleet(d, "fleet.key", &r);
    let fac = write_identity(d, "fac.toml", &r, "factory:line-1", "127.0.0.1:1");
    let op = write_identity(d, "op.toml", &r, "operator:admin", "127.0.0.1:1");
    let out_dir = d.join("made");
    let fleet_s = fleet.to_str().unwrap();
    let out = ok(agent(
        &fac,
        &[
            "--wait",
            "0",
            "make",
            "--serial",
            "SN-SECRET-1",
            "--type",
            "phone",
            "--model",
            "P1",
            "--component",
            "camera=12MP",
            "--out",
            out_dir.to_str().unwrap(),
            "--fleet-key",
            fleet_s,
        ],
    ));
    let q = queued(&out);
    assert_eq!((q[0].0.as_str(), q[0].2), ("device.manufactured", 1));
    let qr_text = out
        .lines()
        .find(|l| l.starts_with("PB1:"))
        .unwrap()
        .to_owned();
    assert!(out.contains('█'), "terminal rendering");
    let device_id = pairbus_agent::operator::check_qr(&qr_text, 0, Some(&r))
        .unwrap()
        .claims
        .device_id;
    let id_file = out_dir.join(format!("{device_id}.toml"));
    let text = std::fs::read_to_string(&id_file).unwrap();
    assert!(!text.contains("SN-SECRET-1"), "the serial is never stored");
    let dev_identity = Identity::from_toml(&text).unwrap();
    assert_eq!(
        dev_identity.key,
        r.derive(&device_id.kid()),
        "the broker can derive the same key"
    );
    assert_eq!(dev_identity.broker, "127.0.0.1:1883");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&id_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let png = out_dir.join(format!("{device_id}.png"));
    assert!(
        std::fs::read_to_string(out_dir.join(format!("{device_id}.svg")))
            .unwrap()
            .contains("<svg")
    );
    // Making the same serial twice would overwrite the identity: refused.
    let e = fails(agent(
        &fac,
        &[
            "--wait",
            "0",
            "make",
            "--serial",
            "SN-SECRET-1",
            "--type",
            "phone",
            "--out",
            out_dir.to_str().unwrap(),
            "--fleet-key",
            fleet_s,
        ],
    ));
    assert!(e.contains("File exists") || e.contains("exists"), "{e}");

    // The operator activates from the PNG (read back with rqrr), with the fleet key.
    let out = ok(agent(
        &op,
        &[
            "--wait",
            "0",
            "activate",
            "--qr",
            png.to_str().unwrap(),
            "--owner",
            "ann",
            "--ip",
            "10.0.0.7",
            "--fleet-key",
            fleet_s,
        ],
    ));
    assert!(
        out.contains(&format!("QR code ok: device {device_id}")),
        "{out}"
    );
    assert!(out.contains("factory MAC checked"), "{out}");
    let token_line = out
        .lines()
        .find(|l| l.starts_with("activation token (shown once"))
        .unwrap();
    let token = token_line.rsplit(' ').next().unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(queued(&out)[0].0, "device.activated");
    // The token itself never goes into the outbox: only its hash.
    let ob_dir = d.join("op.toml.outbox");
    {
        let ob = Outbox::open(&ob_dir).unwrap();
        let p = &ob.pending().unwrap()[0];
        assert!(!hex::encode(&p.cose).contains(token));
        assert!(!String::from_utf8_lossy(&p.cose).contains(token));
    }
    // Reused QR code.
    let e = fails(agent(
        &op,
        &[
            "--wait", "0", "activate", "--qr", &qr_text, "--owner", "eve",
        ],
    ));
    assert!(e.contains("reused QR code"), "{e}");
    // Forged: a code from a factory of another fleet.
    let other = RootSecret::from_bytes([9; 32]);
    let other_fleet = write_fleet(d, "other.key", &other);
    let other_fac = write_identity(d, "other-fac.toml", &other, "factory:line-1", "127.0.0.1:1");
    let out = ok(agent(
        &other_fac,
        &[
            "--wait",
            "0",
            "make",
            "--serial",
            "SN-2",
            "--type",
            "phone",
            "--out",
            d.join("o").to_str().unwrap(),
            "--fleet-key",
            other_fleet.to_str().unwrap(),
            "--no-terminal",
        ],
    ));
    let forged = out.lines().find(|l| l.starts_with("PB1:")).unwrap();
    let e = fails(agent(
        &op,
        &[
            "--wait",
            "0",
            "activate",
            "--qr",
            forged,
            "--owner",
            "eve",
            "--fleet-key",
            fleet_s,
        ],
    ));
    assert!(e.contains("forged QR code"), "{e}");
    // Without the fleet key the operator checks form and expiry only, and says so.
    let out = ok(agent(
        &op,
        &["--wait", "0", "activate", "--qr", forged, "--owner", "eve"],
    ));
    assert!(out.contains("not checked here"), "{out}");
    // Expired: made with a zero lifetime.
    let out = ok(agent(
        &fac,
        &[
            "--wait",
            "0",
            "make",
            "--serial",
            "SN-3",
            "--type",
            "phone",
            "--ttl",
            "0",
            "--out",
            out_dir.to_str().unwrap(),
            "--fleet-key",
            fleet_s,
            "--no-terminal",
        ],
    ));
    let expired = out.lines().find(|l| l.starts_with("PB1:")).unwrap();
    let e = fails(agent(
        &op,
        &["--wait", "0", "activate", "--qr", expired, "--owner", "eve"],
    ));
    assert!(e.contains("expired QR code"), "{e}");
    // Malformed.
    let e = fails(agent(
        &op,
        &[
            "--wait",
            "0",
            "activate",
            "--qr",
            "PB1:NOTBASE45!!",
            "--owner",
            "eve",
        ],
    ));
    assert!(e.contains("malformed QR code"), "{e}");
    let e = fails(agent(
        &op,
        &[
            "--wait",
            "0",
            "activate",
            "--qr",
            id_file.to_str().unwrap(),
            "--owner",
            "eve",
        ],
    ));
    assert!(e.contains("no readable QR code"), "{e}");
    // A wrong fleet key is caught before anything is made.
    let e = fails(agent(
        &fac,
        &[
            "--wait",
            "0",
            "make",
            "--serial",
            "SN-4",
            "--type",
            "phone",
            "--out",
            out_dir.to_str().unwrap(),
            "--fleet-key",
            other_fleet.to_str().unwrap(),
        ],
    ));
    assert!(e.contains("does not match"), "{e}");
}

#[test]
fn batch_makes_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = root();
    let fleet = write_fleet(d, "fleet.key", &r);
    let fac = write_identity(d, "fac.toml", &r, "factory:line-2", "127.0.0.1:1");
    let csv = d.join("b.csv");
    std::fs::write(&csv, "serial,type,model,components\nB-1,sensor,S1,battery=2Ah\nB-2,sensor,S1,\nB-3,phone,,camera=8MP;gps=l1\n").unwrap();
    let out = ok(agent(
        &fac,
        &[
            "--wait",
            "0",
            "batch",
            "--csv",
            csv.to_str().unwrap(),
            "--out",
            d.join("b").to_str().unwrap(),
            "--fleet-key",
            fleet.to_str().unwrap(),
        ],
    ));
    let q = queued(&out);
    assert_eq!(q.iter().map(|x| x.2).collect::<Vec<_>>(), vec![1, 2, 3]);
    let tomls = std::fs::read_dir(d.join("b"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        })
        .count();
    assert_eq!(tomls, 3);
    let out = ok(agent(&fac, &["outbox"]));
    assert_eq!(out.matches("type=device.manufactured").count(), 3, "{out}");
}

struct Run(Child);

impl Run {
    fn start(identity: &Path) -> Run {
        Run(Command::new(BIN)
            .arg("--identity")
            .arg(identity)
            .args(["run", "--resend-after", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap())
    }
    fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
    fn term(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if self.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.0.kill().unwrap();
        panic!("run did not stop on SIGTERM");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The provisioning flags docker compose relies on: chosen file names, re-runnable factory and
/// activation jobs, several QR codes in one `activate`, `--broker`, and `health`.
#[test]
fn provisioning_jobs_name_their_files_and_can_be_re_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = root();
    let fleet = write_fleet(d, "fleet.key", &r);
    let fleet = fleet.to_str().unwrap();
    let fac = write_identity(d, "fac.toml", &r, "factory:line-3", "127.0.0.1:1");
    let op = write_identity(d, "op.toml", &r, "operator:ops", "127.0.0.1:1");
    let out_dir = d.join("devices");
    let out_s = out_dir.to_str().unwrap();
    let make = |serial: &str, file: &str, extra: &[&str]| {
        let mut args = vec![
            "--wait",
            "0",
            "make",
            "--serial",
            serial,
            "--type",
            "sensor",
            "--out",
            out_s,
            "--file",
            file,
            "--fleet-key",
            fleet,
            "--no-terminal",
        ];
        args.extend(extra);
        agent(&fac, &args)
    };

    // --broker must be host:port.
    let e = fails(agent(&op, &["--broker", "nowhere", "token"]));
    assert!(e.contains("--broker") && e.contains("host:port"), "{e}");
    // A chosen file name, never a path.
    let e = fails(make("P-1", "../escape", &[]));
    assert!(e.contains("file name `../escape`"), "{e}");

    let out = ok(make("P-1", "manager", &[]));
    assert_eq!(queued(&out).len(), 1);
    let id = Identity::from_toml(&std::fs::read_to_string(out_dir.join("manager.toml")).unwrap())
        .unwrap();
    assert!(out.contains(&format!("made device {}", id.kid.device_id().unwrap())));
    assert!(out_dir.join("manager.png").is_file() && out_dir.join("manager.svg").is_file());
    // Again: refused by default, skipped with --skip-existing (nothing queued).
    fails(make("P-1", "manager", &[]));
    let again = ok(make("P-1", "manager", &["--skip-existing"]));
    assert!(
        again.contains("already made") && queued(&again).is_empty(),
        "{again}"
    );
    // Another device where that file is: still an error.
    let e = fails(make("P-2", "manager", &["--skip-existing"]));
    assert!(e.contains("already where"), "{e}");
    ok(make("P-2", "sensor", &[]));

    // One activation per --qr; a bad code among them queues nothing at all.
    let png = |f: &str| out_dir.join(f).to_str().unwrap().to_owned();
    let (m, s) = (png("manager.png"), png("sensor.png"));
    let activate = |qrs: &[&str], extra: &[&str]| {
        let mut args = vec![
            "--wait",
            "0",
            "activate",
            "--owner",
            "ann",
            "--fleet-key",
            fleet,
        ];
        for q in qrs {
            args.extend(["--qr", q]);
        }
        args.extend(extra);
        agent(&op, &args)
    };
    fails(activate(&[&m, "PB1:garbage"], &[]));
    assert!(!ok(agent(&op, &["outbox"])).contains("pending"));
    let out = ok(activate(&[&m, &s], &[]));
    let q = queued(&out);
    assert_eq!(q.len(), 2, "{out}");
    assert!(q.iter().all(|e| e.0 == "device.activated"));
    // Again: refused as reused by default, skipped with --skip-activated.
    let e = fails(activate(&[&m], &[]));
    assert!(e.contains("reused QR code"), "{e}");
    let again = ok(activate(&[&m, &s], &["--skip-activated"]));
    assert_eq!(again.matches("skipped").count(), 2, "{again}");
    assert!(queued(&again).is_empty());

    // `health` fails while no `run` serves the device's control socket.
    let e = fails(agent(&out_dir.join("manager.toml"), &["health"]));
    assert!(e.contains("no running agent answers"), "{e}");
}

fn wait_socket(data: &Path) {
    let sock = data.join("control.sock");
    let end = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < end, "run did not open its control socket");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run` is killed with SIGKILL twice (offline with queued actions, then online while events
/// are being published and confirmations are being lost); nothing is lost or duplicated, and
/// ids and seqs never change.
#[test]
fn sigkill_mid_publish_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let dev_kid = "device:00000000000000e1";
    let dev = write_identity(
        d,
        "dev.toml",
        &root(),
        dev_kid,
        &format!("127.0.0.1:{port}"),
    );
    let data = d.join("dev.toml.outbox");
    // Phase 1: the broker is down; actions are handed to the running agent, then it is killed.
    let run = Run::start(&dev);
    wait_socket(&data);
    let mut assigned = Vec::new();
    for i in 0..12 {
        let n = format!("n={i}");
        let out = ok(agent(&dev, &["action", "tap", "--meta", &n]));
        assert!(out.contains("handed to the running agent"), "{out}");
        assigned.extend(queued(&out).into_iter().map(|(_, id, seq)| (id, seq)));
    }
    assert_eq!(
        assigned.iter().map(|x| x.1).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    run.kill9();
    {
        let ob = Outbox::open(&data).unwrap();
        let pending: Vec<_> = ob
            .pending()
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.seq))
            .collect();
        assert_eq!(
            pending, assigned,
            "everything survived SIGKILL with the same ids and seqs"
        );
    }
    // Offline `action` without a running agent goes straight into the outbox.
    let out = ok(agent(&dev, &["--wait", "0", "action", "offline-tap"]));
    assigned.extend(queued(&out).into_iter().map(|(_, id, seq)| (id, seq)));
    assert_eq!(assigned.last().unwrap().1, 13);
    // Phase 2: the broker comes up but loses every first confirmation; kill mid-way.
    let broker = start_broker(
        port,
        FakeOptions {
            drop_first_confirmation: true,
        },
    );
    let run = Run::start(&dev);
    broker.wait_for(20, "some events in the log", |l| l.events.len() >= 5);
    run.kill9();
    // The broker publishes the device's last will: the retained offline card.
    broker.wait_for(10, "the last will", |l| {
        l.presence
            .get("00000000000000e1")
            .and_then(|c| c.last())
            .is_some_and(|c| c.contains(r#""status":"offline""#))
    });
    // Phase 3: restart; everything ends up committed exactly once.
    let run = Run::start(&dev);
    broker.wait_for(30, "all events", |l| {
        l.events.len() == 13 && l.duplicates > 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    run.term();
    let ob = Outbox::open(&data).unwrap();
    assert_eq!(ob.pending_len(), 0, "all confirmed");
    let log = broker.log.lock().unwrap();
    let mut got: Vec<_> = log.events.iter().map(|e| (e.id, e.seq)).collect();
    got.sort_by_key(|x| x.1);
    assert_eq!(got, assigned, "each event exactly once, same ids and seqs");
    assert!(log.rejections.is_empty(), "{:?}", log.rejections);
}

/// The whole life over loopback MQTT with the binary: factory → QR PNG read back → activate →
/// the devices' own setup → pair → command → action → shutdown by command.
#[test]
fn end_to_end_factory_to_command_with_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = root();
    let broker = start_broker(free_port(), FakeOptions::default());
    let addr = broker.addr();
    let fleet = write_fleet(d, "fleet.key", &r);
    let fac = write_identity(d, "fac.toml", &r, "factory:line-1", &addr);
    let op = write_identity(d, "op.toml", &r, "operator:admin", &addr);
    let made = d.join("made");
    let mut devices = Vec::new();
    for (serial, t) in [("M-1", "phone"), ("S-1", "sensor")] {
        let out = ok(agent(
            &fac,
            &[
                "make",
                "--serial",
                serial,
                "--type",
                t,
                "--out",
                made.to_str().unwrap(),
                "--fleet-key",
                fleet.to_str().unwrap(),
                "--device-broker",
                &addr,
                "--no-terminal",
            ],
        ));
        assert!(out.contains("delivered: 1 event(s) committed"), "{out}");
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("made device "))
            .unwrap()[..16]
            .to_owned();
        let png = made.join(format!("{id}.png"));
        let out = ok(agent(
            &op,
            &["activate", "--qr", png.to_str().unwrap(), "--owner", "ann"],
        ));
        assert!(out.contains("delivered: 1 event(s) committed"), "{out}");
        let identity = made.join(format!("{id}.toml"));
        // The device's own signed event after activation: proof of possession.
        let out = ok(agent(&identity, &["setup", "--owner", "ann"]));
        assert!(out.contains("delivered: 1 event(s) committed"), "{out}");
        devices.push((id, identity));
    }
    let (m, s) = (&devices[0], &devices[1]);
    let run_m = Run::start(&m.1);
    let mut run_s = Run::start(&s.1);
    wait_socket(&PathBuf::from(format!("{}.outbox", m.1.display())));
    wait_socket(&PathBuf::from(format!("{}.outbox", s.1.display())));
    ok(agent(&op, &["pair", "--manager", &m.0, "--sensor", &s.0]));
    broker.wait_for(15, "pairing.accepted", |l| {
        !l.of_type("pairing.accepted").is_empty()
    });
    // The manager learns of the acceptance through its relay; retry until it has.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let o = agent(&m.1, &["command", "--target", &s.0, "status"]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < end,
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.wait_for(15, "command.completed", |l| {
        !l.of_type("command.completed").is_empty()
    });
    let out = ok(agent(
        &s.1,
        &[
            "action",
            "voice_recording",
            "--meta",
            "seconds=12",
            "--ip",
            "10.1.2.3",
        ],
    ));
    assert!(out.contains("handed to the running agent"), "{out}");
    broker.wait_for(15, "device.action", |l| {
        !l.of_type("device.action").is_empty()
    });
    // Shutdown by command: the sensor completes it, then its agent stops by itself.
    ok(agent(&m.1, &["command", "--target", &s.0, "shutdown"]));
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = run_s.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < end,
            "the sensor did not stop after `shutdown`"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    run_m.term();
    let log = broker.log.lock().unwrap();
    let types: Vec<&str> = log.events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(
        types,
        [
            "device.manufactured",
            "device.activated",
            "device.setup_completed",
            "device.manufactured",
            "device.activated",
            "device.setup_completed",
            "pairing.requested",
            "pairing.offered",
            "pairing.accepted",
            "command.issued",
            "command.completed",
            "device.action",
            "command.issued",
            "command.completed",
        ]
    );
    assert!(log.rejections.is_empty(), "{:?}", log.rejections);
}
