//! # pairbus-schemas: the wire format
//!
//! Everything two pairbus parts (or a third-party client) must agree on, as pure,
//! deterministic code with no IO, no clock and no randomness of its own:
//!
//! - [`keys`]: the fleet root secret, HKDF-derived principal keys, serial hashing, MQTT tokens;
//! - [`ids`]: kids, device ids, event ids;
//! - [`identity`]: identity files (TOML);
//! - [`event`]: the typed event catalogue and its deterministic CBOR payload;
//! - [`envelope`]: the COSE_Mac0 envelope (seal, parse, verify);
//! - [`record`]: the hash-chained log record;
//! - [`qr`]: the factory QR payload codec;
//! - [`topics`]: MQTT topic names;
//! - [`messages`]: confirmations, rejections, checkpoints, replay messages;
//! - [`cbor`]: deterministic encoding and the strict decoder under all of the above;
//! - [`vectors`]: the published test vectors, generated from fixed inputs.
//!
//! The normative schema is `events.cddl` beside this crate; the contract is DESIGN.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cbor;
#[doc(hidden)]
pub mod differential;
pub mod envelope;
pub mod event;
mod fast_event;
mod fields;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod messages;
pub mod qr;
pub mod record;
pub mod topics;
pub mod vectors;

pub use envelope::{open_event, seal, EnvelopeError, Unverified};
pub use event::{Body, Event, EventType, MAX_EVENT_SIZE, SCHEMA_VERSION};
pub use fields::DecodeError;
pub use ids::{DeviceId, EventId, Kid, PrincipalKind};
pub use keys::{Key, RootSecret};
pub use record::{Record, GENESIS};
pub use topics::Topic;
