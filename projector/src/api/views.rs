//! The query endpoints (under `/v1/`, operator token required).
//!
//! Every answer is [`crate::query::run`] over the live projections: the JSON is exactly what
//! `pairbus-projector --export FILE … --json` prints for the same log (`alerts` and `stats`
//! also count the broker's refusals, which are not in the log). The projections are locked
//! only while the query runs (a copy of the answer, no IO); `history` then reads each entry's
//! event details from the records, and `replay` folds a prefix of the records with a fresh
//! [`Projector`], both outside the lock and on the blocking thread pool.

use super::Backend;
use crate::graph::{to_dot, to_text};
use crate::model::DeviceState;
use crate::query::{self, Query, QueryError, RecordSource, Response};
use crate::{Config, Effect, Projections, Projector};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::get;
use axum::{Json, Router};
use pairbus_schemas::Record;
use std::borrow::Cow;
use std::sync::TryLockError;

/// The most records `/v1/replay` folds for one request (about a second of fold). Older
/// positions of a longer log: export it (`pairbus-broker export`) and replay offline.
pub const MAX_REPLAY_RECORDS: u64 = 2_000_000;

/// Response header of `/v1/replay`: the log position the answer is as of (0 = empty log).
pub const AS_OF_SEQ: &str = "pairbus-as-of-seq";
/// Response header of `/v1/replay`: the broker time (Unix ms) of that record (absent for 0).
pub const AS_OF_RECEIVED_AT: &str = "pairbus-as-of-received-at";

/// Why a query endpoint has no answer. The body is `{"error": <message>, "code": <code>}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed or unknown parameter (400, `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// The device was never manufactured nor named by an event (404, `unknown_device`).
    #[error("unknown device `{0}`")]
    UnknownDevice(String),
    /// Another replay is running (503, `busy`).
    #[error("another replay is running; retry shortly")]
    Busy,
    /// Reading the records failed (500, `internal`).
    #[error("event log: {0}")]
    Log(String),
    /// The query task failed (500, `internal`).
    #[error("query task: {0}")]
    Task(String),
}

impl ApiError {
    /// The HTTP status and the `code` field.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "unknown_device"),
            ApiError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Log(_) | ApiError::Task(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::UnknownDevice(d) => ApiError::UnknownDevice(d),
            QueryError::BadArgument(m) => ApiError::BadRequest(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> HttpResponse {
        let (status, code) = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "query failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string(), "code": code })),
        )
            .into_response()
    }
}

/// A backend's records as a [`RecordSource`]: `history` reads its entries' details from it.
struct Records<'a, B>(&'a B);

impl<B: Backend> RecordSource for Records<'_, B> {
    fn record(&self, seq: u64) -> Option<Cow<'_, Record>> {
        self.0.record(seq).map(Cow::Owned)
    }
}

/// URL parameters, checked by name (unknown or repeated ones are refused).
struct Params(Vec<(String, String)>);

impl Params {
    fn new(
        q: Result<UrlQuery<Vec<(String, String)>>, QueryRejection>,
        allowed: &[&str],
    ) -> Result<Self, ApiError> {
        let UrlQuery(pairs) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter `{k}` (expected one of: {})",
                allowed.join(", ")
            )));
        }
        Ok(Params(pairs))
    }

    /// The value of `name`, given at most once.
    fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut it = self.all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(ApiError::BadRequest(format!(
                "parameter `{name}` given more than once"
            )));
        }
        Ok(first)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    fn time(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.one(name)?
            .map(|v| query::parse_time(v).map_err(|e| ApiError::BadRequest(format!("{name}: {e}"))))
            .transpose()
    }
}

type RawParams = Result<UrlQuery<Vec<(String, String)>>, QueryRejection>;

/// Runs `f` on the blocking pool (it locks a std mutex, reads sled or folds).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Task(e.to_string()))?
}

