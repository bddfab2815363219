//! The operator: checking a scanned QR code and activating the device.
//!
//! **Key custody.** Factory QR codes are MAC'd (HMAC) with the factory's key; checking the MAC
//! needs that key, and whoever holds it could also forge QR codes and `device.manufactured`
//! events. So an operator checks locally what it can without it — the form (prefix, base45,
//! COSE_Mac0 structure, a factory kid, strict claims) and the expiry — and the factory MAC is
//! checked fully where the root is held: by the broker/projector when `device.activated`
//! (which carries the scanned text) is folded (a forged code is an audit alert), or locally
//! when the operator is given `--fleet-key` (trusted stations, tests). Malformed, forged
//! and expired codes are distinct errors ([`QrError`]).
//!
//! A QR code is a bearer token: the operator also keeps the devices it activated, and refuses
//! a second activation from the same code ([`AgentError::QrReused`]); reuse across operators
//! is for the projector to flag.

use crate::error::AgentError;
use coset::{CoseMac0, TaggedCborSerializable};
use pairbus_schemas::cbor::decode_strict;
use pairbus_schemas::envelope::Unverified;
use pairbus_schemas::ids::{DeviceId, Kid, PrincipalKind};
use pairbus_schemas::keys::RootSecret;
use pairbus_schemas::qr::{verify_qr, QrClaims, QrError, MAX_QR_TEXT, QR_PREFIX};
use serde::{Deserialize, Serialize};

/// What a QR check established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrCheck {
    /// The factory named (and, if `mac_checked`, proven) as signer.
    pub factory: Kid,
    /// The claims.
    pub claims: QrClaims,
    /// Whether the factory MAC was checked here (with the fleet key).
    pub mac_checked: bool,
}

/// The state-tree key of an activation made by this operator.
pub fn activation_key(device: &DeviceId) -> String {
    format!("activated/{device}")
}

/// An activation this operator made (kept to refuse a reused QR code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// When, Unix ms.
    pub at_ms: u64,
    /// For whom.
    pub owner: String,
}

/// Checks a QR text at `now_secs`: fully (MAC included) with the fleet root, otherwise form,
/// claims and expiry only.
pub fn check_qr(text: &str, now_secs: u64, root: Option<&RootSecret>) -> Result<QrCheck, QrError> {
    if let Some(root) = root {
        let v = verify_qr(text, now_secs, |kid| Some(root.derive(kid)))?;
        return Ok(QrCheck {
            factory: v.factory,
            claims: v.claims,
            mac_checked: true,
        });
    }
    let (factory, claims) = parse_qr_unverified(text)?;
    if claims.exp <= now_secs {
        return Err(QrError::Expired {
            exp: claims.exp,
            now: now_secs,
        });
    }
    Ok(QrCheck {
        factory,
        claims,
        mac_checked: false,
    })
}

fn malformed(s: impl Into<String>) -> QrError {
    QrError::Malformed(s.into())
}

/// Parses a QR text's structure and claims without checking the MAC. (`pairbus-schemas`
/// decodes the claims only after the MAC, so the claim decoding is repeated here, just as
/// strictly: the five fields, nothing else.)
pub fn parse_qr_unverified(text: &str) -> Result<(Kid, QrClaims), QrError> {
    if text.len() > MAX_QR_TEXT {
        return Err(malformed(format!(
            "{} characters, over the {MAX_QR_TEXT}-character limit",
            text.len()
        )));
    }
    let body = text
        .strip_prefix(QR_PREFIX)
        .ok_or_else(|| malformed(format!("does not start with `{QR_PREFIX}`")))?;
    let cose = base45::decode(body).map_err(|e| malformed(format!("base45: {e:?}")))?;
    let u = Unverified::parse(&cose, MAX_QR_TEXT).map_err(|e| malformed(e.to_string()))?;
    let kid = u.kid().clone();
    if kid.kind() != PrincipalKind::Factory {
        return Err(QrError::NotFactory(kid));
    }
    let payload = CoseMac0::from_tagged_slice(&cose)
        .map_err(|e| malformed(e.to_string()))?
        .payload
        .ok_or_else(|| malformed("no payload"))?;
    let value =
        decode_strict(&payload, MAX_QR_TEXT).map_err(|e| malformed(format!("claims: {e}")))?;
    let ciborium::value::Value::Map(entries) = value else {
        return Err(malformed("claims: not a map"));
    };
    let (mut device_id, mut device_type, mut model, mut iat, mut exp) =
        (None, None, None, None, None);
    for (k, v) in entries {
        use ciborium::value::Value as V;
        let key = match k {
            V::Text(k) => k,
            _ => return Err(malformed("claims: non-text key")),
        };
        let text = |v: V| match v {
            V::Text(s) => Ok(s),
            _ => Err(malformed(format!("claims: `{key}` must be text"))),
        };
        let uint = |v: V| match v {
            V::Integer(i) => u64::try_from(i)
                .map_err(|_| malformed(format!("claims: `{key}` must be an unsigned integer"))),
            _ => Err(malformed(format!(
                "claims: `{key}` must be an unsigned integer"
            ))),
        };
        match key.as_str() {
            "device_id" => {
                device_id = Some(
                    DeviceId::parse(&text(v)?).map_err(|e| malformed(format!("claims: {e}")))?,
                )
            }
            "device_type" => device_type = Some(text(v)?),
            "model" => model = Some(text(v)?),
            "iat" => iat = Some(uint(v)?),
            "exp" => exp = Some(uint(v)?),
            other => return Err(malformed(format!("claims: unknown field `{other}`"))),
        }
    }
    let missing = |f: &str| malformed(format!("claims: field `{f}` is missing"));
    Ok((
        kid,
        QrClaims {
            device_id: device_id.ok_or_else(|| missing("device_id"))?,
            device_type: device_type.ok_or_else(|| missing("device_type"))?,
            model: model.ok_or_else(|| missing("model"))?,
            iat: iat.ok_or_else(|| missing("iat"))?,
            exp: exp.ok_or_else(|| missing("exp"))?,
        },
    ))
}

