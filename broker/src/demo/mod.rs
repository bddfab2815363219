//! `pairbus-broker demo`: the whole pairbus story in one command, against the real bus.
//!
//! The bus ([`crate::bus::Bus`]) runs in-process on ephemeral loopback ports (so it never
//! collides with a running `serve`) over a local data folder (initialized if new, reused
//! after). Every principal is played with the `pairbus-agent` library, as the agent binary
//! plays it: real rumqttc sessions with durable outboxes; devices answer pairing offers and
//! commands on their own. The story: manufacture three devices with QR codes (PNG), activate
//! them from the images, complete setup on the devices, pair a hub with two sensors, run
//! commands and actions, then three attacks (a counterfeit QR label, an event replayed byte for
//! byte, a replayed pairing token), each of which must be refused and (where the log is
//! concerned) alerted. Each step is checked ([`expect`]): the demo succeeds only if every
//! expectation held, and names the first one that did not otherwise.
//!
//! Every run makes devices with fresh random serial numbers, so runs never collide; the
//! factory and operator outboxes live in the data folder (next to their identity files, where
//! `pairbus-agent` keeps them) so that their `seq` counters carry on from run to run.

mod actors;
pub mod expect;
pub mod forge;
mod replay;

use crate::bus::{Bus, BusError, BusSettings};
use crate::datadir::{self, DataDirError};
use crate::http::LogRecords;
use crate::ingest::IngestSettings;
use crate::log::{LogError, LogStore};
use actors::Principal;
use expect::Check;
use pairbus_agent::device::LocalCommand;
use pairbus_agent::draft::{self, ClientInfo, ManufactureSpec};
use pairbus_agent::factory::{self, OutputPaths};
use pairbus_agent::operator::{self, ActivationRecord};
use pairbus_agent::{qrimage, session, sys, AgentError};
use pairbus_projector::graph::{graph, to_text};
use pairbus_projector::model::{Code, DeviceState};
use pairbus_projector::query::{self, Query, Response};
use pairbus_projector::{text, Projections};
use pairbus_schemas::event::{Command, Component, MetaValue, Metadata, Role};
use pairbus_schemas::identity::Identity;
use pairbus_schemas::qr::{QrError, DEFAULT_QR_TTL_SECS};
use pairbus_schemas::{Body, DeviceId, Event, EventType, Kid, RootSecret};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The demo's data folder unless `--data` says otherwise.
pub const DEFAULT_DEMO_DATA: &str = "./pairbus-demo";

/// The owner the devices are activated for.
const OWNER: &str = "alice";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The data folder (fleet key, identities, the log, the demo's device files).
    pub data: PathBuf,
    /// How long to wait for each step before declaring it failed.
    pub timeout: Duration,
}

/// Why the demo failed.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The data folder could not be created or read.
    #[error("data folder: {0}")]
    DataDir(#[from] DataDirError),
    /// The bus did not start.
    #[error("starting the bus: {0}")]
    Bus(#[from] BusError),
    /// The event log could not be read.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// An agent operation failed (outbox, QR image, …).
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The replay client failed.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// Something the story needs was refused.
    #[error("{by} refused: {why}")]
    Refused {
        /// Who refused.
        by: String,
        /// Why.
        why: String,
    },
    /// A principal's session ended early.
    #[error("the session of {0} stopped unexpectedly")]
    Stopped(String),
    /// A step did not happen in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The timeout.
        secs: u64,
    },
    /// An expectation did not hold.
    #[error("expectation failed: {what}: {why}")]
    Expectation {
        /// The expectation.
        what: String,
        /// What was seen instead.
        why: String,
    },
    /// The async runtime could not start.
    #[error("async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Expectations checked (all held).
    pub expectations: usize,
    /// Records in the log at the end.
    pub records: u64,
    /// Records this run added.
    pub this_run: u64,
    /// Seconds the story took.
    pub secs: f64,
}

impl Summary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        format!(
            "demo OK: 3 devices made, activated from their QR images and set up; 2 pairings; 4 commands and 3 actions; 3 attacks refused and alerted; {} expectations held; {} records in the log ({} this run, chain verified) in {:.1} s",
            self.expectations, self.records, self.this_run, self.secs
        )
    }
}

