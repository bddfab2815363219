//! The attacker's side of the demo, pure: a counterfeit QR label.
//!
//! A forger who copies a genuine label can read its claims (device id, type, model, dates)
//! but does not hold the factory's key: the counterfeit carries the same claims, names the
//! same factory, and is MAC'd with a key of its own. Its form is perfect (an operator without
//! the fleet key accepts it); only the factory MAC gives it away.

use pairbus_schemas::ids::Kid;
use pairbus_schemas::keys::RootSecret;
use pairbus_schemas::qr::{encode_qr, QrClaims};

/// A counterfeit of a label with `claims` in the name of `factory`, MAC'd with the key
/// `forger_secret` derives for that factory (a secret of no fleet).
pub fn counterfeit_qr(claims: &QrClaims, factory: &Kid, forger_secret: [u8; 32]) -> String {
    let forger = RootSecret::from_bytes(forger_secret);
    encode_qr(claims, factory, &forger.derive(factory))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_agent::operator::check_qr;
    use pairbus_schemas::ids::DeviceId;
    use pairbus_schemas::qr::{verify_qr, QrError};

    #[test]
    fn a_counterfeit_has_a_perfect_form_and_a_wrong_mac() {
        let root = RootSecret::from_bytes([1; 32]);
        let factory = Kid::parse("factory:default").unwrap();
        let claims = QrClaims {
            device_id: DeviceId::parse("0123456789abcdef").unwrap(),
            device_type: "sensor".into(),
            model: "S2".into(),
            iat: 100,
            exp: 10_000,
        };
        let genuine = encode_qr(&claims, &factory, &root.derive(&factory));
        let fake = counterfeit_qr(&claims, &factory, [7; 32]);
        assert_ne!(fake, genuine);
        assert!(verify_qr(&genuine, 500, |k| Some(root.derive(k))).is_ok());
        assert_eq!(
            verify_qr(&fake, 500, |k| Some(root.derive(k))).unwrap_err(),
            QrError::Forged
        );
        // Without the fleet key, form and expiry are all an operator can check: it passes.
        let seen = check_qr(&fake, 500, None).unwrap();
        assert_eq!((seen.claims, seen.factory), (claims, factory));
        assert_eq!(check_qr(&fake, 500, Some(&root)), Err(QrError::Forged));
    }
}
