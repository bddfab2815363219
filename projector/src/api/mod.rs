//! The read-only HTTP query API over live projections, served identically by the projector
//! embedded in `pairbus-broker serve` and by `pairbus-projector serve`.
//!
//! Routes (module [`views`]; the JSON is exactly what `pairbus-projector --export FILE
//! <command> --json` prints for the same log, shapes in this crate's README):
//!
//! - `GET /v1/devices?state=S`, `GET /v1/devices/<id>`,
//!   `GET /v1/devices/<id>/history?since=T&until=T&type=E`, `GET /v1/graph?format=json|text|dot`,
//!   `GET /v1/alerts`, `GET /v1/stats`, `GET /v1/replay?as_of=SEQ|T&view=device|graph|devices&id=ID`.
//!
//! A server supplies a [`Backend`] (the live projections, the records behind them, the fleet
//! root) and adds its own routes (`/healthz`, `/metrics`, the broker's `/v1/head` and
//! `/v1/refusals`) and the operator check [`require_operator`] over `/v1/`.
//!
//! Errors are JSON `{"error": <message>, "code": <code>}` ([`ApiError`]).

use crate::fold::Projections;
use crate::model::Alert;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pairbus_schemas::{Kid, PrincipalKind, Record, RootSecret};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

mod views;
pub use views::{routes, ApiError, AS_OF_RECEIVED_AT, AS_OF_SEQ, MAX_REPLAY_RECORDS};

/// At most this many of the newest broker refusals are merged into `/v1/alerts`.
pub const MAX_REFUSAL_ALERTS: usize = 10_000;

/// What the query endpoints read. Cheap to clone (handles to shared state).
pub trait Backend: Clone + Send + Sync + 'static {
    /// Runs `f` over the live projections, under their lock (`f` only copies the answer out).
    fn read<R>(&self, f: impl FnOnce(&Projections) -> R) -> R;
    /// The log record at `seq`, if at hand (`history` shows its event's details).
    fn record(&self, seq: u64) -> Option<Record>;
    /// The records of `seqs`, in order (`replay` folds them); missing ones are an error.
    fn range(&self, seqs: Range<u64>) -> Result<Vec<Record>, String>;
    /// The last log position [`Backend::range`] can give.
    fn head(&self) -> u64;
    /// The fleet root: operator tokens are checked with it, and replays fold with its keys.
    fn root(&self) -> &RootSecret;
    /// Held by the running `/v1/replay` (one at a time).
    fn replays(&self) -> &Mutex<()>;
    /// The broker's refusals as alerts (see [`crate::refusals`]), oldest first, at most
    /// [`MAX_REFUSAL_ALERTS`]: merged into `/v1/alerts` and `/v1/stats`.
    fn refusals(&self) -> Vec<Alert>;
}

/// Checks an `Authorization` header value: `Bearer <operator kid>:<token>` at `now` (seconds),
/// `<token>` being the same time-limited token as the MQTT password (`<expiry>.<hex mac>`).
pub fn check_bearer(root: &RootSecret, header: Option<&str>, now: u64) -> Result<Kid, String> {
    let value = header.ok_or("missing Authorization header")?;
    let cred = value
        .strip_prefix("Bearer ")
        .ok_or("expected `Authorization: Bearer <kid>:<token>`")?;
    let (kid, token) = cred.rsplit_once(':').ok_or("expected <kid>:<token>")?;
    let kid = Kid::parse(kid).map_err(|e| e.to_string())?;
    if kid.kind() != PrincipalKind::Operator {
        return Err(format!("{kid} is not an operator"));
    }
    root.derive(&kid)
        .check_token(&kid, token, now)
        .map_err(|e| e.to_string())?;
    Ok(kid)
}

/// Middleware: refuses a request without a valid operator bearer token (401 `unauthorized`).
pub async fn require_operator<B: Backend>(
    State(s): State<B>,
    req: Request,
    next: Next,
) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match check_bearer(s.root(), header, now) {
        Ok(_) => next.run(req).await,
        Err(why) => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": why, "code": "unauthorized" })),
        )
            .into_response(),
    }
}

/// The answer for an unknown path (404 `not_found`).
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such endpoint", "code": "not_found" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_operator_tokens() {
        let root = RootSecret::from_bytes([5; 32]);
        let op = Kid::parse("operator:admin").unwrap();
        let tok = root.derive(&op).mint_token(&op, 1_000 + 60);
        let header = format!("Bearer operator:admin:{tok}");
        assert_eq!(check_bearer(&root, Some(&header), 1_000).unwrap(), op);
        assert!(check_bearer(&root, None, 1_000).is_err());
        assert!(check_bearer(&root, Some(&format!("Basic {tok}")), 1_000).is_err());
        assert!(check_bearer(&root, Some(&header), 2_000)
            .unwrap_err()
            .contains("expired"));
        let dev = Kid::parse("device:0123456789abcdef").unwrap();
        let dtok = root.derive(&dev).mint_token(&dev, 1_060);
        let e = check_bearer(&root, Some(&format!("Bearer {dev}:{dtok}")), 1_000).unwrap_err();
        assert!(e.contains("not an operator"), "{e}");
    }
}
