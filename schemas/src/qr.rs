//! The factory QR payload: `PB1:` + base45 (RFC 9285) of a COSE_Mac0 signed by a factory
//! station over the claims `{device_id, device_type, model, iat, exp}` (`iat`/`exp` in Unix
//! seconds, as in CWT). Base45 uses only QR alphanumeric-mode characters, so the code stays small.

use crate::cbor::{decode_strict, encode_canonical};
use crate::envelope::{seal_payload, EnvelopeError, Unverified};
use crate::fields::{map, text, uint, DecodeError, Fields};
use crate::ids::{DeviceId, Kid, PrincipalKind};
use crate::keys::Key;
use thiserror::Error;

/// The text every pairbus v1 QR payload starts with.
pub const QR_PREFIX: &str = "PB1:";
/// Longest QR text accepted (a QR code holds at most 4,296 alphanumeric characters).
pub const MAX_QR_TEXT: usize = 4296;
/// Default lifetime of a factory QR code: 10 years, in seconds.
pub const DEFAULT_QR_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// What a factory QR code asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrClaims {
    /// The device.
    pub device_id: DeviceId,
    /// Its type.
    pub device_type: String,
    /// Its model.
    pub model: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Why a QR text was refused. Malformed, forged and expired codes are told apart.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QrError {
    /// Not a pairbus QR payload at all (prefix, base45, COSE, claims).
    #[error("malformed QR code: {0}")]
    Malformed(String),
    /// Signed by a principal that is not a factory station.
    #[error("QR code signed by `{0}`, which is not a factory station")]
    NotFactory(Kid),
    /// The factory named in the code is unknown to the verifier.
    #[error("QR code names an unknown factory `{0}`")]
    UnknownFactory(Kid),
    /// The MAC does not verify: the code was forged or altered.
    #[error("forged QR code: the factory MAC does not verify")]
    Forged,
    /// Authentic, but past its expiry.
    #[error("expired QR code: expired at {exp}, checked at {now} (Unix seconds)")]
    Expired {
        /// Expiry, Unix seconds.
        exp: u64,
        /// Time of the check.
        now: u64,
    },
}

impl QrClaims {
    fn encode(&self) -> Vec<u8> {
        encode_canonical(map(vec![
            ("device_id", text(self.device_id.as_str())),
            ("device_type", text(&self.device_type)),
            ("model", text(&self.model)),
            ("iat", uint(self.iat)),
            ("exp", uint(self.exp)),
        ]))
        .expect("claim keys are distinct")
    }

    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut f = Fields::new(decode_strict(payload, MAX_QR_TEXT)?, "")?;
        let claims = QrClaims {
            device_id: {
                let s = f.text("device_id")?;
                DeviceId::parse(&s).map_err(|e| DecodeError::invalid("device_id", e.to_string()))?
            },
            device_type: f.text("device_type")?,
            model: f.text("model")?,
            iat: f.uint("iat")?,
            exp: f.uint("exp")?,
        };
        f.finish()?;
        Ok(claims)
    }
}

/// The QR text for `claims`, signed by the factory station `kid` with its `key`.
pub fn encode_qr(claims: &QrClaims, kid: &Kid, key: &Key) -> String {
    format!(
        "{QR_PREFIX}{}",
        base45::encode(seal_payload(kid, key, claims.encode()))
    )
}

/// A QR code that verified: who signed it and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQr {
    /// The factory station that signed it.
    pub factory: Kid,
    /// Its claims.
    pub claims: QrClaims,
}

/// Verifies a QR text at `now` (Unix seconds): form, factory MAC (key looked up by kid),
/// claims, expiry.
pub fn verify_qr(
    qr_text: &str,
    now: u64,
    key_for: impl FnOnce(&Kid) -> Option<Key>,
) -> Result<VerifiedQr, QrError> {
    if qr_text.len() > MAX_QR_TEXT {
        return Err(QrError::Malformed(format!(
            "{} characters, over the {MAX_QR_TEXT}-character limit",
            qr_text.len()
        )));
    }
    let body = qr_text
        .strip_prefix(QR_PREFIX)
        .ok_or_else(|| QrError::Malformed(format!("does not start with `{QR_PREFIX}`")))?;
    let cose = base45::decode(body).map_err(|e| QrError::Malformed(format!("base45: {e:?}")))?;
    let unverified =
        Unverified::parse(&cose, MAX_QR_TEXT).map_err(|e| QrError::Malformed(e.to_string()))?;
    let kid = unverified.kid().clone();
    if kid.kind() != PrincipalKind::Factory {
        return Err(QrError::NotFactory(kid));
    }
    let key = key_for(&kid).ok_or_else(|| QrError::UnknownFactory(kid.clone()))?;
    let (factory, payload) = unverified.verify(&key).map_err(|e| match e {
        EnvelopeError::BadMac(_) => QrError::Forged,
        other => QrError::Malformed(other.to_string()),
    })?;
    let claims =
        QrClaims::decode(&payload).map_err(|e| QrError::Malformed(format!("claims: {e}")))?;
    if claims.exp <= now {
        return Err(QrError::Expired {
            exp: claims.exp,
            now,
        });
    }
    Ok(VerifiedQr { factory, claims })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootSecret;

    fn setup() -> (Kid, Key, QrClaims) {
        let root = RootSecret::from_bytes([3; 32]);
        let kid = Kid::parse("factory:line-1").unwrap();
        let key = root.derive(&kid);
        let claims = QrClaims {
            device_id: DeviceId::parse("e80421321203c37f").unwrap(),
            device_type: "phone".into(),
            model: "P1".into(),
            iat: 1_700_000_000,
            exp: 1_700_000_000 + DEFAULT_QR_TTL_SECS,
        };
        (kid, key, claims)
    }

    #[test]
    fn round_trip_uses_only_qr_alphanumeric_characters() {
        let (kid, key, claims) = setup();
        let qr = encode_qr(&claims, &kid, &key);
        assert!(qr
            .bytes()
            .all(|b| b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:".contains(&b)));
        let v = verify_qr(&qr, claims.iat, |_| Some(key.clone())).unwrap();
        assert_eq!(v.claims, claims);
        assert_eq!(v.factory, kid);
    }

    #[test]
    fn malformed_forged_and_expired_are_distinct() {
        let (kid, key, claims) = setup();
        let qr = encode_qr(&claims, &kid, &key);
        let now = claims.iat;
        assert!(matches!(
            verify_qr("hello", now, |_| Some(key.clone())),
            Err(QrError::Malformed(_))
        ));
        assert!(matches!(
            verify_qr("PB1:%%%", now, |_| Some(key.clone())),
            Err(QrError::Malformed(_))
        ));
        let other = RootSecret::from_bytes([4; 32]).derive(&kid);
        assert_eq!(verify_qr(&qr, now, |_| Some(other)), Err(QrError::Forged));
        assert_eq!(
            verify_qr(&qr, claims.exp, |_| Some(key.clone())),
            Err(QrError::Expired {
                exp: claims.exp,
                now: claims.exp
            })
        );
        assert_eq!(
            verify_qr(&qr, now, |_| None),
            Err(QrError::UnknownFactory(kid))
        );
        let op = Kid::parse("operator:admin").unwrap();
        let by_operator = encode_qr(&claims, &op, &key);
        assert_eq!(
            verify_qr(&by_operator, now, |_| Some(key.clone())),
            Err(QrError::NotFactory(op))
        );
    }
}
