//! Agents killed with SIGKILL at pseudo-random moments while they publish to the real broker,
//! then restarted: nothing is lost, nothing is duplicated, ids and seqs never change, and the
//! log verifies. (The seed of the moments is printed; set `PAIRBUS_SEED` to replay one.)

use pairbus_tests::{
    activate_and_set_up, agent, agent_output, bin, device_events, drain_outbox, make, queued,
    wait_until, Broker, Made, Running,
};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A small xorshift generator: the moments of the kills.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("PAIRBUS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos() as u64
                    | 1
            });
        eprintln!("{test}: PAIRBUS_SEED={seed}");
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn online_device(broker: &Broker, devices: &Path, serial: &str) -> (Made, (String, u64)) {
    let factory = broker.data.join("factory-default.toml");
    let m = make(&factory, &[], &broker.device, devices, serial, &[]);
    let o = activate_and_set_up(broker, &m);
    assert!(o.contains("delivered: 1 event(s) committed"), "{o}");
    let q = queued(&o);
    (m, (q[0].1.clone(), q[0].2))
}

fn count_actions(broker: &Broker, id: &str) -> usize {
    broker
        .history(id)
        .iter()
        .filter(|e| e["type"] == "device.action")
        .count()
}

#[test]
fn run_killed_with_sigkill_mid_publish_and_restarted_loses_and_duplicates_nothing() {
    let mut rng = Rng::seeded("run_killed");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let (m, setup) = online_device(&broker, &dir.path().join("devices"), "SN-KILL-RUN");
    let mut assigned = vec![setup];
    const N: usize = 40;
    let kill_after = 3 + rng.below(30) as usize;

    // `run` publishes what it is handed; it is killed right after the kill_after-th action
    // was handed to it (its last ones are still in flight or unconfirmed).
    let run = Running::device_with(&m.identity, &["--resend-after", "1"]);
    run.wait_ready(&m.identity);
    let mut run = Some(run);
    for i in 0..N {
        let n = format!("n={i}");
        let o = if run.is_some() {
            agent(&m.identity, &["action", "tap", "--meta", &n])
        } else {
            // Dead agent: the action goes straight into the outbox (its stale control socket
            // does not answer).
            agent(&m.identity, &["--wait", "0", "action", "tap", "--meta", &n])
        };
        let q = queued(&o);
        assert_eq!(q.len(), 1, "{o}");
        assigned.push((q[0].1.clone(), q[0].2));
        if i + 1 == kill_after {
            run.take().unwrap().kill9();
        }
    }
    assert_eq!(
        assigned.iter().map(|a| a.1).collect::<Vec<_>>(),
        (1..=(N as u64 + 1)).collect::<Vec<_>>()
    );
    // Restarted, killed again at a random moment while it re-sends, restarted again.
    let run = Running::device_with(&m.identity, &["--resend-after", "1"]);
    run.wait_ready(&m.identity);
    std::thread::sleep(Duration::from_millis(rng.below(300)));
    run.kill9();
    let run = Running::device_with(&m.identity, &["--resend-after", "1"]);
    wait_until(30, "all actions in the log", || {
        count_actions(&broker, &m.id) == N
    });
    run.term();
    drain_outbox(&m.identity);
    let log = broker.stop_and_read_log();
    assert_eq!(
        device_events(&log, &format!("device:{}", m.id)),
        assigned,
        "each event exactly once, with the id and seq it got before the kills"
    );
}

#[test]
fn one_shot_actions_killed_with_sigkill_mid_publish_lose_and_duplicate_nothing() {
    let mut rng = Rng::seeded("one_shot_killed");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let (m, setup) = online_device(&broker, &dir.path().join("devices"), "SN-KILL-ONE");
    // Each `action` (which queues durably, then delivers and waits for its confirmation) is
    // killed after a pseudo-random delay: before queueing, while publishing, or after.
    let mut printed = vec![setup];
    for i in 0..12 {
        let n = format!("n={i}");
        let mut child = Command::new(bin("pairbus-agent"))
            .arg("--identity")
            .arg(&m.identity)
            .args(["action", "tap", "--meta", &n])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        let _ = child.kill();
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        // What it printed as queued is durable: it must end up in the log.
        printed.extend(queued(&out).into_iter().map(|(_, id, seq)| (id, seq)));
    }
    // Whatever is left is delivered by `send`.
    drain_outbox(&m.identity);
    let log = broker.stop_and_read_log();
    let got = device_events(&log, &format!("device:{}", m.id));
    // No seq was lost: the device's seqs are exactly 1..=n, each once, in order.
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "a gap or a repeat in the device's seqs: {got:?}"
    );
    for p in &printed {
        assert!(got.contains(p), "{p:?} was queued but is not in the log");
    }
    eprintln!(
        "{} of 12 killed actions had been queued (printed {})",
        got.len() - 1,
        printed.len() - 1
    );
}

#[test]
fn run_killed_while_actions_are_being_handed_to_it_loses_and_duplicates_nothing() {
    let mut rng = Rng::seeded("run_killed_while_handing");
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("data"));
    let (m, setup) = online_device(&broker, &dir.path().join("devices"), "SN-KILL-HAND");
    let run = Running::device_with(&m.identity, &["--resend-after", "1"]);
    run.wait_ready(&m.identity);
    // Another thread records actions without pause; `run` dies under it at a random moment,
    // possibly in the middle of a hand-over. Later actions go straight into the outbox.
    let identity = m.identity.clone();
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed_seen = killed.clone();
    let recorder = std::thread::spawn(move || {
        let mut results = Vec::new();
        let mut after_kill = 0;
        for i in 0..300 {
            if killed_seen.load(std::sync::atomic::Ordering::SeqCst) {
                after_kill += 1;
                if after_kill > 5 {
                    break;
                }
            }
            let n = format!("n={i}");
            let o = agent_output(&identity, &["--wait", "1", "action", "tap", "--meta", &n]);
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            results.push((
                o.status.success(),
                queued(&out),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ));
        }
        results
    });
    std::thread::sleep(Duration::from_millis(100 + rng.below(1000)));
    run.kill9();
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = recorder.join().unwrap();
    let mut confirmed_by_cli = vec![setup];
    for (ok, q, err) in &results {
        if *ok {
            assert_eq!(q.len(), 1, "a successful `action` names its event: {err}");
            confirmed_by_cli.push((q[0].1.clone(), q[0].2));
        } else {
            eprintln!("an `action` failed while `run` died: {}", err.trim());
        }
    }
    // Restart, let it deliver, stop it; then whatever it had not confirmed yet goes by `send`.
    let run = Running::device_with(&m.identity, &["--resend-after", "1"]);
    run.wait_ready(&m.identity);
    wait_until(30, "every recorded action in the log", || {
        count_actions(&broker, &m.id) >= confirmed_by_cli.len() - 1
    });
    run.term();
    drain_outbox(&m.identity);
    let log = broker.stop_and_read_log();
    let got = device_events(&log, &format!("device:{}", m.id));
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "a gap or a repeat in the device's seqs: {got:?}"
    );
    for c in &confirmed_by_cli {
        assert!(got.contains(c), "{c:?} was queued but is not in the log");
    }
    assert!(
        got.len() <= results.len() + 1,
        "at most one event per `action` call"
    );
    eprintln!(
        "{} actions recorded, {} confirmed to their caller, {} in the log",
        results.len(),
        confirmed_by_cli.len() - 1,
        got.len() - 1
    );
}
