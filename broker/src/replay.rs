//! The replay service on the operator plane: a JSON request on `pairbus/v1/replay/request`
//! is answered on `pairbus/v1/replay/reply/<request_id>` with the matching log records (CBOR,
//! in seq order), then the end marker `{"end": true, "count": n}`.
//!
//! One reply carries at most [`MAX_REPLY_RECORDS`] records (MQTT QoS 0 towards a subscriber
//! that lags would otherwise lose the tail); a client that receives that many asks again from
//! the last seq + 1. A request that cannot be parsed is answered with an end marker of count 0
//! when its `request_id` can be read, and counted either way.

use crate::log::LogStore;
use crate::metrics::Metrics;
use crate::mqtt::plane::{next_publish, Plane, PlaneError};
use crate::worker::Worker;
use pairbus_schemas::messages::{ReplayEnd, ReplayRequest};
use pairbus_schemas::{open_event, DeviceId, EventType, Record, RootSecret, Topic, MAX_EVENT_SIZE};
use rumqttd::local::{LinkRx, LinkTx};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most records in one reply.
pub const MAX_REPLY_RECORDS: u64 = 10_000;
/// Largest request accepted, bytes.
pub const MAX_REQUEST_SIZE: usize = 4096;

/// A request checked and ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Where to answer.
    pub reply_topic: String,
    /// Seqs to scan (already clamped to the head).
    pub seqs: Range<u64>,
    /// Only this device's records.
    pub device: Option<DeviceId>,
    /// Only these event types.
    pub types: Option<Vec<EventType>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay request refused: {0}")]
pub struct BadRequest(pub String);

/// Parses and checks a request against the current head (pure).
pub fn plan(payload: &[u8], head: u64) -> Result<Plan, (Option<String>, BadRequest)> {
    let bad = |id: Option<String>, why: String| Err((id, BadRequest(why)));
    if payload.len() > MAX_REQUEST_SIZE {
        return bad(None, format!("over {MAX_REQUEST_SIZE} bytes"));
    }
    let req: ReplayRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            // Try to learn where to answer even when the rest is wrong.
            let id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("request_id")?.as_str().map(str::to_owned))
                .filter(|id| Topic::replay_reply(id).is_ok());
            return bad(id, format!("not a replay request: {e}"));
        }
    };
    let reply_topic = match Topic::replay_reply(&req.request_id) {
        Ok(t) => t.to_string(),
        Err(e) => return bad(None, e.to_string()),
    };
    let id = Some(req.request_id.clone());
    if req.from_seq == 0 {
        return bad(id, "from_seq starts at 1".into());
    }
    if let Some(to) = req.to_seq {
        if to < req.from_seq {
            return bad(
                id,
                format!("to_seq {to} is before from_seq {}", req.from_seq),
            );
        }
    }
    let device = match req.device.as_deref().map(DeviceId::parse).transpose() {
        Ok(d) => d,
        Err(e) => return bad(id, e.to_string()),
    };
    let types = match req.types.as_ref().map(|ts| {
        ts.iter()
            .map(|t| EventType::parse(t).ok_or_else(|| format!("unknown event type `{t}`")))
            .collect::<Result<Vec<_>, _>>()
    }) {
        Some(Err(e)) => return bad(id, e),
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let last = req.to_seq.unwrap_or(u64::MAX).min(head);
    let seqs = req.from_seq..last.saturating_add(1).max(req.from_seq);
    Ok(Plan {
        reply_topic,
        seqs,
        device,
        types,
    })
}

/// The running service.
pub struct Replay {
    worker: Worker,
}

