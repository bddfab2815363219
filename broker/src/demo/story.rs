//! The story, step by step: each step acts through the principals' agent sessions, waits for
//! the bus to show the result (the embedded projector's state, the log), checks it with
//! [`super::expect`], and tells it.

use super::actors::{single, Principal};
use super::expect::{self, Check};
use super::narrator::Narrator;
use super::{forge, replay, DemoError};
use crate::bus::Bus;
use crate::datadir;
use crate::http::LogRecords;
use crate::log::LogStore;
use pairbus_agent::device::LocalCommand;
use pairbus_agent::draft::{self, ClientInfo, ManufactureSpec};
use pairbus_agent::factory::{self, OutputPaths};
use pairbus_agent::operator::{self, ActivationRecord};
use pairbus_agent::{qrimage, session, sys, AgentError};
use pairbus_projector::graph::{graph, to_text};
use pairbus_projector::model::{Code, DeviceState, Status};
use pairbus_projector::query::{self, Query, Response};
use pairbus_projector::{text, Projections};
use pairbus_schemas::event::{Command, Component, MetaValue, Metadata, Role};
use pairbus_schemas::identity::Identity;
use pairbus_schemas::qr::{QrError, DEFAULT_QR_TTL_SECS};
use pairbus_schemas::{Body, DeviceId, Event, EventId, EventType, Kid, Record, RootSecret};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The owner the devices are activated for.
const OWNER: &str = "alice";

/// Positions of the devices in [`Cast::devices`].
const HUB: usize = 0;
const SENSOR_A: usize = 1;
const SENSOR_B: usize = 2;

/// What every step works with.
pub(super) struct Scene<'a> {
    /// Where the story is told.
    pub n: &'a Narrator,
    /// The running bus.
    pub bus: &'a Bus,
    /// The fleet root (the demo plays the factory station, which holds it in v1).
    pub root: &'a RootSecret,
    /// How long each step may take.
    pub t: Duration,
    /// The log head when the run began.
    pub first: u64,
}

/// A device of the story.
pub(super) struct Dev {
    label: &'static str,
    id: DeviceId,
    png: PathBuf,
    identity_file: PathBuf,
    online: Principal,
}

/// Everyone online.
pub(super) struct Cast {
    factory: Principal,
    operator: Principal,
    field: Principal,
    devices: Vec<Dev>,
}

impl Cast {
    /// Stops every session (devices first), logging (not failing on) errors.
    pub(super) async fn stop(self) {
        for p in self.devices.into_iter().map(|d| d.online).chain([
            self.factory,
            self.operator,
            self.field,
        ]) {
            let kid = p.identity.kid.clone();
            if let Err(e) = p.stop().await {
                tracing::warn!(%kid, error = %e, "session stopped with an error");
            }
        }
    }

    fn ids(&self) -> Vec<DeviceId> {
        self.devices.iter().map(|d| d.id.clone()).collect()
    }
}

