//! # pairbus-projector: the log folded into device state, the pairing graph and audit views
//!
//! - [`fold`]: the pure fold, `Projector::apply(&mut Projections, &Record) -> Vec<Effect>`;
//!   no IO, no clock (time is the event's `ts` and the record's `received_at`);
//! - [`decode`]: reading a record's event without re-verifying its MAC (the broker did);
//! - [`model`]: the views (device card, trail entry, alert) and their JSON shapes;
//! - [`graph`]: the pairing-graph view, its invariants and text/dot renderings;
//! - [`publish`]: the audit-topic messages (topic, retain, JSON) for a batch of effects;
//! - [`query`]: the read side shared by the CLI and the HTTP API;
//! - [`api`]: the HTTP query API (axum), served by the broker's embedded projector and by
//!   `pairbus-projector serve` alike;
//! - [`refusals`]: the broker's refusals (not in the log) as alerts;
//! - [`serve`]: the shell of `pairbus-projector serve` (MQTT follower, own sled, HTTP API);
//! - [`store`]: the shell that persists projections in sled with an atomic checkpoint;
//! - [`text`]: the text renderings of `history` and `alerts` (CLI and `pairbus-broker demo`);
//! - [`follow`]: the pure catch-up/gap/dedupe logic of `serve` (which record to apply next,
//!   when to ask the replay service);
//! - [`export`]: reading log export files (`cbor-seq`, `jsonl`) with chain verification;
//! - [`testkit`]: generators of signed logs for tests and benchmarks.
//!
//! The JSON shapes and the fold's rules are documented in this crate's README.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
mod cbor;
pub mod decode;
pub mod export;
pub mod fold;
pub mod follow;
pub mod graph;
pub mod model;
pub mod publish;
pub mod query;
pub mod refusals;
pub mod serve;
pub mod store;
pub mod testkit;
pub mod text;
pub mod wire;

pub use fold::{Config, Effect, KeyResolver, NoKeys, Projections, Projector};
pub use model::{Alert, Code, DeviceCard, DeviceState, Status, Trail, TrailEntry};
