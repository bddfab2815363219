//! One MQTT plane: an embedded rumqttd router with one MQTT 3.1.1 listener, authenticated by
//! pairbus tokens, plus local links for the broker's own subscribers and publishers.
//!
//! rumqttd 0.20 facts this module is built around (read in its source):
//! - `Broker::start` blocks forever and cannot be stopped, so the `Router` and `Server` are
//!   used directly: the listener runs on a tokio runtime owned by the plane, which
//!   [`Plane::shutdown`] stops (freeing the port). The router thread itself cannot be stopped
//!   and stays until the process exits.
//! - The defaults of `RouterConfig` refuse every connection: every limit is set explicitly.
//! - A local link is QoS 0 and stalls for good after `Notification::Unschedule` unless
//!   `ready()` is called; `LinkTx::publish` blocks when the router queue is full, so local
//!   links are driven from plain threads, never from tokio workers.
//! - Accepted sockets keep Nagle's algorithm on; [`super::nodelay`] sets `TCP_NODELAY` on the
//!   listener rumqttd bound, which Linux passes on to every accepted socket.
//! - rumqttd acknowledges a publish before anyone has read it and cannot be slowed down, so
//!   clients do not connect to rumqttd directly: the public listener is the plane's
//!   [`super::front`] door, which relays to rumqttd's listener on an internal loopback port and
//!   stops reading from clients while the ingest [`super::gate::Gate`] is closed.

use super::front::FrontDoor;
use super::gate::Gate;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{ConnectionSettings, LinkType, RouterConfig, Server, ServerSettings};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use thiserror::Error;