/// Answers `q` from the live projections, under the lock, without event details.
fn live<B: Backend>(s: &B, q: &Query) -> Result<Response, ApiError> {
    Ok(s.read(|p| query::run(p, &query::NoRecords, q))?)
}

async fn answer<B: Backend>(s: B, q: Query) -> Result<HttpResponse, ApiError> {
    let r = blocking(move || {
        let mut r = live(&s, &q)?;
        match &mut r {
            Response::History(h) => {
                // Outside the lock: one record read per entry.
                let log = Records(&s);
                for e in &mut h.entries {
                    e.details = query::details(&log, e.entry.seq);
                }
            }
            Response::Alerts(_) | Response::Stats(_) => {
                query::merge_refusals(&mut r, &s.refusals());
            }
            _ => {}
        }
        Ok(r)
    })
    .await?;
    Ok(Json(r).into_response())
}

async fn devices<B: Backend>(State(s): State<B>, q: RawParams) -> Result<HttpResponse, ApiError> {
    let p = Params::new(q, &["state"])?;
    let state = p
        .one("state")?
        .map(|v| {
            DeviceState::parse(v).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown state `{v}` (unconfigured, activation_pending, configured, paired, standalone or revoked)"
                ))
            })
        })
        .transpose()?;
    answer(s, Query::Devices { state }).await
}

async fn device<B: Backend>(
    State(s): State<B>,
    id: Result<Path<String>, PathRejection>,
    q: RawParams,
) -> Result<HttpResponse, ApiError> {
    Params::new(q, &[])?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    answer(s, Query::Device { id }).await
}

async fn history<B: Backend>(
    State(s): State<B>,
    id: Result<Path<String>, PathRejection>,
    q: RawParams,
) -> Result<HttpResponse, ApiError> {
    let p = Params::new(q, &["since", "until", "type"])?;
    let Path(id) = id.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let types = p
        .all("type")
        .flat_map(|v| v.split(','))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let q = Query::History {
        id,
        since: p.time("since")?,
        until: p.time("until")?,
        types,
    };
    answer(s, q).await
}

fn text(content_type: &'static str, body: String) -> HttpResponse {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn graph<B: Backend>(State(s): State<B>, q: RawParams) -> Result<HttpResponse, ApiError> {
    let p = Params::new(q, &["format"])?;
    let format = p.one("format")?.unwrap_or("json");
    if !matches!(format, "json" | "text" | "dot") {
        return Err(ApiError::BadRequest(format!(
            "unknown format `{format}` (json, text or dot)"
        )));
    }
    let r = blocking(move || live(&s, &Query::Graph)).await?;
    let Response::Graph(g) = r else {
        return Err(ApiError::Task("graph query gave another view".into()));
    };
    Ok(match format {
        "text" => text("text/plain; charset=utf-8", to_text(&g)),
        "dot" => text("text/vnd.graphviz; charset=utf-8", to_dot(&g)),
        _ => Json(g).into_response(),
    })
}

async fn alerts<B: Backend>(State(s): State<B>, q: RawParams) -> Result<HttpResponse, ApiError> {
    Params::new(q, &[])?;
    answer(s, Query::Alerts).await
}

async fn stats<B: Backend>(State(s): State<B>, q: RawParams) -> Result<HttpResponse, ApiError> {
    Params::new(q, &[])?;
    answer(s, Query::Stats).await
}

/// Where a replay stops.
#[derive(Debug, Clone, Copy)]
enum AsOf {
    Seq(u64),
    Time(u64),
}

impl AsOf {
    fn includes(self, r: &Record) -> bool {
        match self {
            AsOf::Seq(s) => r.seq <= s,
            AsOf::Time(t) => r.received_at <= t,
        }
    }
}

