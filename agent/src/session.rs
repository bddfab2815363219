//! The MQTT session (rumqttc): the imperative shell around the outbox and the device logic.
//!
//! - connects with username = kid and a fresh [`pairbus_schemas::Key::mint_token`] at every (re)connect, valid
//!   for [`SessionOptions::token_ttl_secs`]; a device's client id is its kid;
//! - on every CONNACK subscribes to its `committed/` and `rejected/` topics (and a device to
//!   its `cmd/` topic); on the SUBACK publishes its presence card (retained; the last will is
//!   the `offline` card) and (re-)sends every pending event in seq order;
//! - re-sends events not confirmed after [`SessionOptions::resend_after`];
//! - removes an event from the outbox only on a `committed/` message for its id; a
//!   `rejected/` message naming an event moves it aside with the reason;
//! - feeds relayed events to [`device::react`] and enqueues what it decides, with the new
//!   device state, in one outbox transaction.
//!
//! rumqttc gives no per-publish acknowledgement and forgets in-flight publishes on a clean
//! reconnect, and a broker PUBACK is not durability: the `committed/` confirmation is the only
//! proof, hence the outbox and the re-sends. The broker deduplicates by event id.

use crate::device::{self, CommandHandler, DeviceState, LocalCommand, Reaction, STATE_KEY};
use crate::draft::Draft;
use crate::error::AgentError;
use crate::outbox::{resend_due, Outbox};
use crate::relayed::parse_relayed;
use crate::sys;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::ids::{DeviceId, EventId, PrincipalKind};
use pairbus_schemas::messages::{CommitStatus, Committed, Rejection};
use pairbus_schemas::{Event, Topic};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet,
    QoS,
};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a stopping device (shutdown, revocation) waits for its last confirmations.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Largest MQTT packet sent or accepted (events are at most 64 KiB).
pub const MAX_PACKET: usize = 256 * 1024;

/// How a session behaves.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Re-send an unconfirmed event after this long.
    pub resend_after: Duration,
    /// Lifetime of each MQTT token (the broker refuses more than 24 h).
    pub token_ttl_secs: u64,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Delay before reconnecting (doubles up to 5 s while the broker stays away).
    pub reconnect_delay: Duration,
    /// Stop as soon as the outbox is empty (one-shot delivery by `send`, `make`, …).
    pub until_empty: bool,
    /// Give up after this long (one-shot delivery).
    pub deadline: Option<Duration>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            resend_after: Duration::from_secs(10),
            token_ttl_secs: 600,
            keep_alive: Duration::from_secs(15),
            reconnect_delay: Duration::from_millis(200),
            until_empty: false,
            deadline: None,
        }
    }
}

/// A device command handed to a running session (from the control socket).
#[derive(Debug)]
pub struct ControlRequest {
    /// The command.
    pub cmd: LocalCommand,
    /// Where to answer: the events enqueued, or why not.
    pub reply: oneshot::Sender<Result<Vec<Event>, String>>,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The outbox is empty (one-shot delivery).
    Delivered,
    /// The deadline passed with events still pending.
    Deadline,
    /// The shutdown signal fired.
    Shutdown,
    /// The device ran `shutdown` or was revoked.
    DeviceStop(String),
}

/// What a session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// Why it ended.
    pub reason: StopReason,
    /// Confirmations received for pending events.
    pub confirmed: usize,
    /// Events the broker refused.
    pub refused: usize,
    /// Events still pending at the end.
    pub pending: usize,
}

/// The presence card published (retained) on `presence/<device_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceCard {
    /// The device.
    pub device: String,
    /// `online` or `offline`.
    pub status: &'static str,
    /// Since when, Unix ms (absent in the last will).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Agent name and version.
    pub agent: &'static str,
    /// Set up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configured: Option<bool>,
    /// Standalone mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standalone: Option<bool>,
    /// Its manager.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// The devices it manages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensors: Option<Vec<String>>,
    /// Events waiting for confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_events: Option<usize>,
}

const AGENT: &str = concat!("pairbus-agent/", env!("CARGO_PKG_VERSION"));

