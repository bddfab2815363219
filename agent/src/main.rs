//! `pairbus-agent --identity FILE <command>`: the client of every principal.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use pairbus_agent::control;
use pairbus_agent::device::{LocalCommand, SimulatedSensor};
use pairbus_agent::discover;
use pairbus_agent::draft::{self, ClientInfo, ManufactureSpec};
use pairbus_agent::factory::{self, OutputPaths};
use pairbus_agent::operator::{self, ActivationRecord};
use pairbus_agent::outbox::Outbox;
use pairbus_agent::session::{self, Session, SessionOptions, StopReason};
use pairbus_agent::{sys, AgentError};
use pairbus_schemas::event::{Command, Metadata, Role};
use pairbus_schemas::identity::Identity;
use pairbus_schemas::ids::{DeviceId, Kid, PrincipalKind};
use pairbus_schemas::qr::DEFAULT_QR_TTL_SECS;
use pairbus_schemas::Event;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// pairbus agent: the client of every principal (device, factory station, operator).
///
/// Every event is signed with the identity's key, stored in a durable outbox, and re-sent
/// until the broker confirms it on `committed/`.
/// Prints a line on stdout. A closed pipe (`pairbus-agent … | head`) is not an error: the line
/// is dropped and the command carries on (its events are already safe in the outbox).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                eprintln!("error: writing to stdout: {e}");
            }
        }
    }};
}