/// The projections as of `as_of`: the fold of the log's prefix, by a projector configured as
/// the embedded one (default config, keys from the fleet root), at most [`MAX_REPLAY_RECORDS`].
/// Also the broker time of the last folded record.
fn fold_prefix<B: Backend>(
    log: &B,
    pr: &Projector,
    as_of: AsOf,
) -> Result<(Projections, Option<u64>), ApiError> {
    let head = match as_of {
        AsOf::Seq(s) => log.head().min(s),
        AsOf::Time(_) => log.head(),
    };
    let mut p = Projections::new();
    let mut fx: Vec<Effect> = Vec::new();
    let mut last_at = None;
    let mut next = 1;
    'fold: while next <= head {
        let end = (next + 10_000).min(head + 1);
        for r in log.range(next..end).map_err(ApiError::Log)? {
            if !as_of.includes(&r) {
                break 'fold;
            }
            if r.seq > MAX_REPLAY_RECORDS {
                return Err(ApiError::BadRequest(format!(
                    "this replay would fold more than {MAX_REPLAY_RECORDS} records: export the log (`pairbus-broker export`) and replay it offline (`pairbus-projector --export FILE replay …`)"
                )));
            }
            fx.clear();
            pr.apply_into(&mut p, &r, &mut fx);
            last_at = Some(r.received_at);
        }
        next = end;
    }
    Ok((p, last_at))
}

async fn replay<B: Backend>(State(s): State<B>, q: RawParams) -> Result<HttpResponse, ApiError> {
    let p = Params::new(q, &["as_of", "view", "id"])?;
    let as_of = p
        .one("as_of")?
        .ok_or_else(|| ApiError::BadRequest("missing `as_of` (a log seq or RFC 3339)".into()))?;
    let as_of = match as_of.parse::<u64>() {
        Ok(seq) => AsOf::Seq(seq),
        Err(_) => AsOf::Time(
            query::parse_time(as_of).map_err(|e| ApiError::BadRequest(format!("as_of: {e}")))?,
        ),
    };
    let id = p.one("id")?.map(str::to_owned);
    let q = match (p.one("view")?, id) {
        (Some("device"), Some(id)) => Query::Device { id },
        (Some("device"), None) => {
            return Err(ApiError::BadRequest("view=device needs `id`".into()))
        }
        (Some("graph"), None) => Query::Graph,
        (Some("devices"), None) => Query::Devices { state: None },
        (Some("graph" | "devices"), Some(_)) => {
            return Err(ApiError::BadRequest(
                "`id` goes with view=device only".into(),
            ))
        }
        (v, _) => {
            return Err(ApiError::BadRequest(format!(
                "view must be device, graph or devices, not {}",
                v.map_or("nothing".into(), |v| format!("`{v}`"))
            )))
        }
    };
    let (resp, seq, at) = blocking(move || {
        let _one_at_a_time = match s.replays().try_lock() {
            Ok(g) => g,
            // A replay that panicked left nothing behind to repair.
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(ApiError::Busy),
        };
        let pr = Projector::new(Config::default(), s.root().clone());
        let (p, at) = fold_prefix(&s, &pr, as_of)?;
        let resp = query::run(&p, &query::NoRecords, &q)?;
        Ok((resp, p.last_seq, at))
    })
    .await?;
    let mut out = Json(resp).into_response();
    let h = out.headers_mut();
    h.insert(HeaderName::from_static(AS_OF_SEQ), HeaderValue::from(seq));
    if let Some(at) = at {
        h.insert(
            HeaderName::from_static(AS_OF_RECEIVED_AT),
            HeaderValue::from(at),
        );
    }
    Ok(out)
}

/// The query routes (the caller adds [`super::require_operator`] and its own routes).
pub fn routes<B: Backend>() -> Router<B> {
    Router::new()
        .route("/v1/devices", get(devices::<B>))
        .route("/v1/devices/:id", get(device::<B>))
        .route("/v1/devices/:id/history", get(history::<B>))
        .route("/v1/graph", get(graph::<B>))
        .route("/v1/alerts", get(alerts::<B>))
        .route("/v1/stats", get(stats::<B>))
        .route("/v1/replay", get(replay::<B>))
}
