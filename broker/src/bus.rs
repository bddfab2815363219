//! The whole broker in one value: both MQTT planes, the log, the ingest pipeline and the
//! HTTP API, started together and stopped together.

use crate::embedded::Embedded;
use crate::http;
use crate::ingest::{Ingest, IngestParts, IngestSettings};
use crate::journal::{self, Journal};
use crate::log::{LogConfig, LogError, SledLog};
use crate::metrics::Metrics;
use crate::mqtt::auth::{authenticate, PlaneKind};
use crate::mqtt::gate::Gate;
use crate::mqtt::plane::{AuthFn, Plane, PlaneError, PlaneSettings};
use crate::presence::PresenceMirror;
use crate::replay::Replay;
use pairbus_schemas::{RootSecret, Topic};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Where the broker listens and keeps its data.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// The data folder (`fleet.key`, `log/`, identities).
    pub data_dir: PathBuf,
    /// Device plane listener.
    pub device_listen: SocketAddr,
    /// Operator plane listener.
    pub operator_listen: SocketAddr,
    /// HTTP API listener.
    pub http_listen: SocketAddr,
    /// Ingest pipeline settings.
    pub ingest: IngestSettings,
}

/// Why the broker could not start.
#[derive(Debug, Error)]
pub enum BusError {
    /// The event log could not be opened.
    #[error("event log: {0}")]
    Log(#[from] LogError),
    /// The embedded projections could not be opened or brought up to date.
    #[error(transparent)]
    Projections(#[from] crate::embedded::EmbeddedError),
    /// An MQTT plane could not start.
    #[error(transparent)]
    Plane(#[from] PlaneError),
    /// The HTTP API could not start.
    #[error("HTTP API on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Bus {
    device: Plane,
    operator: Plane,
    ingest: Ingest,
    replay: Replay,
    presence: PresenceMirror,
    http: http::HttpServer,
    log: Arc<SledLog>,
    metrics: Arc<Metrics>,
    projections: Arc<Mutex<Embedded>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn auth_for(
    plane: PlaneKind,
    root: RootSecret,
    log: Arc<SledLog>,
    metrics: Arc<Metrics>,
) -> AuthFn {
    Arc::new(move |client_id: &str, username: &str, password: &str| {
        let span = tracing::info_span!("connect", plane = plane.as_str(), client_id, username);
        let _enter = span.enter();
        match authenticate(
            plane,
            client_id,
            username,
            password,
            now_secs(),
            &root,
            |k| log.is_revoked(k),
        ) {
            Ok(_) => {
                metrics.auth_accepted.fetch_add(1, Ordering::Relaxed);
                match plane {
                    PlaneKind::Device => &metrics.device_connects,
                    PlaneKind::Operator => &metrics.operator_connects,
                }
                .fetch_add(1, Ordering::Relaxed);
                tracing::info!("connection accepted");
                true
            }
            Err(e) => {
                metrics.refuse_connect(e.label());
                tracing::warn!(reason = e.label(), error = %e, "connection refused");
                false
            }
        }
    })
}

impl Bus {
    /// Opens the log in `<data_dir>/log` and the embedded projections in
    /// `<data_dir>/projections` (resumed from their checkpoint), and starts everything.
    pub fn start(settings: BusSettings, root: RootSecret) -> Result<Self, BusError> {
        let log = Arc::new(SledLog::open(
            LogConfig::new(settings.data_dir.join("log")),
            root.clone(),
        )?);
        let metrics = Arc::new(Metrics::default());
        let embedded = Embedded::open(root.clone(), &*log, &settings.data_dir.join("projections"))?;
        let resumed = embedded.resumed();
        metrics
            .projections_resumed_from
            .store(resumed.from, Ordering::Relaxed);
        metrics
            .projections_folded_at_start
            .store(resumed.folded, Ordering::Relaxed);
        let projections = Arc::new(Mutex::new(embedded));
        let folder = projections.clone();
        let checkpoints = log.clone();
        let mut last_checkpoint = 0;
        let hook: crate::ingest::CommitHook = Box::new(move |records, events, out| {
            // A poisoned lock means a panic in the fold on another thread; keep folding.
            let mut p = folder.lock().unwrap_or_else(|e| e.into_inner());
            p.on_commit(records, events, out);
            // A new signed chain head (made inside a commit): publish it, retained.
            if let Some(c) = checkpoints.latest_checkpoint() {
                if c.seq > last_checkpoint {
                    last_checkpoint = c.seq;
                    out.publish(
                        PlaneKind::Operator,
                        Topic::Checkpoints.to_string(),
                        c.encode(),
                        true,
                    );
                }
            }
        });
        let gate = Gate::new(settings.ingest.pause_at, settings.ingest.resume_at);
        let _ = metrics.backpressure.set(gate.clone());
        let plane = |name, listen, open: &Arc<AtomicU64>| PlaneSettings {
            gate: Some(gate.clone()),
            open_connections: open.clone(),
            ..PlaneSettings::new(name, listen)
        };
        let device = Plane::start(
            plane("device", settings.device_listen, &metrics.device_open),
            auth_for(
                PlaneKind::Device,
                root.clone(),
                log.clone(),
                metrics.clone(),
            ),
        )?;
        let operator = Plane::start(
            plane("operator", settings.operator_listen, &metrics.operator_open),
            auth_for(
                PlaneKind::Operator,
                root.clone(),
                log.clone(),
                metrics.clone(),
            ),
        )?;
        let journal = Arc::new(
            Journal::open(
                &settings.data_dir.join("refusals"),
                journal::DEFAULT_CAPACITY,
            )
            .map_err(|e| BusError::Log(LogError::Sled(e)))?,
        );
        let ingest = Ingest::start(
            &device,
            &operator,
            IngestParts {
                log: log.clone(),
                root: root.clone(),
                metrics: metrics.clone(),
                journal: journal.clone(),
                gate: Some(gate),
            },
            settings.ingest.clone(),
            Some(hook),
        )?;
        let replay = Replay::start(&operator, log.clone(), root.clone(), metrics.clone())?;
        let presence = PresenceMirror::start(&device, &operator)?;
        let http = http::HttpServer::start(
            settings.http_listen,
            http::AppState {
                log: log.clone(),
                metrics: metrics.clone(),
                journal,
                root: root.clone(),
                projections: projections.clone(),
                replays: Arc::default(),
            },
        )
        .map_err(|source| BusError::Http {
            addr: settings.http_listen,
            source,
        })?;
        Ok(Bus {
            device,
            operator,
            ingest,
            replay,
            presence,
            http,
            log,
            metrics,
            projections,
        })
    }

    /// The embedded projector's state (locked while the committer folds).
    pub fn projections(&self) -> &Arc<Mutex<Embedded>> {
        &self.projections
    }

    /// The device plane's address.
    pub fn device_addr(&self) -> SocketAddr {
        self.device.listen_addr()
    }

    /// The operator plane's address.
    pub fn operator_addr(&self) -> SocketAddr {
        self.operator.listen_addr()
    }

    /// The HTTP API's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// The event log.
    pub fn log(&self) -> &Arc<SledLog> {
        &self.log
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, finishes the group commit in progress, and closes everything.
    pub fn shutdown(self) {
        self.device.shutdown();
        self.operator.shutdown();
        self.ingest.stop();
        self.replay.stop();
        self.presence.stop();
        self.http.shutdown();
        // The committer has stopped: save the projections with their checkpoint.
        let mut p = self.projections.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = p.save() {
            tracing::error!(error = %e, "saving the projections at shutdown failed");
        }
        // Every acknowledged commit is already durable; dropping the log closes sled.
    }
}
