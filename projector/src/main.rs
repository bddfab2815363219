//! `pairbus-projector`: investigations over the pairbus log.
//!
//! `serve` runs the projector on its own (see `pairbus_projector::serve`). The query
//! subcommands have two modes, the same subcommands and the same output (text, or `--json`):
//!
//! - offline (`--export FILE`): the file is read with its hash chain verified, folded, and
//!   asked ([`pairbus_projector::query::run`]);
//! - online (`--api URL`, `--token BEARER`): the same queries go to the HTTP API of the
//!   projector embedded in `pairbus-broker serve`, which answers them with `query::run` over its
//!   live projections; the answers are decoded into the same view types and printed by the
//!   same code.

use clap::{Parser, Subcommand, ValueEnum};
use pairbus_projector::export::{read_records, write_records, Format};
use pairbus_projector::fold::{Config, Projector, DEFAULT_CLAIM_WINDOW_MS};
use pairbus_projector::graph::{to_dot, to_text};
use pairbus_projector::model::{DeviceCard, DeviceState};
use pairbus_projector::query::{self, Query, Response};
use pairbus_projector::{NoKeys, Projections};
use pairbus_schemas::{Record, RootSecret};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "pairbus-projector",
    version,
    about = "Device state, pairing graph and audit trails folded from the pairbus log"
)]
struct Cli {
    /// Read this log export instead of a running projector (offline mode; wins over `--api`).
    #[arg(long, global = true, value_name = "FILE")]
    export: Option<PathBuf>,
    /// Ask the HTTP API of a running broker (`pairbus-broker serve`) or standalone projector
    /// (`pairbus-projector serve`), e.g.
    /// `http://127.0.0.1:8080` (plain http).
    #[arg(long, global = true, value_name = "URL", env = "PAIRBUS_API")]
    api: Option<String>,
    /// The operator bearer credential for `--api`: `<kid>:<token>`, with or without the
    /// `Bearer ` prefix (`pairbus-agent --identity FILE token --bearer` prints it).
    #[arg(
        long,
        global = true,
        value_name = "BEARER",
        env = "PAIRBUS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Export format (default: detected from the content).
    #[arg(long = "export-format", global = true, value_name = "cbor-seq|jsonl")]
    export_format: Option<String>,
    /// Fleet root secret file (`fleet.key`, 64 hex digits), to verify activation QR codes.
    /// Without it every activation is refused as `unknown_factory`.
    #[arg(long, global = true, value_name = "FILE", env = "PAIRBUS_FLEET_KEY")]
    fleet_key: Option<PathBuf>,
    /// Claim window in seconds (must match the live projector's to give the same answers).
    #[arg(long, global = true, default_value_t = DEFAULT_CLAIM_WINDOW_MS / 1000)]
    claim_window: u64,
    /// Print JSON (the documented view shapes) instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Also re-check every event's MAC (and the signer rules) with keys derived from
    /// `--fleet-key`, as the broker did at ingest: proves the export was not rewritten by
    /// someone without the fleet secret (the hash chain alone cannot).
    #[arg(long, global = true)]
    verify_macs: bool,
    /// Print the time spent reading/verifying and folding to stderr.
    #[arg(long, global = true, hide = true)]
    timings: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum GraphFormat {
    Text,
    Dot,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every device card, optionally in one state.
    Devices {
        /// unconfigured, activation_pending, configured, paired, standalone or revoked.
        #[arg(long)]
        state: Option<String>,
    },
    /// One device: state, owner, type, model, components, manager, sensors, activation, last seen.
    Device {
        /// Device id (16 hex digits).
        id: String,
    },
    /// One device's complete, ordered trail (refused events included, with why).
    History {
        /// Device id.
        id: String,
        /// Only records received at or after T (RFC 3339 or Unix ms).
        #[arg(long)]
        since: Option<String>,
        /// Only records received at or before T (RFC 3339 or Unix ms).
        #[arg(long)]
        until: Option<String>,
        /// Only this event type (repeatable), e.g. `device.action`.
        #[arg(long = "type")]
        types: Vec<String>,
    },
    /// The pairing graph.
    Graph {
        /// text, dot or json.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Every alert (refused rules, seq gaps, lapsed activations, revoked devices...).
    Alerts,
    /// Actions per type per day, devices per state, alerts per code.
    Stats,
    /// Run the projector on its own: follow `pairbus/v1/log` on the operator plane (catching
    /// up through the replay service), keep the projections in its own sled folder and serve
    /// the query API (`/v1/…`, `/healthz`, `/metrics`). Needs `--fleet-key`.
    Serve {
        /// Operator identity TOML (kid, key, broker) it connects with.
        #[arg(long, env = "PAIRBUS_IDENTITY", value_name = "FILE")]
        identity: PathBuf,
        /// Operator plane `host:port` [default: the identity's `broker`].
        #[arg(long, env = "PAIRBUS_BROKER", value_name = "HOST:PORT")]
        broker: Option<String>,
        /// Its own sled folder (projections, record copies, refusals).
        #[arg(
            long,
            env = "PAIRBUS_PROJECTOR_DATA",
            value_name = "DIR",
            default_value = "./pairbus-projector-data"
        )]
        data: PathBuf,
        /// HTTP API listener.
        #[arg(
            long,
            env = "PAIRBUS_HTTP_LISTEN",
            value_name = "ADDR",
            default_value = "127.0.0.1:8081"
        )]
        http_listen: std::net::SocketAddr,
    },
    /// State exactly as it was at a log position or a broker time.
    Replay {
        /// A log position (SEQ) or a time (RFC 3339).
        #[arg(long = "as-of")]
        as_of: String,
        #[command(subcommand)]
        what: ReplayWhat,
    },
    /// Writes a generated fleet log (signed with the test-vector root secret) for demos and
    /// benchmarks.
    #[command(hide = true)]
    GenExport {
        /// Devices.
        #[arg(long, default_value_t = 1000)]
        devices: u32,
        /// Approximate number of records.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Output format.
        #[arg(long, default_value = "cbor-seq")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
enum ReplayWhat {
    /// One device card.
    Device {
        /// Device id.
        id: String,
    },
    /// The pairing graph.
    Graph,
    /// Every device card.
    Devices,
}

type Fail = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pairbus-projector: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Unix ms from RFC 3339 or digits.
fn parse_time(s: &str) -> Result<u64, Fail> {
    Ok(query::parse_time(s)?)
}

fn time(ms: Option<u64>) -> String {
    pairbus_projector::text::time(ms)
}

fn projector(cli: &Cli) -> Result<Projector, Fail> {
    let config = Config {
        claim_window_ms: cli.claim_window.saturating_mul(1000),
        ..Config::default()
    };
    Ok(match &cli.fleet_key {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let root =
                RootSecret::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Projector::new(config, root)
        }
        None => {
            eprintln!("warning: no --fleet-key: activation QR codes cannot be verified and are refused as unknown_factory");
            Projector::new(config, NoKeys)
        }
    })
}

