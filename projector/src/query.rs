//! The read side: queries over projections, shared by the offline CLI and the broker's HTTP API.
//!
//! A [`Query`] is plain serde data (it can travel as JSON or URL parameters) and [`run`]
//! answers it with a [`Response`] whose JSON is the documented view. Nothing here has IO: the
//! caller supplies the projections and a [`RecordSource`] (the log, to show each event's
//! details in `history` and to replay).

use crate::decode::decode_event;
use crate::fold::{Projections, Projector, DAY_MS};
use crate::graph::{graph, Graph};
use crate::model::{Alert, DeviceCard, DeviceState, Trail, TrailEntry};
use pairbus_schemas::event::MetaValue;
use pairbus_schemas::{Body, DeviceId, Record};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Where the log records behind the projections can be read (by log position): an export
/// file in memory (borrowed), or a store such as the broker's sled log (owned copies).
pub trait RecordSource {
    /// The record at `seq`, if available.
    fn record(&self, seq: u64) -> Option<Cow<'_, Record>>;
}

/// No records: `history` shows trail entries without event details.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecords;

impl RecordSource for NoRecords {
    fn record(&self, _: u64) -> Option<Cow<'_, Record>> {
        None
    }
}

/// A contiguous slice of the log (an export file read into memory).
impl RecordSource for [Record] {
    fn record(&self, seq: u64) -> Option<Cow<'_, Record>> {
        let first = self.first()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.get(i).filter(|r| r.seq == seq).map(Cow::Borrowed)
    }
}

/// A question about the projections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "snake_case")]
pub enum Query {
    /// Every device card, optionally only those in one state.
    Devices {
        /// Filter by state.
        state: Option<DeviceState>,
    },
    /// One device card.
    Device {
        /// The device id.
        id: String,
    },
    /// One device's trail, complete and ordered, with each event's details.
    History {
        /// The device id.
        id: String,
        /// Only records received at or after this time (Unix ms).
        since: Option<u64>,
        /// Only records received at or before this time (Unix ms).
        until: Option<u64>,
        /// Only these event types (wire names); empty = all.
        #[serde(default)]
        types: Vec<String>,
    },
    /// The pairing graph.
    Graph,
    /// Every alert.
    Alerts,
    /// Counts: actions per type per day, devices per state, alerts per code.
    Stats,
}

/// Why a query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No such device (never manufactured and never named by an event).
    #[error("unknown device `{0}`")]
    UnknownDevice(String),
    /// A malformed argument.
    #[error("{0}")]
    BadArgument(String),
}

/// One entry of `history`: the trail entry and the event's details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The trail entry.
    #[serde(flatten)]
    pub entry: TrailEntry,
    /// The event body as JSON (absent when the log is not at hand or the event undecodable).
    pub details: Option<Value>,
}

/// The answer to `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The device.
    pub device: String,
    /// Its entries, in log order.
    pub entries: Vec<HistoryEntry>,
}

/// The answer to `stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Log position of the last applied record.
    pub last_seq: u64,
    /// Accepted actions: action → UTC day (`YYYY-MM-DD`, from the event's `ts`) → count.
    pub actions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Device count per state.
    pub devices: BTreeMap<String, u64>,
    /// Alert count per code.
    pub alerts: BTreeMap<String, u64>,
    /// Records whose event could not be decoded.
    pub undecodable: u64,
}

/// An answer. Serialized untagged: the JSON is the view itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// `devices`
    Devices(Vec<DeviceCard>),
    /// `device`
    Device(Box<DeviceCard>),
    /// `history`
    History(History),
    /// `graph`
    Graph(Graph),
    /// `alerts`
    Alerts(Vec<Alert>),
    /// `stats`
    Stats(Stats),
}

fn device_id(s: &str) -> Result<DeviceId, QueryError> {
    DeviceId::parse(s).map_err(|e| QueryError::BadArgument(e.to_string()))
}