#[derive(Parser, Debug)]
#[command(name = "pairbus-agent", version)]
struct Cli {
    /// The identity file (TOML: kid, key, broker).
    #[arg(long, short, env = "PAIRBUS_IDENTITY", global = true)]
    identity: Option<PathBuf>,
    /// The broker to connect to (`host:port`), instead of the identity file's `broker`
    /// (e.g. `broker:1884` inside docker compose).
    #[arg(long, env = "PAIRBUS_BROKER", global = true)]
    broker: Option<String>,
    /// The outbox directory (default: `<identity file>.outbox`).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Seconds to wait for the broker's confirmation after queueing (0: only queue; the
    /// events are sent by the next `send` or `run`).
    #[arg(long, default_value_t = 10, global = true)]
    wait: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// (factory) Make a device: identity file, signed QR code, `device.manufactured`.
    Make {
        /// Serial number (never stored nor published: only its keyed hash).
        #[arg(long)]
        serial: String,
        /// Device type, e.g. phone, sensor.
        #[arg(long = "type")]
        device_type: String,
        /// Model (default: the type).
        #[arg(long)]
        model: Option<String>,
        /// Display name (default: `<type>-<first 6 digits of the id>`).
        #[arg(long)]
        name: Option<String>,
        /// Manufacturer (default: the factory's name).
        #[arg(long)]
        manufacturer: Option<String>,
        /// A component `kind=spec` (repeatable).
        #[arg(long = "component")]
        components: Vec<String>,
        /// Where to write the QR code as PNG (default: `<out>/<device_id>.png`).
        #[arg(long)]
        qr_png: Option<PathBuf>,
        /// Where to write the QR code as SVG (default: `<out>/<device_id>.svg`).
        #[arg(long)]
        qr_svg: Option<PathBuf>,
        /// Directory for the device's files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Base name of the device's files in --out (`<FILE>.toml`, `.png`, `.svg`) instead
        /// of its id, which derives from the serial and the fleet key.
        #[arg(long)]
        file: Option<String>,
        /// QR code lifetime in seconds (default 10 years).
        #[arg(long, default_value_t = DEFAULT_QR_TTL_SECS)]
        ttl: u64,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Do not print the QR code on the terminal.
        #[arg(long)]
        no_terminal: bool,
    },
    /// (factory) Make every device of a CSV file (header: serial,type[,model,name,components,file]).
    Batch {
        /// The CSV file.
        #[arg(long)]
        csv: PathBuf,
        /// Directory for the devices' files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// QR code lifetime in seconds (default 10 years).
        #[arg(long, default_value_t = DEFAULT_QR_TTL_SECS)]
        ttl: u64,
        /// Manufacturer (default: the factory's name).
        #[arg(long)]
        manufacturer: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// (operator) Activate devices from their QR codes (text, or PNG/JPEG photos).
    Activate {
        /// The QR text (`PB1:…`) or an image file (repeatable: one device each).
        #[arg(long, required = true)]
        qr: Vec<String>,
        /// The new owner.
        #[arg(long)]
        owner: String,
        /// The scanning client's IP address.
        #[arg(long)]
        ip: Option<String>,
        /// The scanning client's user agent.
        #[arg(long)]
        user_agent: Option<String>,
        /// A client fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
        /// The fleet root, to check the factory MAC locally (otherwise form and expiry only;
        /// the MAC is then checked by the broker/projector).
        #[arg(long)]
        fleet_key: Option<PathBuf>,
        /// Skip, instead of refusing, a QR code this operator already activated (makes a
        /// provisioning job safe to re-run).
        #[arg(long)]
        skip_activated: bool,
    },
    /// (operator, device) Complete setup: `device.setup_completed`. Run by the device itself,
    /// it proves possession of its key after activation.
    Setup {
        /// The device (operator only).
        #[arg(long)]
        device: Option<String>,
        /// The owner.
        #[arg(long)]
        owner: String,
        /// `owner` or `admin`.
        #[arg(long, default_value = "owner")]
        role: String,
    },
    /// (operator) Ask a manager device to pair with a sensor.
    Pair {
        /// The manager's device id.
        #[arg(long)]
        manager: String,
        /// The sensor's device id.
        #[arg(long)]
        sensor: String,
    },
    /// (operator, device) Unpair two devices.
    Unpair {
        /// The device (operator only).
        #[arg(long)]
        device: Option<String>,
        /// Its peer.
        #[arg(long)]
        peer: String,
    },
    /// (operator, device) Put a device in standalone mode (a device unpairs first).
    Standalone {
        /// The device (operator only).
        #[arg(long)]
        device: Option<String>,
    },
    /// (operator) Revoke a device: its later events are refused.
    Revoke {
        /// The device id.
        #[arg(long)]
        device: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// (device) Run: stay connected, publish presence, answer pairing and commands.
    Run {
        /// Re-send unconfirmed events after this many seconds.
        #[arg(long, default_value_t = 10)]
        resend_after: u64,
        /// At start, if this device has not completed setup yet, complete it for this owner
        /// (`device.setup_completed`, the proof of possession that completes a pending
        /// activation).
        #[arg(long)]
        owner: Option<String>,
    },
    /// (device) Exit 0 if this device's `run` answers on its control socket, 1 otherwise
    /// (a container health check).
    Health,
    /// (device) Record an action (through the running agent if there is one).
    Action {
        /// What was done: voice_recording, qr_scan, login, file_upload, …
        action: String,
        /// Metadata `key=value` (repeatable; true/false and integers are typed; `s:` forces text).
        #[arg(long = "meta")]
        meta: Vec<String>,
        /// Where from.
        #[arg(long)]
        ip: Option<String>,
        /// Which client.
        #[arg(long)]
        user_agent: Option<String>,
    },
    /// (device, a manager) Send a command to a managed device.
    Command {
        /// The target device id.
        #[arg(long)]
        target: String,
        /// start_scan, status or shutdown.
        command: String,
        /// Parameters `key=value` (repeatable).
        #[arg(long = "param")]
        params: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 60)]
        ttl: u64,
    },
    /// (operator) List the devices online, from the retained presence cards their running
    /// agents publish (mirrored on the operator plane by the broker).
    Discover {
        /// Seconds to listen for cards after subscribing (with --expect: the longest wait).
        #[arg(long, default_value_t = 2)]
        timeout: u64,
        /// Wait until this device is online (repeatable); fail if it is not within --timeout.
        #[arg(long = "expect", value_name = "DEVICE_ID")]
        expect: Vec<String>,
        /// Also list the devices whose last card says offline.
        #[arg(long)]
        all: bool,
        /// Print a JSON array of the cards.
        #[arg(long)]
        json: bool,
    },
    /// (any) Deliver every pending event and wait for the confirmations.
    Send,
    /// (any) List the events waiting for confirmation and those the broker refused.
    Outbox,
    /// (any) Print a fresh MQTT password for this identity (username = the kid), e.g. for
    /// mosquitto_sub; with --bearer, the HTTP `Authorization` value instead.
    Token {
        /// Lifetime in seconds (the broker refuses more than 24 h).
        #[arg(long, default_value_t = 600)]
        ttl: u64,
        /// Print `Bearer <kid>:<token>` for the HTTP API.
        #[arg(long)]
        bearer: bool,
    },
}