impl Scene<'_> {
    /// Reads the embedded projector's state.
    fn p<T>(&self, f: impl FnOnce(&Projections) -> T) -> T {
        let guard = self
            .bus
            .projections()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(guard.state())
    }

    /// Waits until `check` holds (re-checked at every commit, and at least every 25 ms), or
    /// fails naming `what` with the last reason after the step timeout.
    async fn wait(&self, what: &str, mut check: impl FnMut() -> Check) -> Result<(), DemoError> {
        let end = tokio::time::Instant::now() + self.t;
        let mut head = self.bus.log().subscribe();
        loop {
            match check() {
                Ok(()) => return self.n.expect(what, Ok(())),
                Err(why) if tokio::time::Instant::now() >= end => {
                    return Err(DemoError::Expectation {
                        what: what.into(),
                        why: format!("{why} (after {} s)", self.t.as_secs()),
                    })
                }
                Err(_) => {
                    if let Ok(Err(_)) =
                        tokio::time::timeout(Duration::from_millis(25), head.changed()).await
                    {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            }
        }
    }

    /// Waits until the projector has folded `ev` into `device`'s trail, accepted.
    async fn accepted(&self, what: &str, device: &DeviceId, ev: &Event) -> Result<(), DemoError> {
        self.wait(what, || self.p(|p| expect::accepted(p, device, &ev.id)))
            .await
    }

    /// Waits until `device` is in `state`.
    async fn state(
        &self,
        what: &str,
        device: &DeviceId,
        state: DeviceState,
    ) -> Result<(), DemoError> {
        self.wait(what, || self.p(|p| expect::state_is(p, device, state)))
            .await
    }

    /// The log record at `seq`.
    fn record(&self, seq: u64) -> Result<Record, DemoError> {
        self.bus
            .log()
            .get(seq)?
            .ok_or_else(|| DemoError::Expectation {
                what: format!("record {seq} in the log"),
                why: "not found".into(),
            })
    }

    /// The log position of event `id` in `device`'s trail.
    fn seq_of(&self, device: &DeviceId, id: &EventId) -> Result<u64, DemoError> {
        self.p(|p| expect::entry(p, device, id).map(|e| e.seq))
            .ok_or_else(|| DemoError::Expectation {
                what: format!("event {id} in {device}'s trail"),
                why: "not found".into(),
            })
    }

    /// An event body's details as JSON (as `history` shows them).
    fn details(&self, seq: u64) -> Option<serde_json::Value> {
        query::details(&LogRecords(&**self.bus.log()), seq)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_identity(path: &Path, broker: SocketAddr) -> Result<Identity, DemoError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(io(path))?);
    let mut id = Identity::from_toml(&text).map_err(|e| {
        io(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))
    })?;
    id.broker = broker.to_string();
    Ok(id)
}