/// Answers `q` from `p`, reading event details from `log`.
pub fn run<S: RecordSource + ?Sized>(
    p: &Projections,
    log: &S,
    q: &Query,
) -> Result<Response, QueryError> {
    Ok(match q {
        Query::Devices { state } => {
            let mut v: Vec<DeviceCard> = p
                .devices
                .values()
                .filter(|c| state.is_none() || *state == Some(c.state))
                .cloned()
                .collect();
            v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
            Response::Devices(v)
        }
        Query::Device { id } => {
            let d = device_id(id)?;
            let card = p
                .devices
                .get(&d)
                .ok_or_else(|| QueryError::UnknownDevice(id.clone()))?;
            Response::Device(Box::new(card.clone()))
        }
        Query::History {
            id,
            since,
            until,
            types,
        } => {
            let d = device_id(id)?;
            let empty = Trail::new(d.clone());
            let trail = match p.trails.get(&d) {
                Some(t) => t,
                None if p.devices.contains_key(&d) => &empty,
                None => return Err(QueryError::UnknownDevice(id.clone())),
            };
            for t in types {
                if pairbus_schemas::EventType::parse(t).is_none() {
                    return Err(QueryError::BadArgument(format!("unknown event type `{t}`")));
                }
            }
            let lo = since.unwrap_or(0);
            let hi = until.unwrap_or(u64::MAX);
            // Trails are in log order and received_at does not decrease along the log, so the
            // window is found by binary search: the cost is the size of the answer.
            let start = trail.partition_point(|e| e.received_at < lo);
            let entries = trail
                .iter_from(start)
                .take_while(|e| e.received_at <= hi)
                .filter(|e| {
                    types.is_empty()
                        || e.event_type
                            .is_some_and(|t| types.iter().any(|x| x == t.as_str()))
                })
                .map(|e| HistoryEntry {
                    details: details(log, e.seq),
                    entry: e,
                })
                .collect();
            Response::History(History {
                device: id.clone(),
                entries,
            })
        }
        Query::Graph => Response::Graph(graph(p)),
        Query::Alerts => Response::Alerts(p.alerts.clone()),
        Query::Stats => Response::Stats(stats(p)),
    })
}

/// Adds the broker's refusals (see [`crate::refusals`], oldest first) to an `alerts` answer
/// (merged by time; on a tie the log's alert comes first) or to a `stats` answer (counted per
/// code); other answers are left as they are.
pub fn merge_refusals(r: &mut Response, refusals: &[Alert]) {
    if refusals.is_empty() {
        return;
    }
    match r {
        Response::Alerts(v) => {
            let log = std::mem::take(v);
            let (mut a, mut b) = (log.into_iter().peekable(), refusals.iter().peekable());
            loop {
                let take_log = match (a.peek(), b.peek()) {
                    (Some(x), Some(y)) => x.at <= y.at,
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => break,
                };
                if take_log {
                    v.extend(a.next());
                } else {
                    v.extend(b.next().cloned());
                }
            }
        }
        Response::Stats(s) => {
            for x in refusals {
                *s.alerts.entry(x.code.as_str()).or_insert(0) += 1;
            }
        }
        _ => {}
    }
}

/// The details (body JSON) of the event of record `seq`, if the record is at hand and decodes.
pub fn details<S: RecordSource + ?Sized>(log: &S, seq: u64) -> Option<Value> {
    log.record(seq)
        .and_then(|r| decode_event(&r.event).ok())
        .map(|ev| body_json(&ev.body))
}

/// A time given as Unix milliseconds (digits) or RFC 3339, in Unix ms: how the CLI and the HTTP
/// API read `since`, `until` and `as_of`.
pub fn parse_time(s: &str) -> Result<u64, QueryError> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
        QueryError::BadArgument(format!("`{s}` is neither Unix ms nor RFC 3339: {e}"))
    })?;
    u64::try_from(t.timestamp_millis())
        .map_err(|_| QueryError::BadArgument(format!("`{s}` is before 1970")))
}

/// The UTC day `YYYY-MM-DD` of a day number (Unix ms / [`DAY_MS`]).
pub fn day_name(day: u64) -> String {
    let ms = i64::try_from(day.saturating_mul(DAY_MS)).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day-{day}"))
}