#[derive(clap::Args, Debug)]
struct FleetArgs {
    /// The fleet root secret file (`fleet.key`): needed to derive the device key and the
    /// serial hash (the factory station is trusted with the root in v1).
    #[arg(long)]
    fleet_key: PathBuf,
    /// The broker address written into the device's identity file.
    #[arg(long, default_value = "127.0.0.1:1883")]
    device_broker: String,
    /// Skip, instead of refusing, a device whose identity file is already there with the
    /// same identity (makes a factory job safe to re-run).
    #[arg(long)]
    skip_existing: bool,
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Make { .. } => "make",
            Cmd::Batch { .. } => "batch",
            Cmd::Activate { .. } => "activate",
            Cmd::Setup { .. } => "setup",
            Cmd::Pair { .. } => "pair",
            Cmd::Unpair { .. } => "unpair",
            Cmd::Standalone { .. } => "standalone",
            Cmd::Revoke { .. } => "revoke",
            Cmd::Run { .. } => "run",
            Cmd::Discover { .. } => "discover",
            Cmd::Health => "health",
            Cmd::Action { .. } => "action",
            Cmd::Command { .. } => "command",
            Cmd::Send => "send",
            Cmd::Outbox => "outbox",
            Cmd::Token { .. } => "token",
        }
    }

    fn kinds(&self) -> &'static [PrincipalKind] {
        use PrincipalKind::*;
        match self {
            Cmd::Make { .. } | Cmd::Batch { .. } => &[Factory],
            Cmd::Activate { .. } | Cmd::Pair { .. } | Cmd::Revoke { .. } | Cmd::Discover { .. } => {
                &[Operator]
            }
            Cmd::Setup { .. } | Cmd::Unpair { .. } | Cmd::Standalone { .. } => &[Operator, Device],
            Cmd::Run { .. } | Cmd::Action { .. } | Cmd::Command { .. } | Cmd::Health => &[Device],
            Cmd::Send | Cmd::Outbox | Cmd::Token { .. } => &[Factory, Operator, Device],
        }
    }
}

fn commands_for(kind: PrincipalKind) -> String {
    let all = [
        "make",
        "batch",
        "activate",
        "setup",
        "pair",
        "unpair",
        "standalone",
        "revoke",
        "discover",
        "run",
        "health",
        "action",
        "command",
        "send",
        "outbox",
        "token",
    ];
    let allowed = |c: &str| match c {
        "make" | "batch" => kind == PrincipalKind::Factory,
        "activate" | "pair" | "revoke" | "discover" => kind == PrincipalKind::Operator,
        "setup" | "unpair" | "standalone" => {
            matches!(kind, PrincipalKind::Operator | PrincipalKind::Device)
        }
        "run" | "health" | "action" | "command" => kind == PrincipalKind::Device,
        _ => kind != PrincipalKind::Broker,
    };
    all.into_iter()
        .filter(|c| allowed(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(match cli.command {
            Cmd::Run { .. } => "info",
            _ => "warn",
        })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

struct Ctx {
    identity: Identity,
    data: PathBuf,
    wait: u64,
}

fn load_identity(path: &Path) -> Result<Identity> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading identity file {}", path.display()))?,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "identity file is readable by others: chmod 600 it");
            }
        }
    }
    Identity::from_toml(&text).with_context(|| format!("identity file {}", path.display()))
}

