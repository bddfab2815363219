//! # pairbus-broker
//!
//! The broker: verified ingest over embedded MQTT (not built yet) on top of [`log`], the
//! append-only, hash-chained, group-committed event log in sled.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ingest;
pub mod log;
pub mod metrics;
pub mod mqtt;