/// Why a plane could not start or give a link.
#[derive(Debug, Error)]
pub enum PlaneError {
    /// The listener could not be bound (port taken, permission…).
    #[error("{plane} plane: cannot listen on {addr}: {source}")]
    Bind {
        /// Which plane.
        plane: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The tokio runtime for the listener could not be built.
    #[error("{plane} plane: cannot start its runtime: {0}", plane = .0)]
    Runtime(&'static str, #[source] std::io::Error),
    /// The router refused a local link.
    #[error("{plane} plane: router refused local link `{client_id}`: {reason}")]
    Link {
        /// Which plane.
        plane: &'static str,
        /// The link's client id.
        client_id: String,
        /// rumqttd's error text.
        reason: String,
    },
}

/// Limits of one plane.
#[derive(Debug, Clone)]
pub struct PlaneSettings {
    /// `device` or `operator` (for logs and errors).
    pub name: &'static str,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Most simultaneous connections (clients and local links).
    pub max_connections: usize,
    /// Largest MQTT payload accepted, bytes.
    pub max_payload: usize,
    /// Segment size of each subscription filter's log in the router, bytes.
    pub segment_size: usize,
    /// Number of segments per filter kept in memory.
    pub segment_count: usize,
    /// Number of segments kept for the `in/` filters that ingest reads: rumqttd acknowledges
    /// a publish once it is in that log, so this (with ingest's own queue) is how large a
    /// burst can get ahead of the durable commits before the router drops acknowledged
    /// events (counted in `pairbus_ingest_router_dropped_total`). Memory, not reserved up
    /// front: `segment_size` × this at most, kept once a burst has filled it.
    pub ingest_segment_count: usize,
    /// How long a client may take to send CONNECT, ms.
    pub connect_timeout_ms: u16,
    /// Back-pressure from ingest: while it is closed, the front door reads nothing from
    /// clients. `None`: read freely.
    pub gate: Option<Gate>,
    /// Client connections open now (a gauge the front door keeps).
    pub open_connections: Arc<AtomicU64>,
}

impl PlaneSettings {
    /// Defaults measured to lose nothing under a 50,000-message burst (see BENCHMARKS.md):
    /// 1 MiB × 16 segments per filter, for the `in/` filters too (≈ 60,000 events of 200
    /// bytes: far more than the ingest gate lets through ahead of the commits). No gate.
    pub fn new(name: &'static str, listen: SocketAddr) -> Self {
        PlaneSettings {
            name,
            listen,
            max_connections: 10_000,
            max_payload: 64 * 1024 + 1024,
            segment_size: 1024 * 1024,
            segment_count: 16,
            ingest_segment_count: 16,
            connect_timeout_ms: 5_000,
            gate: None,
            open_connections: Arc::default(),
        }
    }
}

/// A local link whose router is gone (rumqttd's error text).
#[derive(Debug, Error)]
#[error("local link closed: {0}")]
pub struct LinkClosed(pub String);

/// Waits up to `timeout` for the next message a local link subscribed to. Answers
/// `Unschedule` with `ready()` (without which rumqttd stops delivering to the link for good)
/// and skips other notifications: `Ok(None)` means nothing arrived in time. An error means the
/// link (or its router) is gone.
pub fn next_publish(
    link: &mut LinkRx,
    timeout: std::time::Duration,
) -> Result<Option<rumqttd::protocol::Publish>, LinkClosed> {
    Ok(next_forward(link, timeout)?.map(|f| f.publish))
}

/// Like [`next_publish`], with the message's position in the router's log of the filter it
/// matched (`(segment, absolute offset)`, the offset contiguous per filter).
pub fn next_forward(
    link: &mut LinkRx,
    timeout: std::time::Duration,
) -> Result<Option<rumqttd::Forward>, LinkClosed> {
    use rumqttd::local::LinkError;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match link.recv_deadline(deadline) {
            Ok(Some(rumqttd::Notification::Forward(f))) => return Ok(Some(f)),
            Ok(Some(rumqttd::Notification::Unschedule)) => {
                link.ready().map_err(|e| LinkClosed(e.to_string()))?
            }
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(LinkError::RecvTimeout(flume::RecvTimeoutError::Timeout)) => return Ok(None),
            Err(e) => return Err(LinkClosed(e.to_string())),
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
    }
}

/// Decides whether a CONNECT may go on: `(client_id, username, password) -> allowed`.
pub type AuthFn = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

type LinkFn = Box<dyn Fn(&str) -> Result<(LinkTx, LinkRx), String> + Send + Sync>;

/// A running plane.
pub struct Plane {
    name: &'static str,
    listen: SocketAddr,
    new_link: LinkFn,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Plane {
    /// Starts the router, its internal listener and the public front door. Binding is checked
    /// before this returns.
    pub fn start(settings: PlaneSettings, auth: AuthFn) -> Result<Self, PlaneError> {
        let name = settings.name;
        let bind_error = |addr: SocketAddr| {
            move |source| PlaneError::Bind {
                plane: name,
                addr,
                source,
            }
        };
        // The public listener is ours (the front door), bound here: a taken port is an error
        // now, and port 0 can be read back.
        let public =
            std::net::TcpListener::bind(settings.listen).map_err(bind_error(settings.listen))?;
        public
            .set_nonblocking(true)
            .map_err(bind_error(settings.listen))?;
        let listen = public.local_addr().map_err(bind_error(settings.listen))?;
        // rumqttd binds its own listener and cannot report the port: pick a free loopback one.
        let internal = {
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let probe = std::net::TcpListener::bind(any).map_err(bind_error(any))?;
            probe.local_addr().map_err(bind_error(any))?
        };

        let router = rumqttd::Router::new(
            0,
            RouterConfig {
                max_connections: settings.max_connections,
                max_outgoing_packet_count: 200,
                max_segment_size: settings.segment_size,
                max_segment_count: settings.segment_count,
                custom_segment: Some(
                    [
                        "pairbus/v1/in/device/+",
                        "pairbus/v1/in/operator/+",
                        "pairbus/v1/in/factory/+",
                    ]
                    .into_iter()
                    .map(|filter| {
                        (
                            filter.to_owned(),
                            rumqttd::SegmentConfig {
                                max_segment_size: settings.segment_size,
                                max_segment_count: settings.ingest_segment_count,
                            },
                        )
                    })
                    .collect(),
                ),
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
        );
        let router_tx = router.spawn();

        let mut connections = ConnectionSettings {
            connection_timeout_ms: settings.connect_timeout_ms,
            max_payload_size: settings.max_payload,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        };
        connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
            let allowed = auth(&client_id, &user, &pass);
            async move { allowed }
        });
        let server_settings = ServerSettings {
            name: format!("{name}-plane"),
            listen: internal,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("pairbus-{name}-mqtt"))
            .enable_all()
            .build()
            .map_err(|e| PlaneError::Runtime(name, e))?;
        let mut server = Server::new(server_settings, router_tx.clone(), V4);
        runtime.spawn(async move {
            if let Err(e) = server.start(LinkType::Remote).await {
                tracing::error!(plane = name, error = %e, "MQTT listener stopped");
            }
        });
        // rumqttd leaves Nagle on for accepted sockets: confirmations would wait for the
        // front door's delayed ACK. Set TCP_NODELAY on its listener, which they inherit; this
        // also waits until rumqttd has bound its port.
        match super::nodelay::on_listener(internal, std::time::Duration::from_secs(5)) {
            Ok(()) => {}
            Err(super::nodelay::NodelayError::NotFound(addr)) => {
                return Err(PlaneError::Bind {
                    plane: name,
                    addr,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "the MQTT router did not start listening on its internal port",
                    ),
                })
            }
            Err(e) => {
                tracing::warn!(plane = name, error = %e, "TCP_NODELAY not set: confirmations may wait for delayed ACKs")
            }
        }
        let door = FrontDoor {
            plane: name,
            upstream: internal,
            gate: settings.gate.clone(),
            open: settings.open_connections.clone(),
        };
        let public = {
            let _rt = runtime.enter();
            tokio::net::TcpListener::from_std(public).map_err(bind_error(listen))?
        };
        runtime.spawn(door.serve(public));
        let new_link: LinkFn = Box::new(move |client_id: &str| {
            rumqttd::local::LinkBuilder::new(client_id, router_tx.clone())
                .dynamic_filters(true)
                .build()
                .map(|(tx, rx, _ack)| (tx, rx))
                .map_err(|e| e.to_string())
        });
        tracing::info!(plane = name, %listen, %internal, "MQTT plane listening");
        Ok(Plane {
            name,
            listen,
            new_link,
            runtime: Some(runtime),
        })
    }

    /// The address the listener is bound to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// A new local link (the broker's own client inside the router).
    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), PlaneError> {
        (self.new_link)(client_id).map_err(|reason| PlaneError::Link {
            plane: self.name,
            client_id: client_id.to_owned(),
            reason,
        })
    }

    /// Stops the listener and frees the port. Connected clients are dropped. (The router
    /// thread of rumqttd 0.20 cannot be stopped; it idles until the process exits.)
    pub fn shutdown(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
