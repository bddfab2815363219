//! `pairbus-broker`: the main job (`serve`), its offline tools (`init`, `verify`, `export`),
//! `demo`, the whole story in one command, and `health`, a probe for container health checks.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pairbus_broker::bus::{Bus, BusSettings};
use pairbus_broker::config::{resolve, FileConfig, DEFAULT_DATA_DIR, DEFAULT_OPERATOR_LISTEN};
use pairbus_broker::datadir;
use pairbus_broker::export::{export, Format};
use pairbus_broker::ingest::IngestSettings;
use pairbus_broker::log::{LogConfig, LogStore, SledLog};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// mimalloc instead of glibc's allocator: the committer allocates and frees small buffers
/// for every event (BENCHMARKS.md, "Broker under MQTT load").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pairbus-broker",
    version,
    about = "pairbus broker: embedded MQTT, verified ingest, hash-chained event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data folder: a fresh fleet root secret (fleet.key, 0600) and the first
    /// operator (operator-admin.toml) and factory (factory-default.toml) identities.
    Init {
        /// The data folder.
        #[arg(long, env = "PAIRBUS_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// The operator plane address written into the identities.
        #[arg(long, default_value = DEFAULT_OPERATOR_LISTEN)]
        operator_addr: String,
    },
    /// Run the broker: device plane, operator plane, verified ingest, event log, HTTP API.
    /// Initializes the data folder first if it has no fleet.key.
    Serve {
        /// TOML config file (keys: data, device_listen, operator_listen, http_listen).
        #[arg(long, env = "PAIRBUS_CONFIG")]
        config: Option<PathBuf>,
        /// The data folder [default: ./pairbus-data].
        #[arg(long, env = "PAIRBUS_DATA")]
        data: Option<PathBuf>,
        /// Device plane listener [default: 127.0.0.1:1883].
        #[arg(long, env = "PAIRBUS_DEVICE_LISTEN")]
        device_listen: Option<SocketAddr>,
        /// Operator plane listener [default: 127.0.0.1:1884].
        #[arg(long, env = "PAIRBUS_OPERATOR_LISTEN")]
        operator_listen: Option<SocketAddr>,
        /// HTTP API listener [default: 127.0.0.1:8080].
        #[arg(long, env = "PAIRBUS_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
    },
    /// Play the whole story against the real bus, in this process, on ephemeral loopback
    /// ports: three devices made with QR codes, activated from the images, set up, paired
    /// (a hub and two sensors), commands and actions, then a forged QR code, a replayed event
    /// and a replayed pairing token, all refused; prints each device's history, the pairing
    /// graph and the alerts. Exits 0 only if every expectation held.
    Demo {
        /// The data folder (created if new, reused after: every run makes new devices).
        #[arg(long, default_value = pairbus_broker::demo::DEFAULT_DEMO_DATA)]
        data: PathBuf,
        /// Seconds to wait for each step before declaring it failed.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        /// After the story, keep the bus running (to explore it) until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Re-check the whole log offline: every hash link, every MAC, every checkpoint.
    /// (The broker must not be running on the same folder: sled allows one process.)
    Verify {
        /// The data folder.
        #[arg(long, env = "PAIRBUS_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Write the log to a file (or stdout) for offline investigation.
    Export {
        /// The data folder.
        #[arg(long, env = "PAIRBUS_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "cbor-seq")]
        format: ExportFormat,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// First seq to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// Probe an HTTP health endpoint (a container health check needing no curl): exits 0 when
    /// `GET URL` answers 2xx within the timeout, 1 otherwise. Works for `pairbus-projector
    /// serve`'s `/healthz` too.
    Health {
        /// The endpoint.
        #[arg(long, default_value = DEFAULT_HEALTH_URL)]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

/// `serve`'s health endpoint on its default HTTP listener.
const DEFAULT_HEALTH_URL: &str = "http://127.0.0.1:8080/healthz";

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// RFC 8742 CBOR sequence of log records.
    CborSeq,
    /// JSON lines, byte fields in hex.
    Jsonl,
}

fn main() -> Result<()> {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let cli = Cli::parse();
    // The demo tells its story on stdout; its logs stay quiet unless asked for.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn,rumqttd=off",
        _ => "info,rumqttd=warn",
    };
    let levels = tracing_subscriber::EnvFilter::try_from_env("PAIRBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // rumqttd opens ERROR-level spans around every packet it routes (`publish`,
    // `incoming_payload`), which pass any level filter: formatting their fields took about a
    // fifth of the router thread under load (BENCHMARKS.md, "Broker under MQTT load"). Its
    // spans are left out; its events are still logged.
    let no_rumqttd_spans = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target().starts_with("rumqttd"))
    });
    // Both as the one layer's filter, so that the disabled spans are never even created.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(levels.and(no_rumqttd_spans)),
        )
        .init();
    match cli.command {
        Command::Demo {
            data,
            timeout,
            keep_running,
        } => demo(data, timeout, keep_running),
        Command::Init {
            data,
            operator_addr,
        } => {
            let made = datadir::init(&data, &operator_addr)
                .with_context(|| format!("initializing {}", data.display()))?;
            println!("created {}", made.fleet_key.display());
            println!("created {}", made.operator.display());
            println!("created {}", made.factory.display());
            Ok(())
        }
        Command::Serve {
            config,
            data,
            device_listen,
            operator_listen,
            http_listen,
        } => {
            let file = match &config {
                Some(p) => FileConfig::parse(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                None => FileConfig::default(),
            };
            let cfg = resolve(
                FileConfig {
                    data,
                    device_listen,
                    operator_listen,
                    http_listen,
                },
                file,
            );
            serve(cfg)
        }
        Command::Verify { data } => verify(&data),
        Command::Export {
            data,
            format,
            out,
            from,
        } => {
            let log = open_log(&data)?;
            let format = match format {
                ExportFormat::CborSeq => Format::CborSeq,
                ExportFormat::Jsonl => Format::Jsonl,
            };
            let n = match &out {
                Some(p) => {
                    let f = std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    export(&log, from, format, &mut w)?
                }
                None => export(
                    &log,
                    from,
                    format,
                    &mut std::io::BufWriter::new(std::io::stdout().lock()),
                )?,
            };
            eprintln!("exported {n} records");
            Ok(())
        }
        Command::Health { url, timeout } => health(&url, timeout),
    }
}