impl Replay {
    /// Subscribes to the request topic on the operator plane and starts the worker thread.
    pub fn start(
        operator: &Plane,
        log: Arc<dyn LogStore>,
        root: RootSecret,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PlaneError> {
        let (mut tx, rx) = operator.link("pairbus-replay")?;
        tx.subscribe(Topic::ReplayRequest.to_string())
            .map_err(|e| PlaneError::Link {
                plane: "operator",
                client_id: "pairbus-replay".into(),
                reason: e.to_string(),
            })?;
        let worker = Worker::spawn("pairbus-replay", move |stop| {
            run(tx, rx, log, root, metrics, stop)
        })
        .map_err(|e| PlaneError::Runtime("replay", e))?;
        Ok(Replay { worker })
    }

    /// Stops the worker after the reply in progress.
    pub fn stop(self) {
        self.worker.stop();
    }
}

fn run(
    mut tx: LinkTx,
    mut rx: LinkRx,
    log: Arc<dyn LogStore>,
    root: RootSecret,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match next_publish(&mut rx, Duration::from_millis(100)) {
            Ok(Some(publish)) => {
                let head = log.head().seq;
                match plan(&publish.payload, head) {
                    Ok(p) => {
                        let _span = tracing::info_span!("replay", topic = %p.reply_topic).entered();
                        match answer(&mut tx, &*log, &root, &p) {
                            Ok(n) => tracing::info!(records = n, "replay answered"),
                            Err(e) => tracing::error!(error = %e, "replay failed"),
                        }
                        metrics.replays.fetch_add(1, Ordering::Relaxed);
                    }
                    Err((id, e)) => {
                        metrics.replays_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "replay request refused");
                        if let Some(topic) = id.and_then(|id| Topic::replay_reply(&id).ok()) {
                            let _ = tx.publish(topic.to_string(), ReplayEnd { count: 0 }.encode());
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "replay link closed");
                return;
            }
        }
    }
}

fn matches(plan: &Plan, root: &RootSecret, r: &Record) -> bool {
    match &plan.types {
        None => true,
        // Records in the log were verified at ingest; re-opening also re-checks the MAC.
        Some(types) => open_event(&r.event, MAX_EVENT_SIZE, |k| Some(root.derive(k)))
            .map(|e| types.contains(&e.event_type()))
            .unwrap_or(false),
    }
}

fn answer(
    tx: &mut LinkTx,
    log: &dyn LogStore,
    root: &RootSecret,
    plan: &Plan,
) -> Result<u64, crate::log::LogError> {
    const CHUNK: u64 = 1000;
    let mut count = 0;
    let mut next = plan.seqs.start;
    while next < plan.seqs.end && count < MAX_REPLY_RECORDS {
        let end = (next + CHUNK).min(plan.seqs.end);
        let records = match &plan.device {
            Some(d) => log.by_device(d, next..end)?,
            None => log.range(next..end)?,
        };
        for r in records.iter().filter(|r| matches(plan, root, r)) {
            if count == MAX_REPLY_RECORDS {
                break;
            }
            if tx.publish(plan.reply_topic.clone(), r.encode()).is_err() {
                return Ok(count);
            }
            count += 1;
        }
        next = end;
    }
    let _ = tx.publish(plan.reply_topic.clone(), ReplayEnd { count }.encode());
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str, head: u64) -> Result<Plan, (Option<String>, BadRequest)> {
        plan(json.as_bytes(), head)
    }

    #[test]
    fn requests_are_clamped_to_the_head() {
        let plan = p(r#"{"request_id":"r1","from_seq":5}"#, 100).unwrap();
        assert_eq!(plan.reply_topic, "pairbus/v1/replay/reply/r1");
        assert_eq!(plan.seqs, 5..101);
        let plan = p(r#"{"request_id":"r1","from_seq":5,"to_seq":7}"#, 100).unwrap();
        assert_eq!(plan.seqs, 5..8);
        let plan = p(r#"{"request_id":"r1","from_seq":500}"#, 100).unwrap();
        assert!(plan.seqs.is_empty());
        let plan = p(
            r#"{"request_id":"r1","from_seq":1,"device":"0123456789abcdef","types":["device.action"]}"#,
            10,
        )
        .unwrap();
        assert_eq!(plan.types, Some(vec![EventType::Action]));
        assert_eq!(plan.device.unwrap().as_str(), "0123456789abcdef");
    }

    #[test]
    fn bad_requests_say_why_and_where_to_answer() {
        let (id, e) = p(r#"{"request_id":"r2","from_seq":0}"#, 10).unwrap_err();
        assert_eq!(id.as_deref(), Some("r2"));
        assert!(e.0.contains("from_seq"));
        let (id, _) = p(r#"{"request_id":"r3","from_seq":1,"types":["nope"]}"#, 10).unwrap_err();
        assert_eq!(id.as_deref(), Some("r3"));
        let (id, _) = p(r#"{"request_id":"r4","from_seq":"x"}"#, 10).unwrap_err();
        assert_eq!(id.as_deref(), Some("r4"));
        let (id, _) = p(r#"{"request_id":"a/b","from_seq":1}"#, 10).unwrap_err();
        assert_eq!(id, None);
        let (id, _) = p("not json", 10).unwrap_err();
        assert_eq!(id, None);
        let (_, e) = p(&"x".repeat(MAX_REQUEST_SIZE + 1), 10).unwrap_err();
        assert!(e.0.contains("bytes"));
        assert!(p(r#"{"request_id":"r5","from_seq":3,"to_seq":2}"#, 10).is_err());
        assert!(p(r#"{"request_id":"r6","from_seq":1,"device":"XYZ"}"#, 10).is_err());
    }
}