impl PresenceCard {
    /// The online card for a device in `state`.
    pub fn online(device: &DeviceId, state: &DeviceState, since: u64, pending: usize) -> Self {
        PresenceCard {
            device: device.to_string(),
            status: "online",
            since: Some(since),
            agent: AGENT,
            configured: Some(state.configured),
            standalone: Some(state.standalone),
            manager: state.manager.clone(),
            sensors: Some(state.sensors.iter().cloned().collect()),
            pending_events: Some(pending),
        }
    }

    /// The offline card (the last will).
    pub fn offline(device: &DeviceId) -> Self {
        PresenceCard {
            device: device.to_string(),
            status: "offline",
            since: None,
            agent: AGENT,
            configured: None,
            standalone: None,
            manager: None,
            sensors: None,
            pending_events: None,
        }
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Splits `host:port`.
pub fn parse_broker(addr: &str) -> Result<(String, u16), AgentError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| AgentError::Invalid(format!("broker `{addr}`: expected host:port")))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| AgentError::Invalid(format!("broker `{addr}`: bad port")))?;
    if host.is_empty() {
        return Err(AgentError::Invalid(format!("broker `{addr}`: empty host")));
    }
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

/// Loads the device state from the outbox.
pub fn load_state(outbox: &Outbox) -> Result<DeviceState, AgentError> {
    Ok(outbox
        .state_get::<DeviceState>(STATE_KEY)?
        .unwrap_or_default())
}

fn state_bytes(state: &DeviceState) -> Result<Vec<u8>, AgentError> {
    serde_json::to_vec(state).map_err(|e| AgentError::Corrupt(e.to_string()))
}

/// Runs a device's own command against its state and enqueues what it produces, with the new
/// state, in one transaction.
pub fn enqueue_local(
    outbox: &Outbox,
    identity: &Identity,
    cmd: LocalCommand,
) -> Result<Vec<Event>, AgentError> {
    let me = identity
        .kid
        .device_id()
        .ok_or_else(|| AgentError::Invalid("only a device identity runs device commands".into()))?;
    let mut state = load_state(outbox)?;
    let drafts = device::local(&mut state, &me, cmd)?;
    let bytes = state_bytes(&state)?;
    outbox.enqueue(
        identity,
        drafts,
        &[(STATE_KEY, Some(bytes))],
        sys::now_ms(),
        sys::random,
    )
}

/// Enqueues drafts without state changes (operators, factory stations).
pub fn enqueue(
    outbox: &Outbox,
    identity: &Identity,
    drafts: Vec<Draft>,
) -> Result<Vec<Event>, AgentError> {
    outbox.enqueue(identity, drafts, &[], sys::now_ms(), sys::random)
}

enum Net {
    Ev(MqttEvent),
    Down(String),
    Closed,
}

/// One principal's MQTT session over its outbox.
pub struct Session {
    identity: Identity,
    outbox: Outbox,
    opts: SessionOptions,
    handler: Box<dyn CommandHandler>,
}

struct Live {
    client: AsyncClient,
    ready: bool,
    sent_at: HashMap<u64, Instant>,
    confirmed: usize,
    refused: usize,
    /// Why the device is stopping, and since when (it stops once its last events are
    /// confirmed, or after [`STOP_GRACE`]).
    stopping: Option<(String, Instant)>,
    since: u64,
    warned_down: bool,
}

impl Session {
    /// A session for `identity` over `outbox`; a device runs commands with `handler`.
    pub fn new(
        identity: Identity,
        outbox: Outbox,
        opts: SessionOptions,
        handler: Box<dyn CommandHandler>,
    ) -> Self {
        Session {
            identity,
            outbox,
            opts,
            handler,
        }
    }

    fn device(&self) -> Option<DeviceId> {
        self.identity.kid.device_id()
    }

