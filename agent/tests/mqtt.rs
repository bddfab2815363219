//! The agent's session over real loopback MQTT (an embedded rumqttd playing the broker).

mod common;

use common::{free_port, root, start_broker, FakeOptions};
use pairbus_agent::device::{DeviceState, LocalCommand, SimulatedSensor};
use pairbus_agent::draft;
use pairbus_agent::outbox::Outbox;
use pairbus_agent::session::{
    self, load_state, ControlRequest, Session, SessionOptions, StopReason,
};
use pairbus_schemas::event::{Body, Command, Metadata, Outcome, Role};
use pairbus_schemas::identity::Identity;
use pairbus_schemas::ids::{DeviceId, Kid};
use pairbus_schemas::Event;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

fn identity(kid: Kid, broker: &str) -> Identity {
    Identity {
        key: root().derive(&kid),
        kid,
        broker: broker.to_owned(),
    }
}

fn device(n: u8) -> DeviceId {
    DeviceId::parse(&format!("{:016x}", 0xd000 + n as u64)).unwrap()
}

fn fast() -> SessionOptions {
    SessionOptions {
        resend_after: Duration::from_millis(700),
        reconnect_delay: Duration::from_millis(100),
        ..Default::default()
    }
}

struct Running {
    outbox: Outbox,
    control: mpsc::Sender<ControlRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<session::SessionReport, pairbus_agent::AgentError>>,
}

impl Running {
    async fn local(&self, cmd: LocalCommand) -> Result<Vec<Event>, String> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(ControlRequest { cmd, reply: tx })
            .await
            .unwrap();
        rx.await.unwrap()
    }
    fn state(&self) -> DeviceState {
        load_state(&self.outbox).unwrap()
    }
    async fn stop(mut self) -> session::SessionReport {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap()
    }
}

fn start(id: Identity, dir: &std::path::Path, opts: SessionOptions) -> Running {
    let outbox = Outbox::open(dir).unwrap();
    let (control, rx) = mpsc::channel(8);
    let (stop, stop_rx) = oneshot::channel();
    let s = Session::new(
        id,
        outbox.clone(),
        opts,
        Box::new(SimulatedSensor::default()),
    );
    let task = tokio::spawn(s.run(rx, async move {
        let _ = stop_rx.await;
    }));
    Running {
        outbox,
        control,
        stop: Some(stop),
        task,
    }
}

