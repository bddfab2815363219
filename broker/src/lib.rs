//! # pairbus-broker
//!
//! The broker: verified ingest over embedded MQTT (not built yet) on top of [`log`], the
//! append-only, hash-chained, group-committed event log in sled.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bus;
pub mod config;
pub mod datadir;
pub mod demo;
pub mod embedded;
pub mod export;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod log;
pub mod metrics;
pub mod mqtt;
pub mod presence;
pub mod ready;
pub mod relay;
pub mod replay;
pub mod worker;