    fn mqtt_options(&self) -> Result<MqttOptions, AgentError> {
        let (host, port) = parse_broker(&self.identity.broker)?;
        let kid = self.identity.kid.to_string();
        let client_id = match self.identity.kid.kind() {
            PrincipalKind::Device => kid.clone(),
            _ => format!("{kid}-{}", hex::encode(sys::random::<4>())),
        };
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_keep_alive(self.opts.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_credentials(kid, self.token());
        if let Some(d) = self.device() {
            o.set_last_will(LastWill::new(
                Topic::Presence(d.clone()).to_string(),
                PresenceCard::offline(&d).to_json(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        Ok(o)
    }

    fn token(&self) -> String {
        self.identity.key.mint_token(
            &self.identity.kid,
            sys::now_secs() + self.opts.token_ttl_secs,
        )
    }

    /// Runs until `shutdown` resolves, the device stops, or (one-shot) the outbox is empty or
    /// the deadline passes. `control` brings device commands from the control socket.
    #[tracing::instrument(name = "session", skip_all, fields(kid = %self.identity.kid, broker = %self.identity.broker))]
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<ControlRequest>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<SessionReport, AgentError> {
        if self.opts.until_empty && self.outbox.pending_len() == 0 {
            return Ok(self.report(StopReason::Delivered, 0, 0));
        }
        let opts = self.mqtt_options()?;
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (net_tx, mut net_rx) = mpsc::unbounded_channel();
        let (kid, key, ttl, base_delay) = (
            self.identity.kid.clone(),
            self.identity.key.clone(),
            self.opts.token_ttl_secs,
            self.opts.reconnect_delay,
        );
        let driver = tokio::spawn(async move {
            let mut delay = base_delay;
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                        let _ = net_tx.send(Net::Closed);
                        break;
                    }
                    Ok(ev) => {
                        if matches!(ev, MqttEvent::Incoming(Packet::ConnAck(_))) {
                            delay = base_delay;
                        }
                        if net_tx.send(Net::Ev(ev)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if net_tx.send(Net::Down(e.to_string())).is_err() {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        // A fresh token at every connect.
                        let token = key.mint_token(&kid, sys::now_secs() + ttl);
                        eventloop
                            .mqtt_options
                            .set_credentials(kid.to_string(), token);
                    }
                }
            }
        });
        let mut live = Live {
            client,
            ready: false,
            sent_at: HashMap::new(),
            confirmed: 0,
            refused: 0,
            stopping: None,
            since: sys::now_ms(),
            warned_down: false,
        };
        let deadline = self.opts.deadline.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tokio::pin!(shutdown);
        let mut control_open = true;
        let reason = loop {
            tokio::select! {
                net = net_rx.recv() => match net {
                    Some(Net::Ev(ev)) => {
                        if let Some(stop) = self.on_event(&mut live, ev).await? {
                            break stop;
                        }
                    }
                    Some(Net::Down(e)) => {
                        if live.ready {
                            tracing::warn!(error = %e, "connection lost; reconnecting");
                        } else if !live.warned_down {
                            tracing::warn!(error = %e, "broker unreachable; retrying (events stay queued)");
                        } else {
                            tracing::debug!(error = %e, "cannot connect yet; retrying");
                        }
                        live.warned_down = true;
                        live.ready = false;
                        live.sent_at.clear();
                    }
                    Some(Net::Closed) | None => break StopReason::Shutdown,
                },
                req = control.recv(), if control_open && self.device().is_some() => {
                    match req {
                        Some(req) => {
                            let res = enqueue_local(&self.outbox, &self.identity, req.cmd);
                            let ok = res.is_ok();
                            let _ = req.reply.send(res.map_err(|e| e.to_string()));
                            if ok && live.ready {
                                self.publish_presence(&mut live).await?;
                                self.publish_due(&mut live).await?;
                            }
                        }
                        // Every sender is gone (no control socket): stop polling the channel.
                        None => control_open = false,
                    }
                }
                _ = tick.tick() => {
                    if live.ready {
                        self.publish_due(&mut live).await?;
                    }
                    if let Some((why, since)) = &live.stopping {
                        if since.elapsed() >= STOP_GRACE {
                            tracing::warn!(pending = self.outbox.pending_len(), "stopping with events still queued");
                            break StopReason::DeviceStop(why.clone());
                        }
                    }
                    if let Some(d) = deadline {
                        if tokio::time::Instant::now() >= d {
                            break StopReason::Deadline;
                        }
                    }
                }
                _ = &mut shutdown => break StopReason::Shutdown,
            }
        };
        self.close(&mut live, &mut net_rx).await;
        driver.abort();
        self.outbox.flush()?;
        Ok(self.report(reason, live.confirmed, live.refused))
    }

    fn report(&self, reason: StopReason, confirmed: usize, refused: usize) -> SessionReport {
        SessionReport {
            reason,
            confirmed,
            refused,
            pending: self.outbox.pending_len(),
        }
    }

    async fn close(&mut self, live: &mut Live, net_rx: &mut mpsc::UnboundedReceiver<Net>) {
        if live.ready {
            if let Some(d) = self.device() {
                let _ = live
                    .client
                    .publish(
                        Topic::Presence(d.clone()).to_string(),
                        QoS::AtLeastOnce,
                        true,
                        PresenceCard::offline(&d).to_json(),
                    )
                    .await;
            }
            let _ = live.client.disconnect().await;
            // Let the eventloop write the offline card and the DISCONNECT.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(n) = net_rx.recv().await {
                    if matches!(n, Net::Closed | Net::Down(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn on_event(
        &mut self,
        live: &mut Live,
        ev: MqttEvent,
    ) -> Result<Option<StopReason>, AgentError> {
        match ev {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    tracing::error!(code = ?ack.code, "broker refused the connection");
                    return Ok(None);
                }
                tracing::info!("connected");
                live.warned_down = false;
                let kid = &self.identity.kid;
                let mut subs = vec![
                    rumqttc::SubscribeFilter::new(
                        Topic::Committed(kid.clone()).to_string(),
                        QoS::AtLeastOnce,
                    ),
                    rumqttc::SubscribeFilter::new(
                        Topic::Rejected(kid.clone()).to_string(),
                        QoS::AtLeastOnce,
                    ),
                ];
                if let Some(d) = self.device() {
                    if !self.opts.until_empty {
                        subs.push(rumqttc::SubscribeFilter::new(
                            Topic::Cmd(d).to_string(),
                            QoS::AtLeastOnce,
                        ));
                    }
                }
                live.client
                    .subscribe_many(subs)
                    .await
                    .map_err(|e| AgentError::Mqtt(e.to_string()))?;
            }
            MqttEvent::Incoming(Packet::SubAck(_)) => {
                live.ready = true;
                live.sent_at.clear();
                self.publish_presence(live).await?;
                self.publish_due(live).await?;
            }
            MqttEvent::Incoming(Packet::Publish(p)) => {
                return self.on_publish(live, &p.topic, &p.payload).await;
            }
            _ => {}
        }
        Ok(None)
    }

    async fn on_publish(
        &mut self,
        live: &mut Live,
        topic: &str,
        payload: &[u8],
    ) -> Result<Option<StopReason>, AgentError> {
        let kid = &self.identity.kid;
        match Topic::parse(topic) {
            Ok(Topic::Committed(k)) if &k == kid => match Committed::decode(payload) {
                Ok(c) => {
                    if let Some(seq) = self.outbox.confirm(&c.id)? {
                        live.sent_at.remove(&seq);
                        live.confirmed += 1;
                        let status = match c.status {
                            CommitStatus::Committed => "committed",
                            CommitStatus::AlreadyCommitted => "already_committed",
                        };
                        tracing::info!(id = %c.id, seq, log_seq = c.seq, status, "confirmed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable confirmation ignored"),
            },
            Ok(Topic::Rejected(k)) if &k == kid => {
                match serde_json::from_slice::<Rejection>(payload) {
                    Ok(r) => {
                        let id = r.event_id.as_deref().and_then(EventId::parse);
                        match id {
                            Some(id) => {
                                if let Some(seq) =
                                    self.outbox.refuse(&id, r.reason.as_str(), &r.detail)?
                                {
                                    live.sent_at.remove(&seq);
                                    live.refused += 1;
                                    tracing::error!(%id, seq, reason = %r.reason, detail = %r.detail, "event refused by the broker; moved aside");
                                }
                            }
                            None => {
                                tracing::error!(reason = %r.reason, detail = %r.detail, "broker refused a message")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable rejection ignored"),
                }
            }
            Ok(Topic::Cmd(d)) if Some(&d) == self.device().as_ref() => {
                self.on_relayed(live, payload).await?;
            }
            _ => tracing::debug!(topic, "message on an unexpected topic ignored"),
        }
        if let Some((why, _)) = &live.stopping {
            if self.outbox.pending_len() == 0 {
                return Ok(Some(StopReason::DeviceStop(why.clone())));
            }
        }
        if self.opts.until_empty && self.outbox.pending_len() == 0 {
            return Ok(Some(StopReason::Delivered));
        }
        Ok(None)
    }

    async fn on_relayed(&mut self, live: &mut Live, payload: &[u8]) -> Result<(), AgentError> {
        let Some(me) = self.device() else {
            return Ok(());
        };
        let ev = match parse_relayed(payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable relayed event ignored");
                return Ok(());
            }
        };
        let mut state = load_state(&self.outbox)?;
        let now = sys::now_ms();
        state.prune(now);
        let r: Reaction = device::react(
            &mut state,
            &me,
            &ev,
            now,
            sys::random(),
            self.handler.as_mut(),
        );
        let span =
            tracing::info_span!("relayed", id = %ev.id, r#type = %ev.event_type(), from = %ev.src);
        let _g = span.enter();
        match &r.refused {
            Some(_) => tracing::warn!("{}", r.note),
            None => tracing::info!("{}", r.note),
        }
        let bytes = state_bytes(&state)?;
        self.outbox.enqueue(
            &self.identity,
            r.publish,
            &[(STATE_KEY, Some(bytes))],
            now,
            sys::random,
        )?;
        if r.stop {
            live.stopping = Some((r.note.clone(), Instant::now()));
        }
        drop(_g);
        if live.ready {
            self.publish_presence(live).await?;
            self.publish_due(live).await?;
        }
        Ok(())
    }

    /// Publishes the retained online card (a running device only), on connect and after
    /// every relayed event, so that operators see pairings without scanning.
    async fn publish_presence(&mut self, live: &mut Live) -> Result<(), AgentError> {
        if let (Some(d), false) = (self.device(), self.opts.until_empty) {
            let state = load_state(&self.outbox)?;
            let card = PresenceCard::online(&d, &state, live.since, self.outbox.pending_len());
            live.client
                .publish(
                    Topic::Presence(d).to_string(),
                    QoS::AtLeastOnce,
                    true,
                    card.to_json(),
                )
                .await
                .map_err(|e| AgentError::Mqtt(e.to_string()))?;
        }
        Ok(())
    }

    async fn publish_due(&mut self, live: &mut Live) -> Result<(), AgentError> {
        let now = Instant::now();
        let n = self.outbox.pending_len();
        let any_due = n > live.sent_at.len()
            || live
                .sent_at
                .values()
                .any(|t| now.saturating_duration_since(*t) >= self.opts.resend_after);
        if !any_due {
            return Ok(());
        }
        let pending = self.outbox.pending()?;
        let seqs: Vec<u64> = pending.iter().map(|p| p.seq).collect();
        live.sent_at.retain(|s, _| seqs.contains(s));
        let due = resend_due(&seqs, &live.sent_at, now, self.opts.resend_after);
        let topic = Topic::In(self.identity.kid.clone()).to_string();
        for p in pending.into_iter().filter(|p| due.contains(&p.seq)) {
            let again = live.sent_at.contains_key(&p.seq);
            tracing::debug!(id = %p.id, seq = p.seq, again, "publishing");
            live.client
                .publish(topic.clone(), QoS::AtLeastOnce, false, p.cose)
                .await
                .map_err(|e| AgentError::Mqtt(e.to_string()))?;
            live.sent_at.insert(p.seq, now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(parse_broker("[::1]:1884").unwrap(), ("::1".into(), 1884));
        assert!(parse_broker("nohost").is_err());
        assert!(parse_broker(":1").is_err());
        assert!(parse_broker("h:99999").is_err());
    }

    #[test]
    fn presence_cards() {
        let d = DeviceId::parse("0123456789abcdef").unwrap();
        let off = PresenceCard::offline(&d).to_json();
        assert!(
            off.contains(r#""status":"offline""#) && !off.contains("since"),
            "{off}"
        );
        let on = PresenceCard::online(&d, &DeviceState::default(), 5, 2).to_json();
        assert!(on.contains(r#""pending_events":2"#), "{on}");
    }
}