/// The stats view.
pub fn stats(p: &Projections) -> Stats {
    let actions = p
        .stats
        .iter()
        .map(|(a, days)| {
            (
                a.clone(),
                days.iter().map(|(d, n)| (day_name(*d), *n)).collect(),
            )
        })
        .collect();
    let mut devices = BTreeMap::new();
    for c in p.devices.values() {
        *devices.entry(c.state.as_str().to_owned()).or_insert(0) += 1;
    }
    let mut alerts: BTreeMap<String, u64> = BTreeMap::new();
    for a in &p.alerts {
        *alerts.entry(a.code.as_str()).or_insert(0) += 1;
    }
    Stats {
        last_seq: p.last_seq,
        actions,
        devices,
        alerts,
        undecodable: p.unattributed.len() as u64,
    }
}

/// The projections as of log position `seq`: the fold of the records up to it.
pub fn as_of_seq(pr: &Projector, records: &[Record], seq: u64) -> Projections {
    pr.rebuild(records.iter().take_while(|r| r.seq <= seq))
}

/// The projections as of broker time `t` (Unix ms): the fold of the records received up to it.
pub fn as_of_time(pr: &Projector, records: &[Record], t: u64) -> Projections {
    pr.rebuild(records.iter().take_while(|r| r.received_at <= t))
}

fn meta_json(m: &BTreeMap<String, MetaValue>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| {
                let v = match v {
                    MetaValue::Text(s) => json!(s),
                    MetaValue::Int(i) => json!(i),
                    MetaValue::Bool(b) => json!(b),
                };
                (k.clone(), v)
            })
            .collect::<Map<_, _>>(),
    )
}

/// An event body as JSON (byte fields in hex). The activation QR text is a bearer token, so
/// only its SHA-256 is shown.
pub fn body_json(b: &Body) -> Value {
    match b {
        Body::Manufactured(m) => json!({
            "serial_hash": hex::encode(m.serial_hash),
            "device_type": m.device_type,
            "model": m.model,
            "manufacturer": m.manufacturer,
            "name": m.name,
            "components": m.components.iter().map(|c| json!({"kind": c.kind, "spec": c.spec})).collect::<Vec<_>>(),
            "qr_expires_at": m.qr_expires_at,
        }),
        Body::Activated(a) => json!({
            "qr_sha256": sha256_hex(a.qr.as_bytes()),
            "owner": a.owner,
            "activation_token_hash": hex::encode(a.activation_token_hash),
            "ip": a.ip,
            "user_agent": a.user_agent,
            "fingerprint": a.fingerprint,
        }),
        Body::SetupCompleted(s) => json!({"owner": s.owner, "role": s.role.as_str()}),
        Body::PairingRequested(r) => {
            json!({"manager": r.manager.as_str(), "sensor": r.sensor.as_str()})
        }
        Body::PairingOffered(o) => {
            json!({"sensor": o.sensor.as_str(), "nonce": hex::encode(o.nonce), "expires_at": o.expires_at})
        }
        Body::PairingAccepted(a) => {
            json!({"manager": a.manager.as_str(), "nonce": hex::encode(a.nonce)})
        }
        Body::PairingDeclined(e) | Body::PairingCancelled(e) => {
            json!({"nonce": hex::encode(e.nonce), "reason": e.reason})
        }
        Body::PairingUnpaired(u) => json!({"peer": u.peer.as_str()}),
        Body::ModeChanged(_) => json!({"mode": "standalone"}),
        Body::Action(a) => json!({
            "action": a.action,
            "metadata": meta_json(&a.metadata),
            "ip": a.ip,
            "user_agent": a.user_agent,
        }),
        Body::CommandIssued(c) => json!({
            "target": c.target.as_str(),
            "command": c.command.as_str(),
            "params": meta_json(&c.params),
            "expires_at": c.expires_at,
        }),
        Body::CommandCompleted(c) => json!({
            "command_id": c.command_id.to_hex(),
            "outcome": c.outcome.as_str(),
            "result": meta_json(&c.result),
        }),
        Body::Revoked(r) => json!({"reason": r.reason}),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
