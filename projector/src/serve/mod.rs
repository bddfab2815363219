//! `pairbus-projector serve`: the projector on its own, beside a broker.
//!
//! It connects to the operator plane as an operator (username = kid, a fresh token at every
//! connect), subscribes to `pairbus/v1/log`, the replies of its replay requests and
//! `pairbus/v1/rejected/#`, and lets a [`Follower`] decide what to apply: live records in
//! order, catch-ups through the replay service at start, after a reconnect and at every gap
//! (no position skipped, none applied twice, the hash chain checked). Applied records are
//! folded into projections persisted with their checkpoint ([`crate::store`]) in its own sled
//! folder, beside its copy of the records; the HTTP API ([`crate::api`]) answers from them.
//!
//! It publishes nothing on MQTT: the broker's embedded projector already publishes the audit
//! topics, and two publishers of the same retained views would only race.

mod http;
mod local;

pub use local::{Local, Status};

use crate::follow::{Action, Follower, Mode};
use crate::Projector;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::messages::{Rejection, ReplayEnd};
use pairbus_schemas::record::MAX_RECORD_SIZE;
use pairbus_schemas::{Record, RootSecret, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time between two saves of the projections at most (also saved every
/// [`SAVE_EVERY_RECORDS`] records, at the end of each catch-up and at shutdown). After a
/// SIGKILL, what was applied since the last save is caught up again from the broker.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// Records applied between two saves at most.
pub const SAVE_EVERY_RECORDS: usize = 10_000;

/// How `serve` runs.
pub struct ServeConfig {
    /// The operator identity it connects as.
    pub identity: Identity,
    /// `host:port` of the operator plane.
    pub broker: String,
    /// Its sled folder.
    pub data: PathBuf,
    /// Where the HTTP API listens.
    pub http_listen: SocketAddr,
    /// The fleet root: activation QR codes, operator tokens of the HTTP API.
    pub root: RootSecret,
    /// The fold's tunables (the claim window must match the broker's to give its answers).
    pub fold: crate::Config,
}

/// Why `serve` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The broker address is not `host:port`.
    #[error("broker address `{0}` is not host:port")]
    BrokerAddr(String),
    /// The data folder could not be opened (another process on it?).
    #[error("data folder {path}: {source}")]
    Data {
        /// The folder.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// The persisted projections could not be read or written.
    #[error("projections store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The HTTP listener could not be bound.
    #[error("HTTP API on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The opened state, before following: where the HTTP API listens and where it resumes.
pub struct Started {
    /// The bound HTTP address.
    pub http: SocketAddr,
    /// The checkpoint it resumes from (0: from genesis).
    pub resumed_from: u64,
    local: Local,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn parse_broker(addr: &str) -> Result<(String, u16), ServeError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| ServeError::BrokerAddr(addr.to_owned()))?;
    let port = port
        .parse()
        .map_err(|_| ServeError::BrokerAddr(addr.to_owned()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ServeError::BrokerAddr(addr.to_owned()));
    }
    Ok((host.to_owned(), port))
}

/// Opens the data folder (resuming from its checkpoint) and binds the HTTP listener.
pub async fn start(config: ServeConfig) -> Result<Started, ServeError> {
    parse_broker(&config.broker)?;
    let db = open_db(&config.data)?;
    let projector = Projector::new(config.fold, config.root.clone());
    let local = Local::open(&db, projector, config.root.clone())?;
    let resumed_from = local.last().0;
    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServeError::Http {
            addr: config.http_listen,
            source,
        })?;
    let http = listener.local_addr().map_err(|source| ServeError::Http {
        addr: config.http_listen,
        source,
    })?;
    Ok(Started {
        http,
        resumed_from,
        local,
        listener,
        config,
    })
}

fn open_db(path: &std::path::Path) -> Result<sled::Db, ServeError> {
    let data = |source| ServeError::Data {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(path).map_err(|e| data(sled::Error::Io(e)))?;
    sled::open(path).map_err(data)
}

impl Started {
    /// The state the HTTP API reads.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Follows the log and serves the API until `shutdown` resolves, then saves the
    /// projections with their checkpoint.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Started {
            local,
            listener,
            config,
            ..
        } = self;
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(local.clone());
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = http_stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
        let result = follow(&config, &local, shutdown).await;
        let _ = stop_http.send(());
        let _ = server.await;
        let saved = local.commit();
        tracing::info!(last_seq = local.last().0, "stopped; projections saved");
        result.and(saved.map_err(ServeError::from))
    }
}