fn real_main(cli: Cli) -> Result<()> {
    let path = cli
        .identity
        .clone()
        .ok_or_else(|| anyhow!("--identity FILE is required (or set PAIRBUS_IDENTITY)"))?;
    let mut identity = load_identity(&path)?;
    if let Some(broker) = &cli.broker {
        session::parse_broker(broker).map_err(|e| anyhow!("--broker: {e}"))?;
        identity.broker.clone_from(broker);
    }
    let kind = identity.kid.kind();
    if !cli.command.kinds().contains(&kind) {
        let who: Vec<&str> = cli.command.kinds().iter().map(|k| k.as_str()).collect();
        let a = |w: &str| {
            if w.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            }
        };
        let who = who.join(" or ");
        bail!(
            "`{}` is {} {who} command, but this identity is {} ({} {kind}); {} {kind} may run: {}",
            cli.command.name(),
            a(&who),
            identity.kid,
            a(kind.as_str()),
            a(kind.as_str()),
            commands_for(kind)
        );
    }
    let data = cli.data.clone().unwrap_or_else(|| {
        let mut p = path.clone().into_os_string();
        p.push(".outbox");
        PathBuf::from(p)
    });
    let ctx = Ctx {
        identity,
        data,
        wait: cli.wait,
    };
    match cli.command {
        Cmd::Make {
            serial,
            device_type,
            model,
            name,
            manufacturer,
            components,
            qr_png,
            qr_svg,
            out,
            file,
            ttl,
            fleet,
            no_terminal,
        } => {
            let root = factory::read_fleet_key(&fleet.fleet_key)?;
            factory::check_factory_key(&root, &ctx.identity.kid, &ctx.identity.key)?;
            let comps = components
                .iter()
                .map(|c| draft::parse_component(c).map_err(|e| anyhow!(e)))
                .collect::<Result<Vec<_>>>()?;
            let outbox = open_outbox(&ctx)?;
            let made = make_one(
                &ctx,
                &outbox,
                &root,
                &fleet,
                &serial,
                device_type,
                model,
                name,
                manufacturer,
                comps,
                ttl,
                Placement {
                    out: &out,
                    file,
                    qr_png,
                    qr_svg,
                },
            )?;
            if let Some(made) = made {
                if !no_terminal {
                    say!("{}", pairbus_agent::qrimage::to_terminal(&made.qr)?);
                }
                say!("{}", made.qr);
            }
            deliver(&ctx, outbox)
        }
        Cmd::Batch {
            csv,
            out,
            ttl,
            manufacturer,
            fleet,
        } => {
            let root = factory::read_fleet_key(&fleet.fleet_key)?;
            factory::check_factory_key(&root, &ctx.identity.kid, &ctx.identity.key)?;
            let text = std::fs::read_to_string(&csv)
                .with_context(|| format!("reading {}", csv.display()))?;
            let rows = factory::parse_batch_csv(&text)?;
            let outbox = open_outbox(&ctx)?;
            let bar = indicatif::ProgressBar::new(rows.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} devices {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut failed = Vec::new();
            for row in rows {
                let comps: Result<Vec<_>, _> = row
                    .components
                    .iter()
                    .map(|c| draft::parse_component(c))
                    .collect();
                let res = comps.map_err(|e| anyhow!(e)).and_then(|comps| {
                    make_one(
                        &ctx,
                        &outbox,
                        &root,
                        &fleet,
                        &row.serial,
                        row.device_type.clone(),
                        row.model.clone(),
                        row.name.clone(),
                        manufacturer.clone(),
                        comps,
                        ttl,
                        Placement {
                            out: &out,
                            file: row.file.clone(),
                            qr_png: None,
                            qr_svg: None,
                        },
                    )
                });
                match res {
                    Ok(Some(m)) => bar.set_message(m.device_id.to_string()),
                    Ok(None) => {}
                    Err(e) => failed.push(format!("line {}: {e:#}", row.line)),
                }
                bar.inc(1);
            }
            bar.finish();
            for f in &failed {
                eprintln!("{f}");
            }
            deliver(&ctx, outbox)?;
            if !failed.is_empty() {
                bail!("{} row(s) failed", failed.len());
            }
            Ok(())
        }
        Cmd::Activate {
            qr,
            owner,
            ip,
            user_agent,
            fingerprint,
            fleet_key,
            skip_activated,
        } => {
            let root = fleet_key
                .as_deref()
                .map(factory::read_fleet_key)
                .transpose()?;
            // Every QR code is checked before any activation is queued.
            let codes = qr
                .iter()
                .map(|q| read_qr(q, root.as_ref()))
                .collect::<Result<Vec<_>>>()?;
            let outbox = open_outbox(&ctx)?;
            let client = ClientInfo {
                ip,
                user_agent,
                fingerprint,
            };
            let mut queued = false;
            for (text, check) in codes {
                queued |=
                    activate_one(&ctx, &outbox, text, check, &owner, &client, skip_activated)?;
            }
            if queued {
                say!(
                    "activation is pending until the device proves its key (e.g. its own `setup`)"
                );
            }
            deliver(&ctx, outbox)
        }
        Cmd::Setup {
            device,
            owner,
            role,
        } => {
            let role =
                Role::parse(&role).ok_or_else(|| anyhow!("--role must be owner or admin"))?;
            match kind {
                PrincipalKind::Device => {
                    if device.is_some() {
                        bail!("--device is for operators: a device sets itself up");
                    }
                    let me = my_device(&ctx)?;
                    device_local(
                        &ctx,
                        LocalCommand::Setup(draft::setup_completed(me, owner, role)),
                    )
                }
                _ => {
                    let d = device_arg(device.as_deref(), "setup")?;
                    operator_event(&ctx, draft::setup_completed(d, owner, role))
                }
            }
        }
        Cmd::Pair { manager, sensor } => {
            let (m, s) = (parse_device(&manager)?, parse_device(&sensor)?);
            if m == s {
                bail!("a device cannot pair with itself");
            }
            operator_event(&ctx, draft::pairing_requested(m, s))
        }
        Cmd::Unpair { device, peer } => {
            let peer = parse_device(&peer)?;
            match kind {
                PrincipalKind::Device => {
                    if device.is_some() {
                        bail!("--device is for operators: a device unpairs itself");
                    }
                    device_local(&ctx, LocalCommand::Unpair(peer))
                }
                _ => operator_event(
                    &ctx,
                    draft::unpaired(device_arg(device.as_deref(), "unpair")?, peer),
                ),
            }
        }
        Cmd::Standalone { device } => match kind {
            PrincipalKind::Device => {
                if device.is_some() {
                    bail!("--device is for operators");
                }
                device_local(&ctx, LocalCommand::Standalone)
            }
            _ => operator_event(
                &ctx,
                draft::standalone(device_arg(device.as_deref(), "standalone")?),
            ),
        },
        Cmd::Revoke { device, reason } => {
            operator_event(&ctx, draft::revoked(parse_device(&device)?, reason))
        }
        Cmd::Run {
            resend_after,
            owner,
        } => run_device(&ctx, resend_after, owner),
        Cmd::Health => health(&ctx),
        Cmd::Discover {
            timeout,
            expect,
            all,
            json,
        } => {
            for d in &expect {
                parse_device(d)?;
            }
            let seen = runtime()?.block_on(discover::discover(
                &ctx.identity,
                Duration::from_secs(timeout),
                &expect,
            ))?;
            let cards = seen.cards(all);
            if json {
                say!("{}", serde_json::to_string_pretty(&cards)?);
            } else if cards.is_empty() {
                say!("no device online");
            } else {
                for c in &cards {
                    say!("{}", c.line());
                }
            }
            let missing = seen.missing(&expect);
            if !missing.is_empty() {
                bail!(
                    "not online within {timeout} s: {} (is its `run` started, and pointed at this broker's device plane?)",
                    missing.join(", ")
                );
            }
            Ok(())
        }
        Cmd::Action {
            action,
            meta,
            ip,
            user_agent,
        } => {
            let me = my_device(&ctx)?;
            device_local(
                &ctx,
                LocalCommand::Action(draft::action(
                    me,
                    action,
                    parse_metas(&meta)?,
                    ip,
                    user_agent,
                )),
            )
        }
        Cmd::Command {
            target,
            command,
            params,
            ttl,
        } => {
            let me = my_device(&ctx)?;
            let c = Command::parse(&command)
                .ok_or_else(|| anyhow!("command must be start_scan, status or shutdown"))?;
            let d = draft::command_issued(
                me,
                parse_device(&target)?,
                c,
                parse_metas(&params)?,
                sys::now_ms(),
                ttl.saturating_mul(1000),
            );
            device_local(&ctx, LocalCommand::Command(d))
        }
        Cmd::Send => {
            let outbox = open_outbox(&ctx)?;
            say!("{} event(s) pending", outbox.pending_len());
            deliver(
                &Ctx {
                    wait: ctx.wait.max(1),
                    ..ctx
                },
                outbox,
            )
        }
        Cmd::Token { ttl, bearer } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                .as_secs();
            let id = &ctx.identity;
            let token = id.key.mint_token(&id.kid, now + ttl);
            if bearer {
                say!("Bearer {}:{token}", id.kid);
            } else {
                say!("{token}");
            }
            Ok(())
        }
        Cmd::Outbox => {
            let outbox = open_outbox(&ctx)?;
            say!("next seq: {}", outbox.next_seq()?);
            for p in outbox.pending()? {
                say!(
                    "pending  seq={} id={} type={}",
                    p.seq,
                    p.id,
                    Outbox::describe(&p)
                );
            }
            for r in outbox.refused()? {
                say!(
                    "refused  seq={} id={} reason={} detail={}",
                    r.seq,
                    r.id,
                    r.reason,
                    r.detail
                );
            }
            Ok(())
        }
    }
}

