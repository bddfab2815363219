//! The library's error type.

use pairbus_schemas::qr::QrError;
use std::path::PathBuf;
use thiserror::Error;

/// Everything the agent library can fail with.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The durable outbox (sled) failed.
    #[error("outbox: {0}")]
    Outbox(#[from] sled::Error),
    /// A sled transaction failed.
    #[error("outbox transaction: {0}")]
    Transaction(String),
    /// The outbox is held by another process (an agent `run` is active on this identity).
    #[error("the outbox at {0} is in use by another agent process")]
    OutboxLocked(PathBuf),
    /// Stored outbox data could not be read back.
    #[error("outbox data is corrupt: {0}")]
    Corrupt(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A QR code was refused (malformed, forged, expired, …).
    #[error(transparent)]
    Qr(#[from] QrError),
    /// The QR code was already used for an activation by this operator.
    #[error("reused QR code: device {device} was already activated by this operator at {at_ms} (Unix ms)")]
    QrReused {
        /// The device the QR code names.
        device: String,
        /// When it was activated.
        at_ms: u64,
    },
    /// No QR code could be found or read in an image.
    #[error("no readable QR code in {path}: {reason}")]
    QrImage {
        /// The image file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The QR code could not be rendered.
    #[error("cannot render QR code: {0}")]
    QrRender(String),
    /// The device refuses a local command given its state.
    #[error("refused: {0}")]
    Refused(#[from] crate::device::Refusal),
    /// Invalid input (arguments, CSV rows, broker address).
    #[error("{0}")]
    Invalid(String),
    /// MQTT client failure.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// The local control socket failed.
    #[error("control socket: {0}")]
    Control(String),
}

impl AgentError {
    /// An IO error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.into(),
            source,
        }
    }
}