/// What arrived on the connection.
enum Inbound {
    Live(Record),
    Replayed(String, Record),
    End(String, u64),
    Refused(pairbus_schemas::Kid, Rejection),
}

/// Decodes one message strictly; `None` for a topic it does not read, `Some(Err)` for garbage.
fn classify(topic: &str, payload: &[u8]) -> Option<Result<Inbound, String>> {
    if topic == Topic::Log.to_string() {
        return Some(
            Record::decode(payload, MAX_RECORD_SIZE)
                .map(Inbound::Live)
                .map_err(|e| format!("log record: {e}")),
        );
    }
    match Topic::parse(topic) {
        Ok(Topic::ReplayReply(id)) => Some(match ReplayEnd::decode(payload) {
            Ok(end) => Ok(Inbound::End(id, end.count)),
            Err(_) => Record::decode(payload, MAX_RECORD_SIZE)
                .map(|r| Inbound::Replayed(id, r))
                .map_err(|e| format!("replay reply: {e}")),
        }),
        Ok(Topic::Rejected(kid)) => Some(
            serde_json::from_slice::<Rejection>(payload)
                .map(|r| Inbound::Refused(kid, r))
                .map_err(|e| format!("rejection: {e}")),
        ),
        _ => None,
    }
}

fn mode_name(m: &Mode) -> &'static str {
    match m {
        Mode::Disconnected => "disconnected",
        Mode::CatchingUp { .. } => "catching_up",
        Mode::Live => "live",
        Mode::Halted(_) => "halted",
    }
}

fn options(config: &ServeConfig, host: &str, port: u16, client_id: &str) -> MqttOptions {
    let kid = &config.identity.kid;
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_RECORD_SIZE + 1024, 64 * 1024)
        .set_credentials(kid.to_string(), token(config));
    o
}

fn token(config: &ServeConfig) -> String {
    let expiry = now_ms() / 1000 + 3600;
    config.identity.key.mint_token(&config.identity.kid, expiry)
}

async fn follow(
    config: &ServeConfig,
    local: &Local,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (host, port) = parse_broker(&config.broker)?;
    let session = format!("projector.{:x}.{:x}", std::process::id(), now_ms());
    let client_id = format!("{}-{session}", config.identity.kid);
    let (client, mut eventloop) = AsyncClient::new(options(config, &host, port, &client_id), 256);
    let (last_seq, last_hash) = local.last();
    let mut f = Follower::new(last_seq, last_hash, &session);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut saved_at = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut warned = false;
    tokio::pin!(shutdown);
    loop {
        let actions = tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if saved_at.elapsed() >= SAVE_EVERY {
                    local.commit()?;
                    saved_at = tokio::time::Instant::now();
                }
                f.tick(now_ms())
            }
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    tracing::info!(broker = %config.broker, "connected to the operator plane");
                    delay = Duration::from_millis(100);
                    warned = false;
                    if let Err(e) = client.try_subscribe_many(subscriptions()) {
                        tracing::error!(error = %e, "subscribing failed");
                    }
                    Vec::new()
                }
                // One SUBSCRIBE for the three filters: once acknowledged, nothing is missed.
                Ok(Event::Incoming(Packet::SubAck(_))) => f.connected(now_ms()),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    on_publish(&mut f, local, &p.topic, &p.payload)?
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    f.disconnected();
                    if warned {
                        tracing::debug!(error = %e, "cannot connect yet; retrying");
                    } else {
                        tracing::warn!(error = %e, broker = %config.broker, "operator plane unreachable or connection lost; retrying");
                        warned = true;
                    }
                    local.set_status(|s| s.mode = "disconnected");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    // A fresh token at every connect.
                    eventloop
                        .mqtt_options
                        .set_credentials(config.identity.kid.to_string(), token(config));
                    Vec::new()
                }
            },
        };
        carry_out(&client, local, &mut f, actions)?;
    }
    let _ = client.try_disconnect();
    Ok(())
}