fn say(s: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// Numbered steps, indented details, and the count of expectations that held.
struct Narrator {
    step: Cell<usize>,
    held: Cell<usize>,
}

impl Narrator {
    fn step(&self, s: &str) {
        self.step.set(self.step.get() + 1);
        say(&format!("\n[{:>2}] {s}", self.step.get()));
    }

    fn line(&self, s: &str) {
        say(&format!("     {s}"));
    }

    fn block(&self, s: &str) {
        for l in s.lines() {
            say(&format!("       {l}"));
        }
    }

    /// Checks an expectation now.
    fn expect(&self, what: &str, check: Check) -> Result<(), DemoError> {
        check.map_err(|why| DemoError::Expectation {
            what: what.into(),
            why,
        })?;
        self.held.set(self.held.get() + 1);
        Ok(())
    }
}

/// A device of the story.
struct Dev {
    label: &'static str,
    id: DeviceId,
    png: PathBuf,
    identity_file: PathBuf,
    online: Principal,
}

/// Everyone online.
struct Cast {
    factory: Principal,
    operator: Principal,
    field: Principal,
    devices: Vec<Dev>,
}

impl Cast {
    async fn stop(self) {
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
}

/// Runs the demo: prints the story on stdout and returns the summary if every expectation
/// held. The bus is shut down before returning, whatever happened.
pub fn run(opts: &DemoOptions) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let n = Narrator {
        step: Cell::new(0),
        held: Cell::new(0),
    };
    let root = prepare(&n, &opts.data)?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let bus = Bus::start(
        BusSettings {
            data_dir: opts.data.clone(),
            device_listen: loopback,
            operator_listen: loopback,
            http_listen: loopback,
            ingest: IngestSettings::default(),
        },
        root.clone(),
    )?;
    let first = bus.log().head().seq;
    n.step(&format!(
        "bus started in this process on ephemeral loopback ports: device plane {}, operator plane {}, HTTP http://{} (the log holds {first} records)",
        bus.device_addr(),
        bus.operator_addr(),
        bus.http_addr()
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime);
    let result = match rt {
        Ok(rt) => {
            let mut cast = None;
            let story = rt.block_on(play(&n, &bus, &root, opts, first, &mut cast));
            if let Some(c) = cast {
                rt.block_on(c.stop());
            }
            story
        }
        Err(e) => Err(e),
    };
    let result = result.and_then(|()| {
        let report = bus.log().verify()?;
        let head = report.head.seq;
        n.expect(
            "the log verifies (every hash link, MAC and checkpoint)",
            match report.first_bad {
                None => Ok(()),
                Some(b) => Err(format!("record {}: {}", b.seq, b.problem)),
            },
        )?;
        Ok(Summary {
            expectations: n.held.get(),
            records: head,
            this_run: head.saturating_sub(first),
            secs: started.elapsed().as_secs_f64(),
        })
    });
    bus.shutdown();
    result
}

/// Creates the data folder (fleet key, first identities) or reuses it; returns the root.
fn prepare(n: &Narrator, data: &Path) -> Result<RootSecret, DemoError> {
    if data.join(datadir::FLEET_KEY).exists() {
        n.step(&format!(
            "data folder {}: reused (fleet.key, operator-admin.toml, factory-default.toml, log/)",
            data.display()
        ));
    } else {
        let made = datadir::init(data, crate::config::DEFAULT_OPERATOR_LISTEN)?;
        n.step(&format!(
            "data folder {}: created with a fresh fleet root secret ({}, 0600) and the first identities ({}, {})",
            data.display(),
            made.fleet_key.display(),
            made.operator.display(),
            made.factory.display()
        ));
    }
    Ok(datadir::load_root(data)?)
}

fn read_identity(path: &Path, broker: SocketAddr) -> Result<Identity, DemoError> {
    let text =
        zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| DemoError::Io {
                path: path.to_owned(),
                source,
            })?,
        );
    let mut id = Identity::from_toml(&text).map_err(|e| DemoError::Io {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    id.broker = broker.to_string();
    Ok(id)
}

/// Reads the embedded projector's state.
fn with_p<T>(bus: &Bus, f: impl FnOnce(&Projections) -> T) -> T {
    let guard = bus.projections().lock().unwrap_or_else(|e| e.into_inner());
    f(guard.state())
}

/// Waits until `check` holds (re-checked at every commit, and at least every 25 ms), or fails
/// naming `what` with the last reason after `timeout`.
async fn wait(
    n: &Narrator,
    bus: &Bus,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Check,
) -> Result<(), DemoError> {
    let end = tokio::time::Instant::now() + timeout;
    let mut head = bus.log().subscribe();
    loop {
        match check() {
            Ok(()) => return n.expect(what, Ok(())),
            Err(why) if tokio::time::Instant::now() >= end => {
                return Err(DemoError::Expectation {
                    what: what.into(),
                    why: format!("{why} (after {} s)", timeout.as_secs()),
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

/// Waits until the projector has folded `id` about `device`, accepted.
async fn accepted(
    n: &Narrator,
    bus: &Bus,
    t: Duration,
    what: &str,
    device: &DeviceId,
    ev: &Event,
) -> Result<(), DemoError> {
    wait(n, bus, t, what, || {
        with_p(bus, |p| expect::accepted(p, device, &ev.id))
    })
    .await
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

/// The log record of the event `id` about `device` (its position from the projector's trail).
fn record_of(
    bus: &Bus,
    device: &DeviceId,
    id: &pairbus_schemas::EventId,
) -> Result<pairbus_schemas::Record, DemoError> {
    let seq = with_p(bus, |p| expect::entry(p, device, id).map(|e| e.seq)).ok_or_else(|| {
        DemoError::Expectation {
            what: format!("event {id} in {device}'s trail"),
            why: "not found".into(),
        }
    })?;
    bus.log().get(seq)?.ok_or_else(|| DemoError::Expectation {
        what: format!("record {seq} in the log"),
        why: "not found".into(),
    })
}

async fn play(
    n: &Narrator,
    bus: &Bus,
    root: &RootSecret,
    opts: &DemoOptions,
    first: u64,
    slot: &mut Option<Cast>,
) -> Result<(), DemoError> {
    let t = opts.timeout;
    let data = &opts.data;
    let run_tag = hex::encode(sys::random::<4>());
    let run_dir = data.join("demo").join(format!("run-{run_tag}"));
    std::fs::create_dir_all(&run_dir).map_err(|source| DemoError::Io {
        path: run_dir.clone(),
        source,
    })?;
    let op_addr = bus.operator_addr();
    let factory_id = read_identity(&data.join(datadir::FACTORY_IDENTITY), op_addr)?;
    factory::check_factory_key(root, &factory_id.kid, &factory_id.key)?;
    let operator_id = read_identity(&data.join(datadir::OPERATOR_IDENTITY), op_addr)?;
    let field_kid = Kid::parse("operator:field").map_err(|e| DemoError::Expectation {
        what: "the field station's kid".into(),
        why: e.to_string(),
    })?;
    let field_id = Identity {
        key: root.derive(&field_kid),
        kid: field_kid,
        broker: op_addr.to_string(),
    };
    let outbox_of = |file: &str| data.join(format!("{file}.outbox"));
    let cast = slot.insert(Cast {
        factory: Principal::start(factory_id, &outbox_of(datadir::FACTORY_IDENTITY))?,
        operator: Principal::start(operator_id, &outbox_of(datadir::OPERATOR_IDENTITY))?,
        field: Principal::start(field_id, &data.join("demo").join("operator-field.outbox"))?,
        devices: Vec::new(),
    });
    n.line(&format!(
        "online: {} and {} (identities of the data folder), {} (a field station without the fleet key); agent sessions with durable outboxes",
        cast.factory.identity.kid, cast.operator.identity.kid, cast.field.identity.kid
    ));

    // Manufacture.
    n.step(&format!(
        "{} manufactures 3 devices (fresh serial numbers, run {run_tag}); identity files and QR codes (PNG) in {}",
        cast.factory.identity.kid,
        run_dir.display()
    ));
    let specs = [
        (
            "hub",
            "hub",
            "H1",
            vec![component("radio", "lora"), component("cpu", "arm64")],
        ),
        (
            "sensor-a",
            "sensor",
            "S2",
            vec![component("camera", "12MP"), component("microphone", "mems")],
        ),
        (
            "sensor-b",
            "sensor",
            "S2",
            vec![component("lidar", "905nm"), component("battery", "4000mAh")],
        ),
    ];
    let mut made = Vec::new();
    for (label, device_type, model, components) in specs {
        let serial = format!("DEMO-{run_tag}-{}", label.to_ascii_uppercase());
        let id = pairbus_schemas::keys::device_id_from_serial_hash(&root.serial_hash(&serial));
        let m = factory::make_device(
            root,
            &cast.factory.identity.kid,
            &cast.factory.identity.key,
            &serial,
            ManufactureSpec {
                device_type: device_type.into(),
                model: model.into(),
                manufacturer: "pairbus demo works".into(),
                name: format!("{label}-{}", &id.as_str()[..6]),
                components,
            },
            &bus.device_addr().to_string(),
            sys::now_secs(),
            DEFAULT_QR_TTL_SECS,
        )?;
        let paths = OutputPaths {
            identity: run_dir.join(format!("{}.toml", m.device_id)),
            png: Some(run_dir.join(format!("{}.png", m.device_id))),
            svg: None,
        };
        factory::write_outputs(&m, &paths)?;
        n.line(&format!(
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
    cast.factory.delivered(&evs, t).await?;
    for (label, m, _) in &made {
        wait(n, bus, t, &format!("{label} manufactured"), || {
            with_p(bus, |p| {
                expect::state_is(p, &m.device_id, DeviceState::Unconfigured)
            })
        })
        .await?;
    }
    n.line("3 x device.manufactured committed (durable in the log) and folded: unconfigured");
    for (label, m, paths) in made {
        let outbox = PathBuf::from(format!("{}.outbox", paths.identity.display()));
        cast.devices.push(Dev {
            label,
            id: m.device_id.clone(),
            png: paths.png.clone().unwrap_or_default(),
            identity_file: paths.identity.clone(),
            online: Principal::start(m.identity, &outbox)?,
        });
    }
    n.line(
        "the 3 devices are powered on: each runs an agent session (presence, pairing, commands)",
    );
    let (hub, sa, sb) = (0, 1, 2);
    let dev_id = |i: usize| cast.devices[i].id.clone();
    let (hub_id, a_id, b_id) = (dev_id(hub), dev_id(sa), dev_id(sb));

    // Attack 1: a counterfeit label.
    let b = &cast.devices[sb];
    n.step(&format!(
        "attack 1: a counterfeit QR label for {} ({}): same claims, MAC'd with a key of no fleet",
        b.label, b.id
    ));
    let genuine = qrimage::read_image(&b.png)?;
    let claims = operator::check_qr(genuine.trim(), sys::now_secs(), Some(root))
        .map_err(AgentError::from)?
        .claims;
    let fake = forge::counterfeit_qr(&claims, &cast.factory.identity.kid, sys::random());
    let fake_png = run_dir.join(format!("counterfeit-{}.png", b.id));
    qrimage::write_png(&fake, &fake_png)?;
    let scanned = qrimage::read_image(&fake_png)?;
    n.line(&format!(
        "written {} and scanned back from the image",
        fake_png.display()
    ));
    let trusted = operator::check_qr(scanned.trim(), sys::now_secs(), Some(root));
    n.expect(
        "the trusted station (with the fleet key) refuses the counterfeit as forged",
        match &trusted {
            Err(QrError::Forged) => Ok(()),
            Err(e) => Err(format!("refused, but as: {e}")),
            Ok(_) => Err("accepted".into()),
        },
    )?;
    n.line(&format!(
        "{} (fleet key at hand): REFUSED, {}; nothing published",
        cast.operator.identity.kid,
        trusted.err().map_or(String::new(), |e| e.to_string())
    ));
    let field_view = operator::check_qr(scanned.trim(), sys::now_secs(), None);
    n.expect(
        "without the fleet key the counterfeit's form and expiry look right",
        field_view.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    )?;
    let forged = cast.field.enqueue(vec![draft::activated(
        b.id.clone(),
        scanned.trim().to_owned(),
        "mallory".into(),
        operator::new_activation_token(sys::random()).as_str(),
        ClientInfo {
            ip: Some("198.51.100.66".into()),
            user_agent: Some("pairbus-demo/field-station".into()),
            fingerprint: None,
        },
    )])?;
    cast.field.delivered(&forged, t).await?;
    wait(
        n,
        bus,
        t,
        "the projector refuses the counterfeit activation as forged_qr and raises an alert",
        || {
            with_p(bus, |p| {
                expect::refused_with_alert(p, &b_id, &forged[0].id, Code::ForgedQr)
            })
        },
    )
    .await?;
    n.expect(
        "the counterfeit changed nothing",
        with_p(bus, |p| {
            expect::state_is(p, &b_id, DeviceState::Unconfigured)
        }),
    )?;
    n.line(&format!(
        "{} (no fleet key: form and expiry only) published device.activated; the broker logged it (signed by a real operator), the projector checked the factory MAC: REFUSED forged_qr, alert raised; {} stays unconfigured",
        cast.field.identity.kid, b.label
    ));

    // Activation from the QR images.
    n.step(&format!(
        "{} activates each device from its QR image for owner `{OWNER}` (factory MAC checked with the fleet key)",
        cast.operator.identity.kid
    ));
    for d in &cast.devices {
        let text = qrimage::read_image(&d.png)?;
        let check = operator::check_qr(text.trim(), sys::now_secs(), Some(root))
            .map_err(AgentError::from)?;
        let key = operator::activation_key(&d.id);
        operator::check_not_reused(&d.id, cast.operator.outbox.state_get(&key)?)?;
        let record = serde_json::to_vec(&ActivationRecord {
            at_ms: sys::now_ms(),
            owner: OWNER.into(),
        })
        .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let token = operator::new_activation_token(sys::random());
        let evs = cast.operator.enqueue_with(
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
        )?;
        cast.operator.delivered(&evs, t).await?;
        accepted(n, bus, t, &format!("{} activated", d.label), &d.id, &evs[0]).await?;
        wait(
            n,
            bus,
            t,
            &format!("{} activation pending", d.label),
            || {
                with_p(bus, |p| {
                    expect::state_is(p, &d.id, DeviceState::ActivationPending)
                })
            },
        )
        .await?;
        n.line(&format!(
            "{:<8} QR decoded from {} ({} {}, by {}): device.activated accepted, activation pending until the device proves its key",
            d.label,
            d.png.display(),
            check.claims.device_type,
            check.claims.model,
            check.factory
        ));
    }

    // Setup by each device.
    n.step("each device completes setup itself: its own signed event proves it holds its key");
    for d in &cast.devices {
        let evs = d
            .online
            .local(LocalCommand::Setup(draft::setup_completed(
                d.id.clone(),
                OWNER.into(),
                Role::Owner,
            )))
            .await?;
        d.online.delivered(&evs, t).await?;
        accepted(n, bus, t, &format!("{} setup", d.label), &d.id, &evs[0]).await?;
        wait(n, bus, t, &format!("{} configured", d.label), || {
            with_p(bus, |p| expect::state_is(p, &d.id, DeviceState::Configured))
        })
        .await?;
        n.line(&format!(
            "{:<8} device.setup_completed signed by device:{}: configured",
            d.label, d.id
        ));
    }

    // Pairing.
    n.step(&format!(
        "{} asks the hub to manage both sensors; the devices run the handshake through the broker's relays",
        cast.operator.identity.kid
    ));
    let requests = cast.operator.enqueue(vec![
        draft::pairing_requested(hub_id.clone(), a_id.clone()),
        draft::pairing_requested(hub_id.clone(), b_id.clone()),
    ])?;
    cast.operator.delivered(&requests, t).await?;
    let sensors = [a_id.clone(), b_id.clone()];
    wait(
        n,
        bus,
        t,
        "the hub manages both sensors (projector)",
        || with_p(bus, |p| expect::manages(p, &hub_id, &sensors)),
    )
    .await?;
    let hub_outbox = cast.devices[hub].online.outbox.clone();
    wait(
        n,
        bus,
        t,
        "the hub knows it manages both sensors (its own state)",
        || {
            let s = session::load_state(&hub_outbox).map_err(|e| e.to_string())?;
            if sensors.iter().all(|x| s.sensors.contains(x.as_str())) {
                Ok(())
            } else {
                Err(format!(
                    "the hub's state lists [{}]",
                    s.sensors.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        },
    )
    .await?;
    for d in &cast.devices {
        n.expect(
            &format!("{} paired", d.label),
            with_p(bus, |p| expect::state_is(p, &d.id, DeviceState::Paired)),
        )?;
    }
    for d in &cast.devices[1..] {
        let lines = with_p(bus, |p| {
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
                                e.src.as_ref().map_or("-".into(), |s| s.to_string())
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        });
        n.line(&format!(
            "{:<8} {}: paired with the hub",
            d.label,
            lines.join(" -> ")
        ));
    }

    // Commands.
    n.step("the hub runs commands on its sensors (relayed only because it manages them); the sensors answer");
    let log = LogRecords(&**bus.log());
    for (target, command, params) in [
        (
            sa,
            Command::StartScan,
            meta(&[("seconds", MetaValue::Int(3))]),
        ),
        (sa, Command::Status, Metadata::new()),
        (
            sb,
            Command::StartScan,
            meta(&[("seconds", MetaValue::Int(5))]),
        ),
        (sb, Command::Status, Metadata::new()),
    ] {
        let tgt = &cast.devices[target];
        let evs = cast.devices[hub]
            .online
            .local(LocalCommand::Command(draft::command_issued(
                hub_id.clone(),
                tgt.id.clone(),
                command,
                params,
                sys::now_ms(),
                60_000,
            )))
            .await?;
        let id = evs[0].id;
        wait(
            n,
            bus,
            t,
            &format!("{} on {} completed", command.as_str(), tgt.label),
            || with_p(bus, |p| expect::command_completed(p, &id)),
        )
        .await?;
        let result = with_p(bus, |p| {
            p.commands
                .get(&id)
                .and_then(|c| c.completed)
                .and_then(|(seq, _)| query::details(&log, seq))
                .map(|v| v["result"].to_string())
                .unwrap_or_default()
        });
        n.line(&format!(
            "{:<10} -> {:<8} completed: ok {result}",
            command.as_str(),
            tgt.label
        ));
    }

    // Actions.
    n.step("the devices record actions with their metadata");
    for (i, action, m, ip, ua) in [
        (
            sa,
            "voice_recording",
            meta(&[
                ("seconds", MetaValue::Int(12)),
                ("codec", MetaValue::Text("opus".into())),
            ]),
            Some("10.1.2.3"),
            None,
        ),
        (
            sb,
            "qr_scan",
            meta(&[
                ("code", MetaValue::Text("SHELF-42".into())),
                ("ok", MetaValue::Bool(true)),
            ]),
            Some("10.1.2.4"),
            None,
        ),
        (
            hub,
            "login",
            meta(&[
                ("user", MetaValue::Text(OWNER.into())),
                ("method", MetaValue::Text("pin".into())),
            ]),
            Some("10.1.2.1"),
            Some("hub-console/2.1"),
        ),
    ] {
        let d = &cast.devices[i];
        let evs = d
            .online
            .local(LocalCommand::Action(draft::action(
                d.id.clone(),
                action.into(),
                m,
                ip.map(str::to_owned),
                ua.map(str::to_owned),
            )))
            .await?;
        accepted(n, bus, t, &format!("{} {action}", d.label), &d.id, &evs[0]).await?;
        n.line(&format!(
            "{:<8} device.action {action} {} accepted",
            d.label,
            with_p(bus, |p| expect::entry(p, &d.id, &evs[0].id)
                .and_then(|e| query::details(&log, e.seq)))
            .map_or(String::new(), |v| v["metadata"].to_string())
        ));
    }

    // Attack 2: an event replayed byte for byte.
    n.step("attack 2: the operator's pairing.requested (hub, sensor-a) re-published byte for byte by another MQTT client");
    let original = record_of(bus, &hub_id, &requests[0].id)?;
    let before = bus.log().head().seq;
    let answer = replay::republish(
        &cast.operator.identity,
        original.event.clone(),
        requests[0].id,
        t,
    )
    .await?;
    let after = bus.log().head().seq;
    n.expect(
        "the replayed event is answered already_committed and not appended",
        expect::replay_refused(&answer, &requests[0].id, original.seq, before, after),
    )?;
    n.line(&format!(
        "broker: {} (event {} is record #{}); the log did not grow ({before} -> {after} records), nothing relayed again (relays follow appends only)",
        answer.status.as_str(),
        answer.id,
        answer.seq
    ));

    // Attack 3: a replayed pairing token.
    n.step("attack 3: sensor-a's pairing token (the nonce it accepted) replayed in a new pairing.accepted, signed with its key (a cloned sensor)");
    let accepted_ev = with_p(bus, |p| {
        p.trails.get(&a_id).and_then(|tr| {
            tr.iter()
                .find(|e| {
                    e.event_type == Some(EventType::PairingAccepted)
                        && e.status == pairbus_projector::Status::Accepted
                })
                .map(|e| e.seq)
        })
    })
    .ok_or_else(|| DemoError::Expectation {
        what: "sensor-a's pairing.accepted in its trail".into(),
        why: "not found".into(),
    })?;
    let rec = bus
        .log()
        .get(accepted_ev)?
        .ok_or_else(|| DemoError::Expectation {
            what: format!("record {accepted_ev}"),
            why: "not in the log".into(),
        })?;
    let nonce = match pairbus_projector::decode::decode_event(&rec.event).map(|e| e.body) {
        Ok(Body::PairingAccepted(acc)) => acc.nonce,
        _ => {
            return Err(DemoError::Expectation {
                what: format!("record {accepted_ev} is sensor-a's pairing.accepted"),
                why: "it does not decode as one".into(),
            })
        }
    };
    let replayed = cast.devices[sa]
        .online
        .enqueue(vec![draft::pairing_accepted(
            a_id.clone(),
            hub_id.clone(),
            nonce,
        )])?;
    cast.devices[sa].online.delivered(&replayed, t).await?;
    wait(
        n,
        bus,
        t,
        "the projector refuses the replayed pairing token as nonce_reused and raises an alert",
        || {
            with_p(bus, |p| {
                expect::refused_with_alert(p, &a_id, &replayed[0].id, Code::NonceReused)
            })
        },
    )
    .await?;
    n.expect(
        "the pairings are unchanged",
        with_p(bus, |p| expect::manages(p, &hub_id, &sensors)),
    )?;
    n.line(&format!(
        "nonce {} (consumed at record #{accepted_ev}): the broker logged the new event (a valid MAC), the projector REFUSED it (nonce_reused) and raised an alert; the graph is unchanged",
        hex::encode(nonce)
    ));

    // Histories.
    for d in &cast.devices {
        n.step(&format!(
            "history of {} {} (as `pairbus-projector history {}` prints it)",
            d.label, d.id, d.id
        ));
        let q = Query::History {
            id: d.id.to_string(),
            since: None,
            until: None,
            types: vec![],
        };
        match with_p(bus, |p| query::run(p, &log, &q)) {
            Ok(Response::History(h)) => n.block(&text::history(&h)),
            Ok(_) => {}
            Err(e) => {
                return Err(DemoError::Expectation {
                    what: format!("the history of {}", d.id),
                    why: e.to_string(),
                })
            }
        }
    }

    // Graph and alerts.
    let ours: Vec<DeviceId> = cast.devices.iter().map(|d| d.id.clone()).collect();
    let (sub, all_edges) = with_p(bus, |p| {
        let g = graph(p);
        (expect::subgraph(&g, &ours), g.edges.len())
    });
    n.step(&format!(
        "pairing graph of this run's devices (the whole fleet has {all_edges} pair(s); `pairbus-projector graph` shows it all)"
    ));
    n.block(&to_text(&sub));
    n.expect(
        "the graph shows the hub managing the two sensors",
        if sub.edges.len() == 2 && sub.edges.iter().all(|e| e.manager == hub_id.as_str()) {
            Ok(())
        } else {
            Err(format!("{} edge(s)", sub.edges.len()))
        },
    )?;
    let alerts: Vec<_> = with_p(bus, |p| {
        p.alerts.iter().filter(|a| a.seq > first).cloned().collect()
    });
    n.step("alerts raised during this run (as `pairbus-projector alerts` prints them)");
    n.block(&text::alerts(&alerts));
    n.expect(
        "exactly the two alerts of the attacks (forged_qr, nonce_reused)",
        {
            let codes: Vec<String> = alerts.iter().map(|a| a.code.as_str()).collect();
            if codes == ["forged_qr", "nonce_reused"] {
                Ok(())
            } else {
                Err(format!("alerts: [{}]", codes.join(", ")))
            }
        },
    )?;
    for d in &cast.devices {
        n.line(&format!(
            "{:<8} files: {} (identity, 0600), {} (QR)",
            d.label,
            d.identity_file.display(),
            d.png.display()
        ));
    }
    Ok(())
}
