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
//!
//! - [`story`](self): the steps, acting through the sessions and waiting for the bus to show
//!   each result (`story.rs`); [`expect`]: the pure checks; [`forge`]: the counterfeit QR
//!   label (pure);
//! - the IO around them: the principals' sessions (`actors.rs`), the byte-for-byte replay
//!   client (`replay.rs`), the narration on stdout (`narrator.rs`).

mod actors;
pub mod expect;
pub mod forge;
mod narrator;
mod replay;
mod story;

use crate::bus::{Bus, BusError, BusSettings};
use crate::datadir::{self, DataDirError};
use crate::ingest::IngestSettings;
use crate::log::{LogError, LogStore};
use narrator::Narrator;
use pairbus_agent::AgentError;
use pairbus_schemas::RootSecret;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The demo's data folder unless `--data` says otherwise.
pub const DEFAULT_DEMO_DATA: &str = "./pairbus-demo";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The data folder (fleet key, identities, the log, the demo's device files).
    pub data: PathBuf,
    /// How long to wait for each step before declaring it failed.
    pub timeout: Duration,
    /// After a successful story, keep the bus running (to explore it) until Ctrl-C / SIGTERM.
    pub keep_running: bool,
}

/// Why the demo failed.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The data folder could not be created or read.
    #[error("data folder: {0}")]
    DataDir(#[from] DataDirError),
    /// The bus did not start.
    #[error(
        "starting the bus (is a broker running on this data folder? sled allows one process): {0}"
    )]
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

/// Runs the demo: prints the story on stdout, ending with the summary line, and returns the
/// summary if every expectation held. With [`DemoOptions::keep_running`] the bus then stays
/// up until Ctrl-C or SIGTERM. The bus is shut down before returning, whatever happened.
pub fn run(opts: &DemoOptions) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let n = Narrator::default();
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
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)
        .and_then(|rt| {
            let scene = story::Scene {
                n: &n,
                bus: &bus,
                root: &root,
                t: opts.timeout,
                first,
            };
            let mut cast = None;
            let played = rt.block_on(story::play(&scene, &opts.data, &mut cast));
            if let Some(c) = cast {
                rt.block_on(c.stop());
            }
            played
        })
        .and_then(|()| {
            let report = bus.log().verify()?;
            n.expect(
                "the log verifies (every hash link, MAC and checkpoint)",
                match report.first_bad {
                    None => Ok(()),
                    Some(b) => Err(format!("record {}: {}", b.seq, b.problem)),
                },
            )?;
            Ok(Summary {
                expectations: n.held(),
                records: report.head.seq,
                this_run: report.head.seq.saturating_sub(first),
                secs: started.elapsed().as_secs_f64(),
            })
        });
    let result = result.and_then(|summary| {
        n.summary(&summary.line());
        if opts.keep_running {
            n.step(&format!(
                "the bus keeps running until Ctrl-C: device plane {}, operator plane {}, HTTP http://{}; for example\n       PAIRBUS_API=http://{} PAIRBUS_TOKEN=\"$(pairbus-agent --identity {} token --bearer)\" pairbus-projector graph",
                bus.device_addr(),
                bus.operator_addr(),
                bus.http_addr(),
                bus.http_addr(),
                opts.data.join(datadir::OPERATOR_IDENTITY).display()
            ));
            wait_for_signal()?;
        }
        Ok(summary)
    });
    bus.shutdown();
    result
}

/// Blocks until Ctrl-C or SIGTERM.
fn wait_for_signal() -> Result<(), DemoError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DemoError::Runtime)?
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })
        .map_err(DemoError::Runtime)
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
