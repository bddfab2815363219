//! The standalone projector's HTTP server: the query API of [`crate::api`] behind the operator
//! check, plus `/healthz` and `/metrics` (no auth).
//!
//! - `GET /healthz`: `200 ok <mode> <last_seq>` (`mode`: `disconnected`, `catching_up`,
//!   `live`), or `503 halted: <why>` once the follower stopped applying (the broker's log does
//!   not continue the applied one);
//! - `GET /metrics`: Prometheus text, the follower's counters.

use super::Local;
use crate::api::{self, Backend};
use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::fmt::Write as _;

/// The routes over `local`.
pub fn router(local: Local) -> Router {
    let v1 = api::routes::<Local>().route_layer(middleware::from_fn_with_state(
        local.clone(),
        api::require_operator::<Local>,
    ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(api::not_found)
        .with_state(local)
}

async fn healthz(State(l): State<Local>) -> impl IntoResponse {
    let s = l.status();
    match s.halted {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("halted: {why}\n")),
        None => (StatusCode::OK, format!("ok {} {}\n", s.mode, l.head())),
    }
}

async fn metrics(State(l): State<Local>) -> impl IntoResponse {
    let s = l.status();
    let c = s.counters;
    let mut o = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            o,
            "# HELP pairbus_projector_{name} {help}\n# TYPE pairbus_projector_{name} counter\npairbus_projector_{name} {v}"
        );
    };
    counter(
        "records_applied_total",
        "Log records applied since start.",
        c.applied,
    );
    counter(
        "duplicates_total",
        "Records received again and dropped.",
        c.duplicates,
    );
    counter(
        "chain_errors_total",
        "Records with a wrong hash or prev, never applied.",
        c.chain_errors,
    );
    counter(
        "buffer_overflows_total",
        "Live records dropped by a full catch-up buffer (fetched again).",
        c.buffer_overflows,
    );
    counter(
        "stale_replies_total",
        "Replay messages of an older request, ignored.",
        c.stale_replies,
    );
    counter(
        "replay_requests_total",
        "Catch-up requests sent to the replay service.",
        c.requests,
    );
    counter("gaps_total", "Gaps seen in the live log stream.", c.gaps);
    counter(
        "garbage_total",
        "Messages that did not decode, dropped.",
        s.garbage,
    );
    counter(
        "refusals_total",
        "Broker refusals heard on rejected/#.",
        s.refusals,
    );
    let _ = writeln!(
        o,
        "# HELP pairbus_projector_last_seq Last applied log position.\n# TYPE pairbus_projector_last_seq gauge\npairbus_projector_last_seq {}",
        l.head()
    );
    let _ = writeln!(
        o,
        "# HELP pairbus_projector_halted 1 once the follower stopped applying.\n# TYPE pairbus_projector_halted gauge\npairbus_projector_halted {}",
        u8::from(s.halted.is_some())
    );
    ([("content-type", "text/plain; version=0.0.4")], o)
}