fn meta(pairs: &[(&str, MetaValue)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn component(kind: &str, spec: &str) -> Component {
    Component {
        kind: kind.into(),
        spec: spec.into(),
    }
}

/// The whole story. The cast is put in `slot` as soon as it is online, so that the caller
/// stops every session whatever happens.
pub(super) async fn play(
    s: &Scene<'_>,
    data: &Path,
    slot: &mut Option<Cast>,
) -> Result<(), DemoError> {
    let run_tag = hex::encode(sys::random::<4>());
    let run_dir = data.join("demo").join(format!("run-{run_tag}"));
    std::fs::create_dir_all(&run_dir).map_err(io(&run_dir))?;
    let cast = slot.insert(online(s, data)?);
    manufacture(s, cast, &run_tag, &run_dir).await?;
    counterfeit(s, cast, &run_dir).await?;
    activate(s, cast).await?;
    setup(s, cast).await?;
    let request = pair(s, cast).await?;
    commands(s, cast).await?;
    actions(s, cast).await?;
    replay_event(s, cast, &request).await?;
    replay_token(s, cast).await?;
    report(s, cast)
}

/// The factory station and two operator stations, online.
fn online(s: &Scene<'_>, data: &Path) -> Result<Cast, DemoError> {
    let op_addr = s.bus.operator_addr();
    let factory_id = read_identity(&data.join(datadir::FACTORY_IDENTITY), op_addr)?;
    factory::check_factory_key(s.root, &factory_id.kid, &factory_id.key)?;
    let operator_id = read_identity(&data.join(datadir::OPERATOR_IDENTITY), op_addr)?;
    let field_kid = Kid::parse("operator:field").map_err(|e| DemoError::Expectation {
        what: "the field station's kid".into(),
        why: e.to_string(),
    })?;
    let field_id = Identity {
        key: s.root.derive(&field_kid),
        kid: field_kid,
        broker: op_addr.to_string(),
    };
    // Outboxes where `pairbus-agent --identity FILE` keeps them (`FILE.outbox`), so that the
    // seq counters carry on from run to run, and with the CLI.
    let outbox_of = |file: &str| data.join(format!("{file}.outbox"));
    let cast = Cast {
        factory: Principal::start(factory_id, &outbox_of(datadir::FACTORY_IDENTITY))?,
        operator: Principal::start(operator_id, &outbox_of(datadir::OPERATOR_IDENTITY))?,
        field: Principal::start(field_id, &data.join("demo").join("operator-field.outbox"))?,
        devices: Vec::new(),
    };
    s.n.line(&format!(
        "online: {} and {} (identities of the data folder), {} (a field station without the fleet key); agent sessions with durable outboxes",
        cast.factory.identity.kid, cast.operator.identity.kid, cast.field.identity.kid
    ));
    Ok(cast)
}

/// Three devices made with QR codes (PNG), `device.manufactured` committed, devices powered on.
async fn manufacture(
    s: &Scene<'_>,
    cast: &mut Cast,
    run_tag: &str,
    run_dir: &Path,
) -> Result<(), DemoError> {
    s.n.step(&format!(
        "{} manufactures 3 devices (fresh serial numbers, run {run_tag}); identity files and QR codes (PNG) in {}",
        cast.factory.identity.kid,
        run_dir.display()
    ));
    let specs = [
        ("hub", "hub", "H1", [("radio", "lora"), ("cpu", "arm64")]),
        (
            "sensor-a",
            "sensor",
            "S2",
            [("camera", "12MP"), ("microphone", "mems")],
        ),
        (
            "sensor-b",
            "sensor",
            "S2",
            [("lidar", "905nm"), ("battery", "4000mAh")],
        ),
    ];
    let mut made = Vec::new();
    for (label, device_type, model, components) in specs {
        let serial = format!("DEMO-{run_tag}-{}", label.to_ascii_uppercase());
        let id = pairbus_schemas::keys::device_id_from_serial_hash(&s.root.serial_hash(&serial));
        let m = factory::make_device(
            s.root,
            &cast.factory.identity.kid,
            &cast.factory.identity.key,
            &serial,
            ManufactureSpec {
                device_type: device_type.into(),
                model: model.into(),
                manufacturer: "pairbus demo works".into(),
                name: format!("{label}-{}", &id.as_str()[..6]),
                components: components.iter().map(|(k, v)| component(k, v)).collect(),
            },
            &s.bus.device_addr().to_string(),
            sys::now_secs(),
            DEFAULT_QR_TTL_SECS,
        )?;
        let paths = OutputPaths {
            identity: run_dir.join(format!("{}.toml", m.device_id)),
            png: Some(run_dir.join(format!("{}.png", m.device_id))),
            svg: None,
        };
        factory::write_outputs(&m, &paths)?;
        s.n.line(&format!(
            "{label:<8} {} ({device_type} {model}) serial {serial} -> QR {}",
            m.device_id,
            paths
                .png
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string())
        ));
        made.push((label, m, paths));
    }
    let evs = cast
        .factory
        .enqueue(made.iter().map(|(_, m, _)| m.draft.clone()).collect())?;
    cast.factory.delivered(&evs, s.t).await?;
    for (label, m, _) in &made {
        s.state(
            &format!("{label} manufactured"),
            &m.device_id,
            DeviceState::Unconfigured,
        )
        .await?;
    }
    s.n.line("3 x device.manufactured committed (durable in the log) and folded: unconfigured");
    for (label, m, paths) in made {
        let outbox = PathBuf::from(format!("{}.outbox", paths.identity.display()));
        cast.devices.push(Dev {
            label,
            id: m.device_id.clone(),
            png: paths.png.clone().unwrap_or_default(),
            identity_file: paths.identity,
            online: Principal::start(m.identity, &outbox)?,
        });
    }
    s.n.line(
        "the 3 devices are powered on: each runs an agent session (presence, pairing, commands)",
    );
    Ok(())
}

/// Attack 1: a counterfeit QR label for sensor-b, refused by the trusted station, and by the
/// projector (with an alert) when a station without the fleet key publishes it.
async fn counterfeit(s: &Scene<'_>, cast: &Cast, run_dir: &Path) -> Result<(), DemoError> {
    let b = &cast.devices[SENSOR_B];
    s.n.step(&format!(
        "attack 1: a counterfeit QR label for {} ({}): same claims, MAC'd with a key of no fleet",
        b.label, b.id
    ));
    let genuine = qrimage::read_image(&b.png)?;
    let claims = operator::check_qr(genuine.trim(), sys::now_secs(), Some(s.root))
        .map_err(AgentError::from)?
        .claims;
    let fake = forge::counterfeit_qr(&claims, &cast.factory.identity.kid, sys::random());
    let fake_png = run_dir.join(format!("counterfeit-{}.png", b.id));
    qrimage::write_png(&fake, &fake_png)?;
    let scanned = qrimage::read_image(&fake_png)?;
    s.n.line(&format!(
        "written {} and scanned back from the image",
        fake_png.display()
    ));
    let trusted = operator::check_qr(scanned.trim(), sys::now_secs(), Some(s.root));
    s.n.expect(
        "the trusted station (with the fleet key) refuses the counterfeit as forged",
        match &trusted {
            Err(QrError::Forged) => Ok(()),
            Err(e) => Err(format!("refused, but as: {e}")),
            Ok(_) => Err("accepted".into()),
        },
    )?;
    s.n.line(&format!(
        "{} (fleet key at hand): REFUSED, {}; nothing published",
        cast.operator.identity.kid,
        trusted.err().map_or(String::new(), |e| e.to_string())
    ));
    s.n.expect(
        "without the fleet key the counterfeit's form and expiry look right",
        operator::check_qr(scanned.trim(), sys::now_secs(), None)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    )?;
    let forged = single(cast.field.enqueue(vec![draft::activated(
        b.id.clone(),
        scanned.trim().to_owned(),
        "mallory".into(),
        operator::new_activation_token(sys::random()).as_str(),
        ClientInfo {
            ip: Some("198.51.100.66".into()),
            user_agent: Some("pairbus-demo/field-station".into()),
            fingerprint: None,
        },
    )])?)?;
    cast.field
        .delivered(std::slice::from_ref(&forged), s.t)
        .await?;
    s.wait(
        "the projector refuses the counterfeit activation as forged_qr and raises an alert",
        || s.p(|p| expect::refused_with_alert(p, &b.id, &forged.id, Code::ForgedQr)),
    )
    .await?;
    s.n.expect(
        "the counterfeit changed nothing",
        s.p(|p| expect::state_is(p, &b.id, DeviceState::Unconfigured)),
    )?;
    s.n.line(&format!(
        "{} (no fleet key: form and expiry only) published device.activated; the broker logged it (signed by a real operator), the projector checked the factory MAC: REFUSED forged_qr, alert raised; {} stays unconfigured",
        cast.field.identity.kid, b.label
    ));
    Ok(())
}

/// The operator activates each device from its QR image.
async fn activate(s: &Scene<'_>, cast: &Cast) -> Result<(), DemoError> {
    s.n.step(&format!(
        "{} activates each device from its QR image for owner `{OWNER}` (factory MAC checked with the fleet key)",
        cast.operator.identity.kid
    ));
    for d in &cast.devices {
        let text = qrimage::read_image(&d.png)?;
        let check = operator::check_qr(text.trim(), sys::now_secs(), Some(s.root))
            .map_err(AgentError::from)?;
        let key = operator::activation_key(&d.id);
        operator::check_not_reused(&d.id, cast.operator.outbox.state_get(&key)?)?;
        let record = serde_json::to_vec(&ActivationRecord {
            at_ms: sys::now_ms(),
            owner: OWNER.into(),
        })
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let token = operator::new_activation_token(sys::random());
        let ev = single(cast.operator.enqueue_with(
            vec![draft::activated(
                d.id.clone(),
                text.trim().to_owned(),
                OWNER.into(),
                token.as_str(),
                ClientInfo {
                    ip: Some("192.0.2.10".into()),
                    user_agent: Some("pairbus-demo/operator-console".into()),
                    fingerprint: Some("demo-console-1".into()),
                },
            )],
            &[(key.as_str(), Some(record))],
        )?)?;
        cast.operator
            .delivered(std::slice::from_ref(&ev), s.t)
            .await?;
        s.accepted(&format!("{} activated", d.label), &d.id, &ev)
            .await?;
        s.state(
            &format!("{} activation pending", d.label),
            &d.id,
            DeviceState::ActivationPending,
        )
        .await?;
        s.n.line(&format!(
            "{:<8} QR decoded from {} ({} {}, by {}): device.activated accepted, activation pending until the device proves its key",
            d.label,
            d.png.display(),
            check.claims.device_type,
            check.claims.model,
            check.factory
        ));
    }
    Ok(())
}

/// Each device completes its setup itself.
async fn setup(s: &Scene<'_>, cast: &Cast) -> Result<(), DemoError> {
    s.n.step("each device completes setup itself: its own signed event proves it holds its key");
    for d in &cast.devices {
        let ev = single(
            d.online
                .local(LocalCommand::Setup(draft::setup_completed(
                    d.id.clone(),
                    OWNER.into(),
                    Role::Owner,
                )))
                .await?,
        )?;
        d.online.delivered(std::slice::from_ref(&ev), s.t).await?;
        s.accepted(&format!("{} setup", d.label), &d.id, &ev)
            .await?;
        s.state(
            &format!("{} configured", d.label),
            &d.id,
            DeviceState::Configured,
        )
        .await?;
        s.n.line(&format!(
            "{:<8} device.setup_completed signed by device:{}: configured",
            d.label, d.id
        ));
    }
    Ok(())
}

/// The operator asks the hub to manage both sensors; the handshake runs between the devices'
/// sessions. Returns the request for sensor-a (replayed later).
async fn pair(s: &Scene<'_>, cast: &Cast) -> Result<Event, DemoError> {
    s.n.step(&format!(
        "{} asks the hub to manage both sensors; the devices run the handshake through the broker's relays",
        cast.operator.identity.kid
    ));
    let hub = &cast.devices[HUB];
    let sensors = [
        cast.devices[SENSOR_A].id.clone(),
        cast.devices[SENSOR_B].id.clone(),
    ];
    let requests = cast.operator.enqueue(
        sensors
            .iter()
            .map(|x| draft::pairing_requested(hub.id.clone(), x.clone()))
            .collect(),
    )?;
    cast.operator.delivered(&requests, s.t).await?;
    s.wait("the hub manages both sensors (projector)", || {
        s.p(|p| expect::manages(p, &hub.id, &sensors))
    })
    .await?;
    s.wait(
        "the hub knows it manages both sensors (its own state)",
        || {
            let st = session::load_state(&hub.online.outbox).map_err(|e| e.to_string())?;
            if sensors.iter().all(|x| st.sensors.contains(x.as_str())) {
                Ok(())
            } else {
                Err(format!(
                    "the hub's state lists [{}]",
                    st.sensors.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        },
    )
    .await?;
    for d in &cast.devices {
        s.n.expect(
            &format!("{} paired", d.label),
            s.p(|p| expect::state_is(p, &d.id, DeviceState::Paired)),
        )?;
    }
    for d in &cast.devices[SENSOR_A..] {
        let steps = s.p(|p| {
            p.trails
                .get(&d.id)
                .map(|tr| {
                    tr.iter()
                        .filter(|e| {
                            matches!(
                                e.event_type,
                                Some(EventType::PairingOffered | EventType::PairingAccepted)
                            )
                        })
                        .map(|e| {
                            format!(
                                "#{} {} by {}",
                                e.seq,
                                e.event_type.map_or("?", |t| t.as_str()),
                                e.src.as_ref().map_or("-".into(), |k| k.to_string())
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        });
        s.n.line(&format!(
            "{:<8} {}: paired with the hub",
            d.label,
            steps.join(" -> ")
        ));
    }
    requests
        .into_iter()
        .next()
        .ok_or_else(|| DemoError::Expectation {
            what: "the pairing requests".into(),
            why: "none queued".into(),
        })
}

/// The hub runs `start_scan` and `status` on both sensors.
async fn commands(s: &Scene<'_>, cast: &Cast) -> Result<(), DemoError> {
    s.n.step("the hub runs commands on its sensors (relayed only because it manages them); the sensors answer");
    let hub = &cast.devices[HUB];
    for (target, command, params) in [
        (
            SENSOR_A,
            Command::StartScan,
            meta(&[("seconds", MetaValue::Int(3))]),
        ),
        (SENSOR_A, Command::Status, Metadata::new()),
        (
            SENSOR_B,
            Command::StartScan,
            meta(&[("seconds", MetaValue::Int(5))]),
        ),
        (SENSOR_B, Command::Status, Metadata::new()),
    ] {
        let tgt = &cast.devices[target];
        let id = single(
            hub.online
                .local(LocalCommand::Command(draft::command_issued(
                    hub.id.clone(),
                    tgt.id.clone(),
                    command,
                    params,
                    sys::now_ms(),
                    60_000,
                )))
                .await?,
        )?
        .id;
        s.wait(
            &format!("{} on {} completed", command.as_str(), tgt.label),
            || s.p(|p| expect::command_completed(p, &id)),
        )
        .await?;
        let result = s
            .p(|p| p.commands.get(&id).and_then(|c| c.completed))
            .and_then(|(seq, _)| s.details(seq))
            .map(|v| v["result"].to_string())
            .unwrap_or_default();
        s.n.line(&format!(
            "{:<10} -> {:<8} completed: ok {result}",
            command.as_str(),
            tgt.label
        ));
    }
    Ok(())
}

/// Each device records an action with metadata.
async fn actions(s: &Scene<'_>, cast: &Cast) -> Result<(), DemoError> {
    s.n.step("the devices record actions with their metadata");
    let text = |v: &str| MetaValue::Text(v.into());
    for (i, action, m, ip, ua) in [
        (
            SENSOR_A,
            "voice_recording",
            meta(&[("seconds", MetaValue::Int(12)), ("codec", text("opus"))]),
            "10.1.2.3",
            None,
        ),
        (
            SENSOR_B,
            "qr_scan",
            meta(&[("code", text("SHELF-42")), ("ok", MetaValue::Bool(true))]),
            "10.1.2.4",
            None,
        ),
        (
            HUB,
            "login",
            meta(&[("user", text(OWNER)), ("method", text("pin"))]),
            "10.1.2.1",
            Some("hub-console/2.1"),
        ),
    ] {
        let d = &cast.devices[i];
        let ev = single(
            d.online
                .local(LocalCommand::Action(draft::action(
                    d.id.clone(),
                    action.into(),
                    m,
                    Some(ip.into()),
                    ua.map(str::to_owned),
                )))
                .await?,
        )?;
        s.accepted(&format!("{} {action}", d.label), &d.id, &ev)
            .await?;
        let shown = s
            .seq_of(&d.id, &ev.id)
            .ok()
            .and_then(|seq| s.details(seq))
            .map_or(String::new(), |v| v["metadata"].to_string());
        s.n.line(&format!(
            "{:<8} device.action {action} {shown} from {ip} accepted",
            d.label
        ));
    }
    Ok(())
}

/// Attack 2: `request`'s exact bytes published again by another client with the operator's
/// credentials: answered `already_committed`, not appended.
async fn replay_event(s: &Scene<'_>, cast: &Cast, request: &Event) -> Result<(), DemoError> {
    s.n.step("attack 2: the operator's pairing.requested (hub, sensor-a) re-published byte for byte by another MQTT client");
    let original = s.record(s.seq_of(&cast.devices[HUB].id, &request.id)?)?;
    let before = s.bus.log().head().seq;
    let answer = replay::republish(
        &cast.operator.identity,
        original.event.clone(),
        request.id,
        s.t,
    )
    .await?;
    let after = s.bus.log().head().seq;
    s.n.expect(
        "the replayed event is answered already_committed and not appended",
        expect::replay_refused(&answer, &request.id, original.seq, before, after),
    )?;
    s.n.line(&format!(
        "broker: {} (event {} is record #{}); the log did not grow ({before} -> {after} records), nothing relayed again (relays follow appends only)",
        answer.status.as_str(),
        answer.id,
        answer.seq
    ));
    Ok(())
}

/// Attack 3: sensor-a's consumed pairing nonce in a new `pairing.accepted` signed with its
/// key: logged (the MAC is valid), refused by the projector with an alert.
async fn replay_token(s: &Scene<'_>, cast: &Cast) -> Result<(), DemoError> {
    s.n.step("attack 3: sensor-a's pairing token (the nonce it accepted) replayed in a new pairing.accepted, signed with its key (a cloned sensor)");
    let (hub, a) = (&cast.devices[HUB], &cast.devices[SENSOR_A]);
    let missing = |why: &str| DemoError::Expectation {
        what: "sensor-a's accepted pairing in its trail".into(),
        why: why.into(),
    };
    let seq = s
        .p(|p| {
            p.trails.get(&a.id).and_then(|tr| {
                tr.iter()
                    .find(|e| {
                        e.event_type == Some(EventType::PairingAccepted)
                            && e.status == Status::Accepted
                    })
                    .map(|e| e.seq)
            })
        })
        .ok_or_else(|| missing("not found"))?;
    let nonce = match pairbus_projector::decode::decode_event(&s.record(seq)?.event).map(|e| e.body)
    {
        Ok(Body::PairingAccepted(acc)) => acc.nonce,
        _ => return Err(missing("its record does not decode as pairing.accepted")),
    };
    let replayed = single(a.online.enqueue(vec![draft::pairing_accepted(
        a.id.clone(),
        hub.id.clone(),
        nonce,
    )])?)?;
    a.online
        .delivered(std::slice::from_ref(&replayed), s.t)
        .await?;
    s.wait(
        "the projector refuses the replayed pairing token as nonce_reused and raises an alert",
        || s.p(|p| expect::refused_with_alert(p, &a.id, &replayed.id, Code::NonceReused)),
    )
    .await?;
    let sensors = [a.id.clone(), cast.devices[SENSOR_B].id.clone()];
    s.n.expect(
        "the pairings are unchanged",
        s.p(|p| expect::manages(p, &hub.id, &sensors)),
    )?;
    s.n.line(&format!(
        "nonce {} (consumed at record #{seq}): the broker logged the new event (a valid MAC), the projector REFUSED it (nonce_reused) and raised an alert; the graph is unchanged",
        hex::encode(nonce)
    ));
    Ok(())
}

/// Each device's history, the pairing graph and the alerts of this run.
fn report(s: &Scene<'_>, cast: &Cast) -> Result<(), DemoError> {
    let log = LogRecords(&**s.bus.log());
    for d in &cast.devices {
        s.n.step(&format!(
            "history of {} {} (as `pairbus-projector history {}` prints it)",
            d.label, d.id, d.id
        ));
        let q = Query::History {
            id: d.id.to_string(),
            since: None,
            until: None,
            types: vec![],
        };
        match s.p(|p| query::run(p, &log, &q)) {
            Ok(Response::History(h)) => s.n.block(&text::history(&h)),
            other => {
                return Err(DemoError::Expectation {
                    what: format!("the history of {}", d.id),
                    why: match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "another kind of answer".into(),
                    },
                })
            }
        }
    }

    let ours = cast.ids();
    let (sub, all_edges) = s.p(|p| {
        let g = graph(p);
        (expect::subgraph(&g, &ours), g.edges.len())
    });
    s.n.step(&format!(
        "pairing graph of this run's devices (the whole fleet has {all_edges} pair(s); `pairbus-projector graph` shows it all)"
    ));
    s.n.block(&to_text(&sub));
    let hub = &cast.devices[HUB].id;
    s.n.expect(
        "the graph shows the hub managing the two sensors",
        if sub.edges.len() == 2 && sub.edges.iter().all(|e| e.manager == hub.as_str()) {
            Ok(())
        } else {
            Err(format!("{} edge(s)", sub.edges.len()))
        },
    )?;

    let alerts: Vec<_> = s.p(|p| {
        p.alerts
            .iter()
            .filter(|a| a.seq > s.first)
            .cloned()
            .collect()
    });
    s.n.step("alerts raised during this run (as `pairbus-projector alerts` prints them)");
    s.n.block(&text::alerts(&alerts));
    // Alerts about other devices (e.g. the lapsed activation of an interrupted earlier run)
    // may be raised too; this run's devices must have exactly the two of the attacks.
    let codes: Vec<String> = alerts
        .iter()
        .filter(|a| a.device.as_ref().is_some_and(|d| ours.contains(d)))
        .map(|a| a.code.as_str())
        .collect();
    s.n.expect(
        "this run's devices have exactly the two alerts of the attacks (forged_qr, nonce_reused)",
        if codes == ["forged_qr", "nonce_reused"] {
            Ok(())
        } else {
            Err(format!("alerts: [{}]", codes.join(", ")))
        },
    )?;
    for d in &cast.devices {
        s.n.line(&format!(
            "{:<8} files: {} (identity, 0600), {} (QR)",
            d.label,
            d.identity_file.display(),
            d.png.display()
        ));
    }
    Ok(())
}