/// `serve`: reads the fleet key and the identity, then runs until SIGINT/SIGTERM.
fn serve(
    cli: &Cli,
    identity: &std::path::Path,
    broker: Option<&str>,
    data: &std::path::Path,
    http_listen: std::net::SocketAddr,
) -> Result<(), Fail> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PAIRBUS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = cli
        .fleet_key
        .as_ref()
        .ok_or("serve needs --fleet-key FILE (or PAIRBUS_FLEET_KEY): it checks activation QR codes and the API's operator tokens")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let root = RootSecret::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let text =
        std::fs::read_to_string(identity).map_err(|e| format!("{}: {e}", identity.display()))?;
    let identity = pairbus_schemas::identity::Identity::from_toml(&text)
        .map_err(|e| format!("{}: {e}", identity.display()))?;
    if identity.kid.kind() != pairbus_schemas::PrincipalKind::Operator {
        return Err(format!(
            "{} is not an operator identity: the log is on the operator plane",
            identity.kid
        )
        .into());
    }
    let config = pairbus_projector::serve::ServeConfig {
        broker: broker.map_or_else(|| identity.broker.clone(), str::to_owned),
        identity,
        data: data.to_owned(),
        http_listen,
        root,
        fold: Config {
            claim_window_ms: cli.claim_window.saturating_mul(1000),
            ..Config::default()
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(pairbus_projector::serve::serve_until_signal(config))?;
    Ok(())
}

fn load(cli: &Cli) -> Result<Vec<Record>, Fail> {
    let Some(path) = &cli.export else {
        return Err("no --export FILE nor --api URL (or PAIRBUS_API)".into());
    };
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let format = match &cli.export_format {
        Some(f) => Format::parse(f).ok_or(format!("unknown export format `{f}`"))?,
        None => Format::detect(&data),
    };
    let tty = std::io::stderr().is_terminal();
    let total = data.len().max(1);
    let records = read_records(&data, format, |done| {
        if tty {
            eprint!(
                "\rreading and verifying {}: {:>3}%",
                path.display(),
                done * 100 / total
            );
        }
    })
    .map_err(|e| format!("{}: {e}", path.display()))?;
    if tty {
        eprintln!();
    }
    Ok(records)
}

/// Opens every event as the broker's ingest does; the first failure stops with the record named.
fn verify_macs(cli: &Cli, records: &[Record]) -> Result<(), Fail> {
    let path = cli
        .fleet_key
        .as_ref()
        .ok_or("--verify-macs needs --fleet-key (or PAIRBUS_FLEET_KEY)")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let root = RootSecret::from_hex(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys: std::collections::HashMap<pairbus_schemas::Kid, pairbus_schemas::Key> =
        std::collections::HashMap::new();
    let t = std::time::Instant::now();
    for r in records {
        let unverified =
            pairbus_schemas::Unverified::parse(&r.event, pairbus_schemas::MAX_EVENT_SIZE)
                .map_err(|e| format!("record {}: {e}", r.seq))?;
        let kid = unverified.kid().clone();
        let key = keys
            .entry(kid.clone())
            .or_insert_with(|| root.derive(&kid))
            .clone();
        pairbus_schemas::open_event(&r.event, pairbus_schemas::MAX_EVENT_SIZE, |_| Some(key))
            .map_err(|e| format!("record {}: {e}", r.seq))?;
    }
    if cli.timings || std::io::stderr().is_terminal() {
        eprintln!(
            "verified the MACs of {} records in {:.3} s",
            records.len(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn fold(pr: &Projector, records: &[Record]) -> Projections {
    let tty = std::io::stderr().is_terminal() && records.len() > 200_000;
    let mut p = Projections::new();
    let mut fx = Vec::new();
    for (i, r) in records.iter().enumerate() {
        fx.clear();
        pr.apply_into(&mut p, r, &mut fx);
        if tty && i % 100_000 == 0 {
            eprint!("\rfolding: {i}/{} records", records.len());
        }
    }
    if tty {
        eprintln!("\rfolding: {n}/{n} records", n = records.len());
    }
    p
}

fn print_json(o: &mut String, v: &impl serde::Serialize) -> Result<(), Fail> {
    o.push_str(&serde_json::to_string_pretty(v)?);
    o.push('\n');
    Ok(())
}

fn run(cli: Cli) -> Result<(), Fail> {
    if let Cmd::Serve {
        identity,
        broker,
        data,
        http_listen,
    } = &cli.command
    {
        return serve(&cli, identity, broker.as_deref(), data, *http_listen);
    }
    if let Cmd::GenExport {
        devices,
        events,
        out,
        format,
    } = &cli.command
    {
        let f = Format::parse(format).ok_or(format!("unknown format `{format}`"))?;
        let log = pairbus_projector::testkit::fleet(*devices, *events);
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        write_records(&mut w, &log.records, f)?;
        w.flush()?;
        eprintln!("wrote {} records to {}", log.records.len(), out.display());
        return Ok(());
    }
    if cli.export.is_none() {
        if let Some(url) = &cli.api {
            return remote(&cli, url);
        }
    }
    let t = std::time::Instant::now();
    let records = load(&cli)?;
    if cli.timings {
        eprintln!(
            "read and verified {} records in {:.3} s",
            records.len(),
            t.elapsed().as_secs_f64()
        );
    }
    if cli.verify_macs {
        verify_macs(&cli, &records)?;
    }
    let pr = projector(&cli)?;
    let q = match &cli.command {
        Cmd::Devices { state } => Query::Devices {
            state: match state {
                Some(s) => Some(DeviceState::parse(s).ok_or(format!("unknown state `{s}`"))?),
                None => None,
            },
        },
        Cmd::Device { id } => Query::Device { id: id.clone() },
        Cmd::History {
            id,
            since,
            until,
            types,
        } => Query::History {
            id: id.clone(),
            since: since.as_deref().map(parse_time).transpose()?,
            until: until.as_deref().map(parse_time).transpose()?,
            types: types.clone(),
        },
        Cmd::Graph { .. } => Query::Graph,
        Cmd::Alerts => Query::Alerts,
        Cmd::Stats => Query::Stats,
        Cmd::Replay { as_of, what } => {
            let p = match as_of.parse::<u64>() {
                Ok(seq) => query::as_of_seq(&pr, &records, seq),
                Err(_) => query::as_of_time(&pr, &records, parse_time(as_of)?),
            };
            let q = match what {
                ReplayWhat::Device { id } => Query::Device { id: id.clone() },
                ReplayWhat::Graph => Query::Graph,
                ReplayWhat::Devices => Query::Devices { state: None },
            };
            if !cli.json {
                // The last record folded (none as of before the first).
                let n = records.partition_point(|r| r.seq <= p.last_seq);
                let at = n.checked_sub(1).map(|i| records[i].received_at);
                emit(as_of_line(p.last_seq, at).as_bytes())?;
            }
            return answer(&cli, &p, &records, &q);
        }
        Cmd::GenExport { .. } | Cmd::Serve { .. } => unreachable!("handled above"),
    };
    let t = std::time::Instant::now();
    let p = fold(&pr, &records);
    if cli.timings {
        eprintln!("folded in {:.3} s", t.elapsed().as_secs_f64());
    }
    let t = std::time::Instant::now();
    let r = answer(&cli, &p, &records, &q);
    if cli.timings {
        eprintln!("answered in {:.3} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    r
}

fn answer(cli: &Cli, p: &Projections, records: &[Record], q: &Query) -> Result<(), Fail> {
    let mut text = String::new();
    render(cli, query::run(p, records, q)?, &mut text)?;
    emit(text.as_bytes())
}

/// The first line of a text `replay`.
fn as_of_line(seq: u64, received_at: Option<u64>) -> String {
    format!("as of record {seq} ({})\n", time(received_at))
}

/// The online mode: one GET on the broker's HTTP API, decoded into the view the offline
/// mode computes, then printed by the same code.
fn remote(cli: &Cli, base: &str) -> Result<(), Fail> {
    let token = cli
        .token
        .as_deref()
        .ok_or("--api needs --token BEARER (or PAIRBUS_TOKEN): `pairbus-agent --identity FILE token --bearer`")?;
    let token = token.trim();
    let bearer = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    let api = Api {
        base: base.trim_end_matches('/').to_owned(),
        auth: format!("Bearer {bearer}"),
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into(),
    };
    if cli.fleet_key.is_some() || cli.verify_macs || cli.export_format.is_some() {
        eprintln!("warning: --fleet-key, --verify-macs and --export-format apply to --export only; the broker's projector uses its own fleet key");
    }
    let resp = match &cli.command {
        Cmd::Devices { state } => {
            let mut params = Vec::new();
            if let Some(s) = state {
                params.push(("state", s.clone()));
            }
            Response::Devices(api.get("/v1/devices", &params)?.json()?)
        }
        Cmd::Device { id } => Response::Device(Box::new(
            api.get(&format!("/v1/devices/{}", path_segment(id)?), &[])?
                .json()?,
        )),
        Cmd::History {
            id,
            since,
            until,
            types,
        } => {
            let mut params = Vec::new();
            for (k, v) in [("since", since), ("until", until)] {
                if let Some(v) = v {
                    params.push((k, parse_time(v)?.to_string()));
                }
            }
            params.extend(types.iter().map(|t| ("type", t.clone())));
            let path = format!("/v1/devices/{}/history", path_segment(id)?);
            Response::History(api.get(&path, &params)?.json()?)
        }
        Cmd::Graph { .. } => {
            Response::Graph(api.get("/v1/graph", &[("format", "json".into())])?.json()?)
        }
        Cmd::Alerts => Response::Alerts(api.get("/v1/alerts", &[])?.json()?),
        Cmd::Stats => Response::Stats(api.get("/v1/stats", &[])?.json()?),
        Cmd::Replay { as_of, what } => {
            // Digits are a log position, anything else a time: the API reads it as offline.
            let mut params = vec![("as_of", as_of.clone())];
            match what {
                ReplayWhat::Device { id } => {
                    params.push(("view", "device".into()));
                    params.push(("id", id.clone()));
                }
                ReplayWhat::Graph => params.push(("view", "graph".into())),
                ReplayWhat::Devices => params.push(("view", "devices".into())),
            }
            let reply = api.get("/v1/replay", &params)?;
            if !cli.json {
                let seq = reply.header("pairbus-as-of-seq").unwrap_or(0);
                let at = reply.header("pairbus-as-of-received-at");
                emit(as_of_line(seq, at).as_bytes())?;
            }
            match what {
                ReplayWhat::Device { .. } => Response::Device(Box::new(reply.json()?)),
                ReplayWhat::Graph => Response::Graph(reply.json()?),
                ReplayWhat::Devices => Response::Devices(reply.json()?),
            }
        }
        Cmd::GenExport { .. } | Cmd::Serve { .. } => unreachable!("handled before"),
    };
    let mut text = String::new();
    render(cli, resp, &mut text)?;
    emit(text.as_bytes())
}

/// A device id as one URL path segment (ids are hex; anything else is refused here).
fn path_segment(id: &str) -> Result<&str, Fail> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(id)
    } else {
        Err(format!("`{id}` is not a device id (16 hex digits)").into())
    }
}

/// The HTTP API client.
struct Api {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

/// A successful answer.
struct Reply {
    body: String,
    headers: ureq::http::HeaderMap,
}

impl Api {
    /// `GET base+path?params`: the body of a 200, or the API's error message.
    fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Reply, Fail> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .header("Authorization", &self.auth)
            .header("Accept", "application/json")
            .query_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
            .call()
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 32)
            .read_to_string()
            .map_err(|e| format!("{url}: reading the answer: {e}"))?;
        if !status.is_success() {
            // The API's errors are `{"error", "code"}`.
            let why = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            return Err(format!("{url}: {status}: {why}").into());
        }
        Ok(Reply {
            body,
            headers: resp.headers().clone(),
        })
    }
}

impl Reply {
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Fail> {
        serde_json::from_str(&self.body)
            .map_err(|e| format!("the API's answer is not the expected view: {e}").into())
    }

    fn header(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(bytes: &[u8]) -> Result<(), Fail> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn render(cli: &Cli, resp: Response, o: &mut String) -> Result<(), Fail> {
    if let (Cmd::Graph { format }, Response::Graph(g)) = (&cli.command, &resp) {
        match format {
            GraphFormat::Json => return print_json(o, g),
            GraphFormat::Dot => {
                write!(o, "{}", to_dot(g))?;
                return Ok(());
            }
            GraphFormat::Text if !cli.json => {
                write!(o, "{}", to_text(g))?;
                return Ok(());
            }
            GraphFormat::Text => return print_json(o, g),
        }
    }
    if cli.json {
        return print_json(o, &resp);
    }
    match resp {
        Response::Devices(v) => {
            writeln!(
                o,
                "{:<16}  {:<18}  {:<8}  {:<10}  {:<12}  {:<16}  {:>7}  last seen",
                "device", "state", "type", "model", "owner", "manager", "sensors"
            )?;
            for c in &v {
                writeln!(
                    o,
                    "{:<16}  {:<18}  {:<8}  {:<10}  {:<12}  {:<16}  {:>7}  {}",
                    c.device_id,
                    c.state.as_str(),
                    c.device_type,
                    c.model,
                    c.owner.as_deref().unwrap_or("-"),
                    c.manager.as_ref().map_or("-".into(), |m| m.to_string()),
                    c.sensors.len(),
                    time(c.last_seen)
                )?;
            }
            writeln!(o, "{} device(s)", v.len())?;
        }
        Response::Device(c) => print_card(o, &c)?,
        Response::History(h) => o.push_str(&pairbus_projector::text::history(&h)),
        Response::Graph(g) => write!(o, "{}", to_text(&g))?,
        Response::Alerts(v) => o.push_str(&pairbus_projector::text::alerts(&v)),
        Response::Stats(s) => {
            writeln!(o, "records folded: {}", s.last_seq)?;
            writeln!(o, "undecodable records: {}", s.undecodable)?;
            writeln!(o, "devices per state:")?;
            for (k, v) in &s.devices {
                writeln!(o, "  {k:<20} {v}")?;
            }
            writeln!(o, "alerts per code:")?;
            for (k, v) in &s.alerts {
                writeln!(o, "  {k:<20} {v}")?;
            }
            writeln!(o, "actions per type per day:")?;
            for (a, days) in &s.actions {
                for (d, n) in days {
                    writeln!(o, "  {a:<20} {d}  {n}")?;
                }
            }
        }
    }
    Ok(())
}

fn print_card(o: &mut String, c: &DeviceCard) -> std::fmt::Result {
    writeln!(o, "device        {}", c.device_id)?;
    writeln!(o, "state         {}", c.state.as_str())?;
    writeln!(o, "name          {}", c.name)?;
    writeln!(o, "type / model  {} / {}", c.device_type, c.model)?;
    writeln!(
        o,
        "manufacturer  {} (factory {}, {})",
        c.manufacturer,
        c.factory,
        time(Some(c.manufactured_at))
    )?;
    writeln!(o, "owner         {}", c.owner.as_deref().unwrap_or("-"))?;
    writeln!(o, "activated_at  {}", time(c.activated_at))?;
    if let Some(a) = &c.activation {
        writeln!(
            o,
            "activation    by {} at {} (record {}), claim deadline {}, ip {}, user agent {}",
            a.by,
            time(Some(a.requested_at)),
            a.seq,
            time(Some(a.claim_deadline)),
            a.ip.as_deref().unwrap_or("-"),
            a.user_agent.as_deref().unwrap_or("-")
        )?;
    }
    if let Some(s) = &c.setup {
        writeln!(
            o,
            "setup         {} as {} by {} at {}",
            s.owner,
            s.role,
            s.by,
            time(Some(s.at))
        )?;
    }
    writeln!(
        o,
        "components    {}",
        c.components
            .iter()
            .map(|x| format!("{} ({})", x.kind, x.spec))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(
        o,
        "manager       {}",
        c.manager.as_ref().map_or("-".into(), |m| m.to_string())
    )?;
    writeln!(
        o,
        "sensors       {}",
        c.sensors
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if let Some(r) = &c.revoked {
        writeln!(
            o,
            "revoked       by {} at {}: {}",
            r.by,
            time(Some(r.at)),
            r.reason
        )?;
    }
    writeln!(o, "last_seen     {}", time(c.last_seen))?;
    writeln!(o, "trail         {} record(s)", c.events)?;
    Ok(())
}