/// Refuses a QR code this operator already activated a device with.
pub fn check_not_reused(
    device: &DeviceId,
    previous: Option<ActivationRecord>,
) -> Result<(), AgentError> {
    match previous {
        Some(r) => Err(AgentError::QrReused {
            device: device.to_string(),
            at_ms: r.at_ms,
        }),
        None => Ok(()),
    }
}

/// A fresh activation token (32 random bytes as 64 hex digits). Printed once; only its
/// SHA-256 travels ([`crate::draft::activation_token_hash`]).
pub fn new_activation_token(random: [u8; 32]) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::qr::encode_qr;

    fn qr(root: &RootSecret, exp: u64) -> (String, QrClaims) {
        let fac = Kid::parse("factory:line-1").unwrap();
        let claims = QrClaims {
            device_id: DeviceId::parse("0123456789abcdef").unwrap(),
            device_type: "phone".into(),
            model: "P1".into(),
            iat: 100,
            exp,
        };
        (encode_qr(&claims, &fac, &root.derive(&fac)), claims)
    }

    #[test]
    fn local_and_full_checks_tell_malformed_forged_expired_apart() {
        let root = RootSecret::from_bytes([1; 32]);
        let (text, claims) = qr(&root, 1000);
        let local = check_qr(&text, 500, None).unwrap();
        assert_eq!((local.claims, local.mac_checked), (claims.clone(), false));
        let full = check_qr(&text, 500, Some(&root)).unwrap();
        assert!(full.mac_checked);
        // Forged: signed with a key the fleet root does not derive.
        let (forged, _) = qr(&RootSecret::from_bytes([2; 32]), 1000);
        assert_eq!(check_qr(&forged, 500, Some(&root)), Err(QrError::Forged));
        assert!(
            check_qr(&forged, 500, None).is_ok(),
            "without the key only form and expiry"
        );
        assert!(matches!(
            check_qr(&text, 1000, None),
            Err(QrError::Expired { .. })
        ));
        assert!(matches!(
            check_qr(&text, 1000, Some(&root)),
            Err(QrError::Expired { .. })
        ));
        for bad in ["", "PB1:", "PB2:ABC", "PB1:%%%", "hello"] {
            assert!(
                matches!(check_qr(bad, 0, None), Err(QrError::Malformed(_))),
                "{bad}"
            );
        }
        // Truncated: malformed, not forged.
        assert!(matches!(
            check_qr(&text[..text.len() - 6], 0, None),
            Err(QrError::Malformed(_))
        ));
    }

    #[test]
    fn reuse_and_tokens() {
        let d = DeviceId::parse("0123456789abcdef").unwrap();
        assert!(check_not_reused(&d, None).is_ok());
        let e = check_not_reused(
            &d,
            Some(ActivationRecord {
                at_ms: 5,
                owner: "x".into(),
            }),
        )
        .unwrap_err();
        assert!(e.to_string().contains("reused QR code"), "{e}");
        assert_eq!(new_activation_token([0xab; 32]).len(), 64);
    }
}
