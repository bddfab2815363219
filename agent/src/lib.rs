//! # pairbus-agent: the client of every principal
//!
//! One crate for the three kinds of principal that publish events:
//!
//! - a **device** (`device:<id>`): [`session`] keeps an MQTT session open, follows the
//!   device's `cmd/` topic and answers pairing offers and commands with the pure decisions of
//!   [`device`]; actions and local commands go through the same durable [`outbox`];
//! - a **factory station** (`factory:<name>`): [`factory`] makes devices (serial hash, device
//!   id, identity file, signed QR code as PNG/SVG/terminal) and publishes `device.manufactured`;
//! - an **operator** (`operator:<name>`): [`operator`] reads and checks QR codes (text or a
//!   photo, [`qrimage`]), activates devices, requests pairings, revokes, and [`discover`]s the
//!   devices online from their presence cards.
//!
//! Functional core, imperative shell: [`draft`] (event builders), [`device`] (state and
//! reactions), [`outbox::resend_due`] and the QR checks are pure; sled lives in [`outbox`],
//! rumqttc in [`session`], the local control socket in [`control`], files in [`factory`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control;
pub mod device;
pub mod discover;
pub mod draft;
pub mod error;
pub mod factory;
pub mod operator;
pub mod outbox;
pub mod qrimage;
pub mod relayed;
pub mod session;

pub mod sys;

pub use error::AgentError;