async fn wait_until(secs: u64, what: &str, f: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Events recorded while the broker is down are all committed once it comes up, each exactly
/// once in the log although confirmations are lost and events re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_then_broker_up_everything_committed_exactly_once() {
    let port = free_port();
    let dev = device(1);
    let id = identity(dev.kid(), &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let n = 30;
    let mut ids = Vec::new();
    {
        let ob = Outbox::open(dir.path()).unwrap();
        for i in 0..n {
            let evs = session::enqueue_local(
                &ob,
                &id,
                LocalCommand::Action(draft::action(
                    dev.clone(),
                    format!("tap{i}"),
                    Metadata::new(),
                    None,
                    None,
                )),
            )
            .unwrap();
            ids.push((evs[0].id, evs[0].seq));
        }
    }
    // The agent starts while the broker is down, and records more while it retries.
    let run = start(id.clone(), dir.path(), fast());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let more = run
        .local(LocalCommand::Action(draft::action(
            dev.clone(),
            "late".into(),
            Metadata::new(),
            None,
            None,
        )))
        .await
        .unwrap();
    ids.push((more[0].id, more[0].seq));
    let broker = start_broker(
        port,
        FakeOptions {
            drop_first_confirmation: true,
        },
    );
    let ob = run.outbox.clone();
    wait_until(30, "the outbox to empty", || ob.pending_len() == 0).await;
    {
        let log = broker.log.lock().unwrap();
        assert_eq!(log.events.len(), n + 1, "each event stored once");
        let got: Vec<_> = log.events.iter().map(|e| (e.id, e.seq)).collect();
        let mut want = ids.clone();
        want.sort_by_key(|x| x.1);
        let mut got_sorted = got.clone();
        got_sorted.sort_by_key(|x| x.1);
        assert_eq!(got_sorted, want, "same ids and seqs as assigned at enqueue");
        assert_eq!(
            want.iter().map(|x| x.1).collect::<Vec<_>>(),
            (1..=n as u64 + 1).collect::<Vec<_>>()
        );
        assert!(
            log.duplicates >= n,
            "lost confirmations made the agent re-send: {}",
            log.duplicates
        );
        assert!(
            log.logins.iter().all(|(c, u, ok)| *ok && c == u),
            "{:?}",
            log.logins
        );
        let cards = log.presence.get(dev.as_str()).expect("presence card");
        assert!(
            cards.iter().any(|c| c.contains(r#""status":"online""#)),
            "{cards:?}"
        );
    }
    let report = run.stop().await;
    assert_eq!((report.reason, report.pending), (StopReason::Shutdown, 0));
    // A clean stop publishes the retained offline card (the last will covers crashes).
    broker.wait_for(5, "the offline card", |l| {
        l.presence
            .get(dev.as_str())
            .and_then(|c| c.last())
            .is_some_and(|c| c.contains(r#""status":"offline""#))
    });
}

/// Pairing handshake, a command and its completion, a refused offer, all through relays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_command_and_refused_offer_over_mqtt() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("pairbus_agent=debug,rumqttd=warn")
        .with_test_writer()
        .try_init();
    let port = free_port();
    let broker = start_broker(port, FakeOptions::default());
    let addr = broker.addr();
    let (m, s, x) = (device(10), device(11), device(12));
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut running = Vec::new();
    for (d, dir) in [&m, &s, &x].into_iter().zip(&dirs) {
        let id = identity(d.kid(), &addr);
        let r = start(id, dir.path(), fast());
        r.local(LocalCommand::Setup(draft::setup_completed(
            d.clone(),
            "ann".into(),
            Role::Owner,
        )))
        .await
        .unwrap();
        running.push(r);
    }
    let (rm, rs, rx) = (&running[0], &running[1], &running[2]);
    // The operator asks m to pair with s (one-shot delivery).
    let op = identity(Kid::parse("operator:admin").unwrap(), &addr);
    let deliver = |d: draft::Draft| {
        let op = op.clone();
        let dir = dirs[3].path().to_owned();
        async move {
            let ob = Outbox::open(&dir).unwrap();
            session::enqueue(&ob, &op, vec![d]).unwrap();
            let opts = SessionOptions {
                until_empty: true,
                deadline: Some(Duration::from_secs(10)),
                ..fast()
            };
            let (_t, r) = mpsc::channel(1);
            let rep = Session::new(op, ob, opts, Box::new(SimulatedSensor::default()))
                .run(r, std::future::pending())
                .await
                .unwrap();
            assert_eq!(rep.reason, StopReason::Delivered);
        }
    };
    deliver(draft::pairing_requested(m.clone(), s.clone())).await;
    wait_until(15, "pairing", || {
        rm.state().sensors.contains(s.as_str()) && rs.state().manager.as_deref() == Some(m.as_str())
    })
    .await;
    // The manager's retained presence card follows its state.
    let want = format!(r#""sensors":["{s}"]"#);
    broker.wait_for(10, "the manager's card", |l| {
        l.presence
            .get(m.as_str())
            .and_then(|c| c.last())
            .is_some_and(|c| c.contains(&want))
    });
    // A command from the manager runs on the sensor and completes.
    rm.local(LocalCommand::Command(draft::command_issued(
        m.clone(),
        s.clone(),
        Command::Status,
        Metadata::new(),
        pairbus_agent::sys::now_ms(),
        60_000,
    )))
    .await
    .unwrap();
    broker.wait_for(15, "command.completed", |l| {
        !l.of_type("command.completed").is_empty()
    });
    {
        let log = broker.log.lock().unwrap();
        let c = log.of_type("command.completed")[0];
        assert!(
            matches!(&c.body, Body::CommandCompleted(cc) if cc.outcome == Outcome::Ok),
            "{c:?}"
        );
    }
    // A device that does not manage s cannot even queue a command for it.
    let err = rx
        .local(LocalCommand::Command(draft::command_issued(
            x.clone(),
            s.clone(),
            Command::Shutdown,
            Metadata::new(),
            0,
            1,
        )))
        .await
        .unwrap_err();
    assert!(err.contains("not managed"), "{err}");
    // x is asked to manage s, which already has a manager: s declines.
    deliver(draft::pairing_requested(x.clone(), s.clone())).await;
    broker.wait_for(15, "pairing.declined", |l| {
        !l.of_type("pairing.declined").is_empty()
    });
    {
        let log = broker.log.lock().unwrap();
        let d = log.of_type("pairing.declined")[0];
        assert!(
            matches!(&d.body, Body::PairingDeclined(e) if e.reason == "has_manager"),
            "{d:?}"
        );
        assert_eq!(d.src, s.kid());
    }
    // A replayed offer (same nonce) and an expired one reach the sensor's cmd/ topic
    // directly (rumqttd 0.20 cannot stop that): the sensor declines both.
    let offer = {
        let log = broker.log.lock().unwrap();
        log.of_type("pairing.offered")[0].clone()
    };
    let cmd_s = pairbus_schemas::Topic::Cmd(s.clone()).to_string();
    common::raw_publish(
        broker.port,
        &cmd_s,
        pairbus_schemas::seal(&offer, &root().derive(&m.kid())),
    )
    .await;
    let mut late = offer.clone();
    late.id = pairbus_schemas::ids::EventId::new_v7(1, [3; 10]);
    if let Body::PairingOffered(o) = &mut late.body {
        o.nonce = [0x55; 16];
        o.expires_at = pairbus_agent::sys::now_ms() - 1;
    }
    common::raw_publish(
        broker.port,
        &cmd_s,
        pairbus_schemas::seal(&late, &root().derive(&m.kid())),
    )
    .await;
    broker.wait_for(15, "two more declines", |l| {
        l.of_type("pairing.declined").len() == 3
    });
    {
        let log = broker.log.lock().unwrap();
        let reasons: Vec<_> = log
            .of_type("pairing.declined")
            .iter()
            .map(|e| match &e.body {
                Body::PairingDeclined(d) => d.reason.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(reasons, ["has_manager", "nonce_reused", "expired"]);
    }
    // The sensor unpairs; the manager forgets it.
    rs.local(LocalCommand::Unpair(m.clone())).await.unwrap();
    wait_until(15, "unpairing", || rm.state().sensors.is_empty()).await;
    // Revocation: the device stops once told, and its later events are refused.
    deliver(draft::revoked(x.clone(), "stolen".into())).await;
    wait_until(15, "revocation", || rx.state().revoked).await;
    let mut reports = Vec::new();
    for r in running {
        reports.push(r.stop().await.reason);
    }
    assert!(
        matches!(&reports[2], StopReason::DeviceStop(why) if why.contains("revoked")),
        "{reports:?}"
    );
    assert_eq!(reports[0], StopReason::Shutdown);
}

/// An event the broker refuses is moved aside with the reason, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_moved_aside() {
    let port = free_port();
    let broker = start_broker(port, FakeOptions::default());
    let dev = device(20);
    broker.log.lock().unwrap().revoked.insert(dev.kid());
    let id = identity(dev.kid(), &broker.addr());
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path()).unwrap();
    session::enqueue_local(
        &ob,
        &id,
        LocalCommand::Action(draft::action(
            dev.clone(),
            "x".into(),
            Metadata::new(),
            None,
            None,
        )),
    )
    .unwrap();
    let opts = SessionOptions {
        until_empty: true,
        deadline: Some(Duration::from_secs(10)),
        ..fast()
    };
    let (_t, r) = mpsc::channel(1);
    let rep = Session::new(id, ob.clone(), opts, Box::new(SimulatedSensor::default()))
        .run(r, std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        (rep.reason, rep.refused, rep.pending),
        (StopReason::Delivered, 1, 0)
    );
    let refused = ob.refused().unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].seq, refused[0].reason.as_str()), (1, "revoked"));
}

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let t = tokio::spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().unwrap().push(t.abort_handle());
            }
        });
        Proxy { port, up, conns }
    }
    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A broker outage in the middle of a session: the agent reconnects with a fresh token,