/// What `serve` subscribes to: the log, the replies of its replay requests, the refusals.
fn subscriptions() -> Vec<SubscribeFilter> {
    let prefix = pairbus_schemas::topics::PREFIX;
    [
        Topic::Log.to_string(),
        format!("{prefix}/replay/reply/+"),
        format!("{prefix}/rejected/#"),
    ]
    .into_iter()
    .map(|t| SubscribeFilter::new(t, QoS::AtMostOnce))
    .collect()
}

/// Hands one message to the follower (records, end markers) or keeps it (refusals).
fn on_publish(
    f: &mut Follower,
    local: &Local,
    topic: &str,
    payload: &[u8],
) -> Result<Vec<Action>, ServeError> {
    Ok(match classify(topic, payload) {
        None => Vec::new(),
        Some(Err(why)) => {
            let mut n = 0;
            local.set_status(|s| {
                s.garbage += 1;
                n = s.garbage;
            });
            // Logged at the 1st, 2nd, 4th, 8th… occurrence: a flood cannot flood the logs.
            if n.is_power_of_two() {
                tracing::warn!(%topic, error = %why, dropped = n, "undecodable message dropped");
            }
            Vec::new()
        }
        Some(Ok(Inbound::Live(r))) => f.live(r, now_ms()),
        Some(Ok(Inbound::Replayed(id, r))) => f.replayed(&id, r, now_ms()),
        Some(Ok(Inbound::End(id, n))) => f.replay_end(&id, n, now_ms()),
        Some(Ok(Inbound::Refused(kid, r))) => {
            let alert = crate::refusals::alert(&kid, &r, now_ms());
            local.refusal(&alert)?;
            local.set_status(|s| s.refusals += 1);
            Vec::new()
        }
    })
}

fn carry_out(
    client: &AsyncClient,
    local: &Local,
    f: &mut Follower,
    actions: Vec<Action>,
) -> Result<(), ServeError> {
    let mut apply = Vec::new();
    for a in actions {
        match a {
            Action::Apply(r) => apply.push(r),
            Action::Request(req) => {
                local.apply(&std::mem::take(&mut apply))?;
                tracing::debug!(from_seq = req.from_seq, request_id = %req.request_id, "catching up through the replay service");
                let json = serde_json::to_vec(&req).unwrap_or_default();
                if let Err(e) = client.try_publish(
                    Topic::ReplayRequest.to_string(),
                    QoS::AtLeastOnce,
                    false,
                    json,
                ) {
                    // The request's deadline asks again.
                    tracing::warn!(error = %e, "replay request not sent");
                }
            }
            Action::CaughtUp { last_seq } => {
                local.apply(&std::mem::take(&mut apply))?;
                local.commit()?;
                tracing::info!(last_seq, "caught up; following the log live");
            }
            Action::Halted(why) => {
                tracing::error!(%why, "stopped applying records");
                local.set_status(|s| s.halted = Some(why));
            }
        }
    }
    local.apply(&apply)?;
    let (mode, counters) = (mode_name(f.mode()), f.counters);
    local.set_status(|s| {
        s.mode = mode;
        s.counters = counters;
    });
    Ok(())
}

