//! Who may connect to which plane: the pure decision behind rumqttd's auth handler.
//!
//! Username = kid, password = the time-limited token of DESIGN.md (checked with the key the
//! broker derives from the root secret). On the device plane only devices connect and a
//! device's MQTT client id must equal its kid; on the operator plane only operators and factory
//! stations connect (any client id, so one operator can run several clients). Revoked devices
//! are refused.

use pairbus_schemas::keys::KeyError;
use pairbus_schemas::{Kid, PrincipalKind, RootSecret};
use thiserror::Error;

/// The two MQTT planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaneKind {
    /// Devices: `in/device/…`, `committed/device/…`, `cmd/…`, `presence/…`.
    Device,
    /// Operators and factory stations: everything else.
    Operator,
}

impl PlaneKind {
    /// `device` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            PlaneKind::Device => "device",
            PlaneKind::Operator => "operator",
        }
    }

    /// The plane a principal of `kind` connects to (`None` for the broker itself).
    pub fn of(kind: PrincipalKind) -> Option<Self> {
        match kind {
            PrincipalKind::Device => Some(PlaneKind::Device),
            PrincipalKind::Operator | PrincipalKind::Factory => Some(PlaneKind::Operator),
            PrincipalKind::Broker => None,
        }
    }
}

/// Why a CONNECT was refused (each is counted and logged; the client only sees the socket close).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The username is not a kid.
    #[error("username `{0}` is not a valid kid")]
    BadUsername(String),
    /// The client id is empty, too long, or has characters outside `[A-Za-z0-9_.:-]`
    /// (rumqttd 0.20 can panic on a client id it refuses later, so such ids never reach it).
    #[error("client id `{0}` must be 1 to 128 characters from [A-Za-z0-9_.:-]")]
    BadClientId(String),
    /// A principal of this kind does not connect to this plane.
    #[error("a {kind} may not connect to the {plane} plane")]
    WrongPlane {
        /// The principal's kind.
        kind: PrincipalKind,
        /// The plane.
        plane: &'static str,
    },
    /// On the device plane the client id must equal the kid.
    #[error("client id `{client_id}` must equal the kid `{kid}`")]
    ClientIdMismatch {
        /// The CONNECT's client id.
        client_id: String,
        /// The username.
        kid: String,
    },
    /// The token is malformed, expired, too long-lived or wrongly MAC'd.
    #[error("token refused: {0}")]
    Token(#[from] KeyError),
    /// The device is revoked.
    #[error("`{0}` is revoked")]
    Revoked(Kid),
}

impl AuthError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::BadUsername(_) => "bad_username",
            AuthError::BadClientId(_) => "bad_client_id",
            AuthError::WrongPlane { .. } => "wrong_plane",
            AuthError::ClientIdMismatch { .. } => "client_id_mismatch",
            AuthError::Token(KeyError::Expired { .. }) => "token_expired",
            AuthError::Token(KeyError::BadMac) => "token_bad_mac",
            AuthError::Token(_) => "token_malformed",
            AuthError::Revoked(_) => "revoked",
        }
    }
}

/// Decides one CONNECT at time `now` (Unix seconds).
pub fn authenticate(
    plane: PlaneKind,
    client_id: &str,
    username: &str,
    password: &str,
    now: u64,
    root: &RootSecret,
    is_revoked: impl Fn(&Kid) -> bool,
) -> Result<Kid, AuthError> {
    let client_ok = !client_id.is_empty()
        && client_id.len() <= 128
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if !client_ok {
        return Err(AuthError::BadClientId(
            client_id.chars().take(128).collect(),
        ));
    }
    let kid = Kid::parse(username).map_err(|_| AuthError::BadUsername(username.to_owned()))?;
    if PlaneKind::of(kid.kind()) != Some(plane) {
        return Err(AuthError::WrongPlane {
            kind: kid.kind(),
            plane: plane.as_str(),
        });
    }
    if plane == PlaneKind::Device && client_id != username {
        return Err(AuthError::ClientIdMismatch {
            client_id: client_id.to_owned(),
            kid: username.to_owned(),
        });
    }
    root.derive(&kid).check_token(&kid, password, now)?;
    if is_revoked(&kid) {
        return Err(AuthError::Revoked(kid));
    }
    Ok(kid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn root() -> RootSecret {
        RootSecret::from_bytes([7; 32])
    }

    fn token(kid: &str, expiry: u64) -> String {
        let kid = Kid::parse(kid).unwrap();
        root().derive(&kid).mint_token(&kid, expiry)
    }

    fn auth(plane: PlaneKind, client: &str, user: &str, pass: &str) -> Result<Kid, AuthError> {
        authenticate(plane, client, user, pass, NOW, &root(), |k| {
            k.to_string() == "device:00000000000000ff"
        })
    }

    #[test]
    fn devices_connect_to_the_device_plane_with_their_kid_as_client_id() {
        let dev = "device:e80421321203c37f";
        let t = token(dev, NOW + 600);
        assert!(auth(PlaneKind::Device, dev, dev, &t).is_ok());
        assert!(matches!(
            auth(PlaneKind::Device, "other", dev, &t),
            Err(AuthError::ClientIdMismatch { .. })
        ));
        assert!(matches!(
            auth(PlaneKind::Operator, dev, dev, &t),
            Err(AuthError::WrongPlane { .. })
        ));
    }

    #[test]
    fn operators_and_factories_use_the_operator_plane_with_any_client_id() {
        for kid in ["operator:admin", "factory:line-1"] {
            let t = token(kid, NOW + 600);
            assert!(auth(PlaneKind::Operator, "mosquitto_sub-123", kid, &t).is_ok());
            assert!(matches!(
                auth(PlaneKind::Device, kid, kid, &t),
                Err(AuthError::WrongPlane { .. })
            ));
        }
    }

    #[test]
    fn bad_tokens_usernames_and_revoked_devices_are_refused() {
        let dev = "device:e80421321203c37f";
        let e = auth(PlaneKind::Device, dev, dev, &token(dev, NOW)).unwrap_err();
        assert_eq!(e.label(), "token_expired");
        let other = token("device:e80421321203c37e", NOW + 60);
        assert_eq!(
            auth(PlaneKind::Device, dev, dev, &other)
                .unwrap_err()
                .label(),
            "token_bad_mac"
        );
        assert_eq!(
            auth(PlaneKind::Device, dev, dev, "x").unwrap_err().label(),
            "token_malformed"
        );
        assert_eq!(
            auth(PlaneKind::Device, "b", "broker", "x")
                .unwrap_err()
                .label(),
            "wrong_plane"
        );
        assert_eq!(
            auth(PlaneKind::Device, "x", "nobody", "x")
                .unwrap_err()
                .label(),
            "bad_username"
        );
        let rev = "device:00000000000000ff";
        let t = token(rev, NOW + 60);
        assert_eq!(
            auth(PlaneKind::Device, rev, rev, &t).unwrap_err().label(),
            "revoked"
        );
    }
}