/// Reads a QR code (text, or an image file) and checks it (form, expiry, and the factory MAC
/// when the fleet root is given).
fn read_qr(
    qr: &str,
    root: Option<&pairbus_schemas::RootSecret>,
) -> Result<(String, operator::QrCheck)> {
    let text = if qr.starts_with(pairbus_schemas::qr::QR_PREFIX) {
        qr.to_owned()
    } else if Path::new(qr).is_file() {
        pairbus_agent::qrimage::read_image(Path::new(qr))?
            .trim()
            .to_owned()
    } else {
        bail!("--qr: `{qr}` is neither QR text (PB1:…) nor an image file");
    };
    let check = operator::check_qr(&text, sys::now_secs(), root).map_err(AgentError::from)?;
    Ok((text, check))
}

/// Queues the activation of a checked QR code (`true`); with `skip`, a QR code this operator
/// already activated is skipped (`false`) instead of refused.
fn activate_one(
    ctx: &Ctx,
    outbox: &Outbox,
    text: String,
    check: operator::QrCheck,
    owner: &str,
    client: &ClientInfo,
    skip: bool,
) -> Result<bool> {
    let device = check.claims.device_id.clone();
    let key = operator::activation_key(&device);
    let previous = outbox.state_get::<ActivationRecord>(&key)?;
    if skip && previous.is_some() {
        say!("device {device} already activated by this operator: skipped");
        return Ok(false);
    }
    operator::check_not_reused(&device, previous)?;
    let token = operator::new_activation_token(sys::random());
    let record = serde_json::to_vec(&ActivationRecord {
        at_ms: sys::now_ms(),
        owner: owner.to_owned(),
    })?;
    let evs = outbox.enqueue(
        &ctx.identity,
        vec![draft::activated(
            device.clone(),
            text,
            owner.to_owned(),
            &token,
            client.clone(),
        )],
        &[(key.as_str(), Some(record))],
        sys::now_ms(),
        sys::random,
    )?;
    say!(
        "QR code ok: device {device} ({} {}), made by {}, expires at {} (Unix s); factory MAC {}",
        check.claims.device_type,
        check.claims.model,
        check.factory,
        check.claims.exp,
        if check.mac_checked {
            "checked"
        } else {
            "not checked here (no --fleet-key): the broker/projector checks it"
        }
    );
    say!("activation token (shown once, keep it): {}", token.as_str());
    print_queued(&evs);
    Ok(true)
}