/// re-subscribes and re-sends; everything recorded before, during and after is committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_session_reconnects_and_resends() {
    let broker = start_broker(free_port(), FakeOptions::default());
    let proxy = Proxy::start(broker.port).await;
    let dev = device(30);
    let id = identity(dev.kid(), &format!("127.0.0.1:{}", proxy.port));
    let dir = tempfile::tempdir().unwrap();
    let run = start(id, dir.path(), fast());
    let act = |i: usize| {
        LocalCommand::Action(draft::action(
            dev.clone(),
            format!("a{i}"),
            Metadata::new(),
            None,
            None,
        ))
    };
    for i in 0..10 {
        run.local(act(i)).await.unwrap();
    }
    broker.wait_for(15, "the first ten", |l| l.events.len() == 10);
    let ob = run.outbox.clone();
    wait_until(15, "the first ten confirmed", || ob.pending_len() == 0).await;
    proxy.cut();
    for i in 10..20 {
        run.local(act(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        run.outbox.pending_len(),
        10,
        "kept while the broker is unreachable"
    );
    proxy.restore();
    wait_until(20, "the outbox to empty after the outage", || {
        ob.pending_len() == 0
    })
    .await;
    {
        let log = broker.log.lock().unwrap();
        assert_eq!(log.events.len(), 20);
        let seqs: Vec<u64> = log.events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=20).collect::<Vec<_>>(),
            "in seq order, once each"
        );
        let logins = log
            .logins
            .iter()
            .filter(|(c, _, ok)| *ok && c == &dev.kid().to_string())
            .count();
        assert!(
            logins >= 2,
            "reconnected with a fresh token: {logins} logins"
        );
    }
    run.stop().await;
}
