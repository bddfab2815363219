//! The front door of a plane: the public TCP listener, relaying each client's bytes to the
//! plane's rumqttd listener on an internal loopback port.
//!
//! Why it exists: rumqttd reads from its sockets as fast as it can and acknowledges a publish
//! before ingest has stored it, with no hook to slow a client down (see [`super::gate`]). The
//! front door is where the broker can: before each read from a client it waits for the
//! [`Gate`] to be open, so when ingest falls behind, clients' bytes wait in their own socket
//! buffers (TCP flow control) instead of in rumqttd's memory, where they would be dropped.
//! It does not parse MQTT: it moves bytes, unchanged, in both directions.
//!
//! It also owns what rumqttd does not give: the bound address can be read back (port 0 works),
//! `TCP_NODELAY` is set on both legs, every connection has a tracing span with the client's
//! address (rumqttd only sees the front door's), and open connections are counted.
//!
//! Invariants: bytes from a client reach rumqttd in order and unchanged; when either side
//! closes, the other is closed too (a client that vanishes is seen by rumqttd as a closed
//! connection, so its last will fires).

use super::gate::{Gate, GateWaiter};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Bytes read from a client at most per read (the gate is checked between reads).
const READ_CHUNK: usize = 16 * 1024;

/// How long the front door waits for rumqttd to close its side after the client closed.
const DRAIN: Duration = Duration::from_secs(5);

/// What a front door needs.
#[derive(Clone)]
pub struct FrontDoor {
    /// `device` or `operator` (logs).
    pub plane: &'static str,
    /// Where rumqttd listens (loopback).
    pub upstream: SocketAddr,
    /// Back-pressure from ingest; `None` reads freely.
    pub gate: Option<Gate>,
    /// Connections open now (a gauge).
    pub open: Arc<AtomicU64>,
}

impl FrontDoor {
    /// Accepts connections on `listener` until the runtime stops.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((client, peer)) => {
                    let door = self.clone();
                    let span = tracing::info_span!("connection", plane = self.plane, %peer);
                    tokio::spawn(door.relay(client).instrument(span));
                }
                Err(e) => {
                    // Out of descriptors and the like: say so, and do not spin.
                    tracing::warn!(plane = self.plane, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn relay(self, client: TcpStream) {
        let upstream = match TcpStream::connect(self.upstream).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(upstream = %self.upstream, error = %e, "cannot reach the MQTT router's listener; closing the client");
                return;
            }
        };
        for s in [&client, &upstream] {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("open");
        let (client_rd, client_wr) = client.into_split();
        let (up_rd, up_wr) = upstream.into_split();
        let waiter = self.gate.as_ref().map(Gate::waiter);
        let inbound = inbound(client_rd, up_wr, waiter);
        let outbound = outbound(up_rd, client_wr);
        tokio::pin!(inbound, outbound);
        let why = tokio::select! {
            r = &mut outbound => r,
            r = &mut inbound => match r {
                // The client is done sending: let rumqttd answer and close (bounded wait).
                Ok(()) => tokio::time::timeout(DRAIN, outbound)
                    .await
                    .unwrap_or(Ok(())),
                Err(e) => Err(e),
            },
        };
        self.open.fetch_sub(1, Ordering::Relaxed);
        match why {
            Ok(()) => tracing::debug!("closed"),
            Err(e) => tracing::debug!(error = %e, "closed"),
        }
    }
}

/// Client → rumqttd, one chunk at a time, each read only while the gate is open. Ends when
/// the client closes its side (then rumqttd's side is shut down too).
async fn inbound(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: Option<GateWaiter>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if let Some(g) = gate.as_mut() {
            g.open().await;
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// rumqttd → client until rumqttd closes.
async fn outbound(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    tokio::io::copy(&mut from, &mut to).await?;
    let _ = to.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server standing in for rumqttd.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn door(gate: Option<Gate>) -> (SocketAddr, Arc<AtomicU64>) {
        let upstream = echo().await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = Arc::new(AtomicU64::new(0));
        let d = FrontDoor {
            plane: "test",
            upstream,
            gate,
            open: open.clone(),
        };
        tokio::spawn(d.serve(l));
        (addr, open)
    }

    #[tokio::test]
    async fn relays_bytes_unchanged_both_ways_and_counts_connections() {
        let (addr, open) = door(None).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let (_, n) = tokio::join!(send, recv);
        n.unwrap();
        assert_eq!(back, data, "every byte back, in order");
        // The echo server closed after our shutdown; the door closes and counts down.
        for _ in 0..100 {
            if open.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the connection was never counted as closed");
    }

    #[tokio::test]
    async fn a_closed_gate_holds_client_bytes_until_it_opens() {
        let gate = Gate::new(1, 0);
        gate.admitted(1); // closed
        let (addr, _) = door(Some(gate.clone())).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        let early = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut buf)).await;
        assert!(early.is_err(), "nothing may pass a closed gate");
        gate.settled(1);
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("relayed once open")
            .unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn an_unreachable_router_closes_the_client() {
        // A port with nothing behind it.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let d = FrontDoor {
            plane: "test",
            upstream: dead,
            gate: None,
            open: Arc::default(),
        };
        tokio::spawn(d.serve(l));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
            .await
            .expect("closed promptly");
        assert!(n.is_err() || buf.is_empty());
    }
}