/// Where `make_one` writes a device's files.
struct Placement<'a> {
    out: &'a Path,
    /// Base name instead of the device id.
    file: Option<String>,
    qr_png: Option<PathBuf>,
    qr_svg: Option<PathBuf>,
}

/// Makes one device; `None` when `--skip-existing` found it already made.
#[allow(clippy::too_many_arguments)]
fn make_one(
    ctx: &Ctx,
    outbox: &Outbox,
    root: &pairbus_schemas::RootSecret,
    fleet: &FleetArgs,
    serial: &str,
    device_type: String,
    model: Option<String>,
    name: Option<String>,
    manufacturer: Option<String>,
    components: Vec<pairbus_schemas::event::Component>,
    ttl: u64,
    place: Placement,
) -> Result<Option<factory::MadeDevice>> {
    factory::check_serial(serial)?;
    let device_id = pairbus_schemas::keys::device_id_from_serial_hash(&root.serial_hash(serial));
    let spec = ManufactureSpec {
        model: model.unwrap_or_else(|| device_type.clone()),
        name: name.unwrap_or_else(|| format!("{device_type}-{}", &device_id.as_str()[..6])),
        manufacturer: manufacturer.unwrap_or_else(|| ctx.identity.kid.name().to_owned()),
        device_type,
        components,
    };
    let made = factory::make_device(
        root,
        &ctx.identity.kid,
        &ctx.identity.key,
        serial,
        spec,
        &fleet.device_broker,
        sys::now_secs(),
        ttl,
    )?;
    let out = place.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut paths = match &place.file {
        Some(stem) => {
            factory::check_file_stem(stem)?;
            OutputPaths::named(out, stem)
        }
        None => OutputPaths::in_dir(out, &made.device_id),
    };
    if place.qr_png.is_some() {
        paths.png = place.qr_png;
    }
    if place.qr_svg.is_some() {
        paths.svg = place.qr_svg;
    }
    if fleet.skip_existing {
        let existing = match std::fs::read_to_string(&paths.identity) {
            Ok(text) => Some(
                Identity::from_toml(&zeroize::Zeroizing::new(text))
                    .with_context(|| format!("identity file {}", paths.identity.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("reading {}", paths.identity.display()))
            }
        };
        if factory::already_made(existing.as_ref(), &made.identity)? {
            say!(
                "device {} already made -> {}: skipped",
                made.device_id,
                paths.identity.display()
            );
            return Ok(None);
        }
    }
    factory::write_outputs(&made, &paths).with_context(|| format!("device {}", made.device_id))?;
    let evs = session::enqueue(outbox, &ctx.identity, vec![made.draft.clone()])?;
    say!(
        "made device {} -> {}",
        made.device_id,
        paths.identity.display()
    );
    print_queued(&evs);
    Ok(Some(made))
}

fn parse_device(s: &str) -> Result<DeviceId> {
    DeviceId::parse(s).map_err(|e| anyhow!(e))
}

fn device_arg(d: Option<&str>, cmd: &str) -> Result<DeviceId> {
    parse_device(d.ok_or_else(|| anyhow!("`{cmd}` by an operator needs --device ID"))?)
}

fn parse_metas(kvs: &[String]) -> Result<Metadata> {
    let mut m = Metadata::new();
    for kv in kvs {
        let (k, v) = draft::parse_meta(kv).map_err(|e| anyhow!(e))?;
        m.insert(k, v);
    }
    Ok(m)
}

fn my_device(ctx: &Ctx) -> Result<DeviceId> {
    ctx.identity
        .kid
        .device_id()
        .ok_or_else(|| anyhow!("not a device identity"))
}

fn open_outbox(ctx: &Ctx) -> Result<Outbox> {
    Outbox::open(&ctx.data).map_err(|e| match e {
        AgentError::OutboxLocked(p) => anyhow!(
            "the outbox {} is held by another pairbus-agent process for {} (a `run` still starting or stopping?); try again",
            p.display(),
            ctx.identity.kid
        ),
        other => anyhow!(other),
    })
}

fn print_queued(evs: &[Event]) {
    for e in evs {
        say!("queued {} id={} seq={}", e.event_type(), e.id, e.seq);
    }
}

fn operator_event(ctx: &Ctx, d: draft::Draft) -> Result<()> {
    let outbox = open_outbox(ctx)?;
    let evs = session::enqueue(&outbox, &ctx.identity, vec![d])?;
    print_queued(&evs);
    deliver(ctx, outbox)
}

/// A device's own command: through the running agent's control socket if one listens,
/// otherwise straight into the outbox.
fn device_local(ctx: &Ctx, cmd: LocalCommand) -> Result<()> {
    #[cfg(unix)]
    if let Some(reply) =
        control::request(&control::socket_path(&ctx.data), &cmd, &ctx.identity.kid)?
    {
        if let Some(e) = reply.error {
            bail!("{e}");
        }
        for q in reply.ok {
            say!(
                "queued {} id={} seq={} (handed to the running agent)",
                q.event_type,
                q.id,
                q.seq
            );
        }
        return Ok(());
    }
    let outbox = open_outbox(ctx)?;
    let evs = session::enqueue_local(&outbox, &ctx.identity, cmd)?;
    print_queued(&evs);
    deliver(ctx, outbox)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Sends what is pending and waits up to `--wait` seconds for the confirmations.
fn deliver(ctx: &Ctx, outbox: Outbox) -> Result<()> {
    if ctx.wait == 0 || outbox.pending_len() == 0 {
        if outbox.pending_len() > 0 {
            say!(
                "{} event(s) queued; run `send` (or `run`) to deliver",
                outbox.pending_len()
            );
        }
        return Ok(());
    }
    let opts = SessionOptions {
        until_empty: true,
        deadline: Some(Duration::from_secs(ctx.wait)),
        resend_after: Duration::from_secs(3),
        ..Default::default()
    };
    let s = Session::new(
        ctx.identity.clone(),
        outbox,
        opts,
        Box::new(SimulatedSensor::default()),
    );
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let report = runtime()?.block_on(s.run(rx, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    match report.reason {
        StopReason::Delivered if report.refused == 0 => say!("delivered: {} event(s) committed", report.confirmed),
        StopReason::Delivered => {
            bail!("{} event(s) refused by the broker (see `outbox`); {} committed", report.refused, report.confirmed)
        }
        _ => say!(
            "{} event(s) committed, {} still queued (broker {} unreachable or slow): they are kept and re-sent by `send` or `run`",
            report.confirmed, report.pending, ctx.identity.broker
        ),
    }
    Ok(())
}

fn run_device(ctx: &Ctx, resend_after: u64, owner: Option<String>) -> Result<()> {
    let outbox = open_outbox(ctx)?;
    let state = session::load_state(&outbox)?;
    if state.revoked {
        bail!(
            "{} has been revoked: its events are refused; it will not run",
            ctx.identity.kid
        );
    }
    if let Some(owner) = owner.filter(|_| !state.configured) {
        let setup = draft::setup_completed(my_device(ctx)?, owner, Role::Owner);
        let evs = session::enqueue_local(&outbox, &ctx.identity, LocalCommand::Setup(setup))?;
        print_queued(&evs);
    }
    let opts = SessionOptions {
        resend_after: Duration::from_secs(resend_after.max(1)),
        ..Default::default()
    };
    let data = ctx.data.clone();
    let s = Session::new(
        ctx.identity.clone(),
        outbox,
        opts,
        Box::new(SimulatedSensor::default()),
    );
    let kid: Kid = ctx.identity.kid.clone();
    let report = runtime()?.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        #[cfg(unix)]
        {
            let path = control::socket_path(&data);
            tokio::spawn(async move {
                if let Err(e) = control::serve(path, tx).await {
                    tracing::error!(error = %e, "control socket stopped");
                }
            });
        }
        tracing::info!(%kid, "device agent running");
        s.run(rx, shutdown_signal()).await
    });
    #[cfg(unix)]
    let _ = std::fs::remove_file(control::socket_path(&ctx.data));
    let report = report?;
    say!(
        "stopped ({:?}); {} event(s) still queued",
        report.reason,
        report.pending
    );
    Ok(())
}

/// `health`: asks the running agent over its control socket whether it is there.
fn health(ctx: &Ctx) -> Result<()> {
    #[cfg(unix)]
    {
        let path = control::socket_path(&ctx.data);
        if control::ping(&path)? {
            say!("{} is running", ctx.identity.kid);
            return Ok(());
        }
        bail!(
            "no running agent answers on {} for {}",
            path.display(),
            ctx.identity.kid
        )
    }
    #[cfg(not(unix))]
    bail!("`health` needs the control socket (Unix only)")
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