/// Runs `serve` until SIGINT or SIGTERM: prints the ready line on stdout, then follows.
pub async fn serve_until_signal(config: ServeConfig) -> Result<(), ServeError> {
    let broker = config.broker.clone();
    let data = config.data.clone();
    let started = start(config).await?;
    println!(
        "pairbus projector ready: HTTP http://{}, broker {broker}, data {}, resumed from seq {}",
        started.http,
        data.display(),
        started.resumed_from
    );
    tracing::info!(seq = started.resumed_from, "resumed from checkpoint");
    started.run(signal()).await
}

async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Backend;
    use crate::testkit::LogBuilder;
    use crate::Projections;

    fn snapshot(l: &Local) -> Projections {
        l.read(|p| p.clone())
    }

    #[test]
    fn broker_addresses_are_host_port() {
        assert_eq!(
            parse_broker("127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(parse_broker("[::1]:1884").unwrap(), ("::1".into(), 1884));
        assert!(parse_broker("nohost").is_err());
        assert!(parse_broker(":1884").is_err());
        assert!(parse_broker("h:port").is_err());
    }

    #[test]
    fn messages_are_decoded_strictly() {
        assert!(matches!(
            classify("pairbus/v1/log", b"garbage"),
            Some(Err(_))
        ));
        let r = Record::chain(pairbus_schemas::GENESIS, 1, 5, b"e".to_vec());
        assert!(matches!(
            classify("pairbus/v1/log", &r.encode()),
            Some(Ok(Inbound::Live(x))) if x == r
        ));
        assert!(matches!(
            classify("pairbus/v1/replay/reply/a-1", &ReplayEnd { count: 3 }.encode()),
            Some(Ok(Inbound::End(id, 3))) if id == "a-1"
        ));
        assert!(matches!(
            classify("pairbus/v1/replay/reply/a-1", &r.encode()),
            Some(Ok(Inbound::Replayed(id, _))) if id == "a-1"
        ));
        assert!(matches!(
            classify("pairbus/v1/replay/reply/a-1", b"\xff"),
            Some(Err(_))
        ));
        let rej = br#"{"reason":"bad_mac","detail":"no"}"#;
        assert!(matches!(
            classify("pairbus/v1/rejected/device/0123456789abcdef", rej),
            Some(Ok(Inbound::Refused(..)))
        ));
        assert!(matches!(
            classify("pairbus/v1/rejected/device/0123456789abcdef", b"{}"),
            Some(Err(_))
        ));
        assert!(classify("pairbus/v1/audit/graph", b"{}").is_none());
    }

    #[test]
    fn the_local_state_resumes_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogBuilder::new();
        let m = log.configured(1, "a");
        let s = log.configured(2, "a");
        log.pair(&m, &s);
        let root = log.root();
        let n = log.records.len();
        // One handle for both lives: sled releases its lock a moment after a drop.
        let db = sled::open(dir.path()).unwrap();
        {
            let l = Local::open(
                &db,
                Projector::new(Default::default(), root.clone()),
                root.clone(),
            )
            .unwrap();
            l.apply(&log.records[..n - 1]).unwrap();
            l.commit().unwrap();
            l.apply(&log.records[n - 1..]).unwrap();
            // Not committed: lost by the restart, applied again after it.
        }
        let l = Local::open(
            &db,
            Projector::new(Default::default(), root.clone()),
            root.clone(),
        )
        .unwrap();
        assert_eq!(l.last().0, n as u64 - 1);
        l.apply(&log.records[n - 1..]).unwrap();
        let full = Projector::new(Default::default(), root).rebuild(&log.records);
        assert_eq!(snapshot(&l), full);
        assert_eq!(l.range(1..n as u64 + 1).unwrap(), log.records);
        assert!(l.range(1..n as u64 + 2).is_err());
        assert_eq!(l.record(2).as_ref(), log.records.get(1));
    }
}