fn demo(data: PathBuf, timeout: u64, keep_running: bool) -> Result<()> {
    let opts = pairbus_broker::demo::DemoOptions {
        data,
        timeout: std::time::Duration::from_secs(timeout.max(1)),
        keep_running,
    };
    match pairbus_broker::demo::run(&opts) {
        Ok(_) => Ok(()),
        Err(e) => {
            println!("\ndemo FAILED: {e}");
            bail!("demo failed: {e}")
        }
    }
}

/// `GET url`: Ok on a 2xx answer, an error naming the status or the failure otherwise.
fn health(url: &str, timeout: u64) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(timeout.max(1))))
        .build()
        .into();
    let resp = agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    println!("{url}: {status}");
    Ok(())
}

fn open_log(data: &Path) -> Result<SledLog> {
    let root = datadir::load_root(data).with_context(|| {
        format!(
            "no usable fleet key in {} (run `pairbus-broker init`)",
            data.display()
        )
    })?;
    SledLog::open(LogConfig::new(data.join("log")), root).with_context(|| {
        format!(
            "opening the log in {} (is a broker running on it?)",
            data.display()
        )
    })
}

fn verify(data: &Path) -> Result<()> {
    let log = open_log(data)?;
    let report = log.verify().context("reading the log")?;
    println!(
        "checked {} records and {} checkpoints; head seq {} hash {}",
        report.records,
        report.checkpoints,
        report.head.seq,
        hex::encode(report.head.hash)
    );
    match report.first_bad {
        None => {
            println!("OK: the chain, every MAC and every checkpoint verify");
            Ok(())
        }
        Some(bad) => bail!("FAILED at seq {}: {}", bad.seq, bad.problem),
    }
}

/// Raises the soft limit on open descriptors to the hard one: every MQTT client takes three
/// (its connection to the front door, and both ends of the front door's connection to the
/// router), and a default soft limit of 1,024 would cap a plane at ≈ 340 clients.
#[cfg(target_os = "linux")]
fn raise_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => {
                tracing::debug!(?before, now = ?limit.current, "raised the open-descriptor limit")
            }
            Err(e) => tracing::warn!(error = %e, ?before, "cannot raise the open-descriptor limit"),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn raise_descriptor_limit() {}

/// Turns transparent huge pages off for this process. mimalloc asks for them (`madvise`), and
/// the kernel then zeroes a whole 2 MiB page at its first touch, inside whichever thread
/// touches it: group commits that hit one took 5–30 ms instead of < 1 ms, and the confirmation
/// p99 at 10,000 events/s was 1.5–2 × higher (BENCHMARKS.md, "Session 4").
#[cfg(target_os = "linux")]
fn disable_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off");
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_huge_pages() {}

fn serve(cfg: pairbus_broker::config::ServeConfig) -> Result<()> {
    raise_descriptor_limit();
    disable_huge_pages();
    let fresh = !cfg.data.join(datadir::FLEET_KEY).exists();
    if fresh {
        let made = datadir::init(&cfg.data, &cfg.operator_listen.to_string())
            .with_context(|| format!("initializing {}", cfg.data.display()))?;
        tracing::info!(
            fleet_key = %made.fleet_key.display(),
            operator = %made.operator.display(),
            factory = %made.factory.display(),
            "initialized a new data folder"
        );
    }
    let root = datadir::load_root(&cfg.data)?;
    let bus = Bus::start(
        BusSettings {
            data_dir: cfg.data.clone(),
            device_listen: cfg.device_listen,
            operator_listen: cfg.operator_listen,
            http_listen: cfg.http_listen,
            ingest: IngestSettings::default(),
        },
        root,
    )
    .context("starting the broker")?;
    if fresh && cfg.operator_listen.port() == 0 {
        // The identities were written before the OS chose the port: point them at it.
        datadir::point_identities(&cfg.data, &bus.operator_addr().to_string())
            .context("updating the first identities with the operator plane's port")?;
    }
    println!(
        "{}",
        pairbus_broker::ready::Ready {
            device: bus.device_addr(),
            operator: bus.operator_addr(),
            http: bus.http_addr(),
            data: cfg.data.clone(),
        }
    );
    wait_for_signal()?;
    tracing::info!("shutting down");
    bus.shutdown();
    Ok(())
}

fn wait_for_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
    .context("waiting for a signal")
}
