//! Identity files: what a principal needs to connect and sign (TOML, mode 0600).
//!
//! ```toml
//! kid = "device:e80421321203c37f"
//! key = "<64 hex digits>"
//! broker = "127.0.0.1:1883"
//! ```
//!
//! Parsing and formatting are pure; reading and writing the file (and its mode) is the
//! binaries' job. Unknown fields are refused so that a typo is an error, not a silent default.

use crate::ids::Kid;
use crate::keys::Key;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;
use zeroize::Zeroizing;

/// Why an identity file was refused.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Not valid TOML, or fields missing, unknown or of the wrong type.
    #[error("identity file: {0}")]
    Toml(String),
    /// The `kid` field is not a valid kid.
    #[error("identity file: field `kid`: {0}")]
    Kid(#[from] crate::ids::IdError),
    /// The `key` field is not 64 hex digits.
    #[error("identity file: field `key`: {0}")]
    Key(#[from] crate::keys::KeyError),
}

/// A principal's identity: its kid, its own key and where its broker is.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The principal.
    pub kid: Kid,
    /// Its own derived key.
    pub key: Key,
    /// `host:port` of the broker plane it connects to.
    pub broker: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    kid: String,
    key: String,
    broker: String,
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl Identity {
    /// Parses the TOML text of an identity file.
    pub fn from_toml(text: &str) -> Result<Self, IdentityError> {
        let file: IdentityFile =
            toml::from_str(text).map_err(|e| IdentityError::Toml(e.message().to_owned()))?;
        Ok(Identity {
            kid: Kid::parse(&file.kid)?,
            key: Key::from_hex(&file.key)?,
            broker: file.broker.clone(),
        })
    }

    /// The TOML text to write into the file (it holds the key: zeroized on drop).
    pub fn to_toml(&self) -> Zeroizing<String> {
        let file = IdentityFile {
            kid: self.kid.to_string(),
            key: self.key.to_hex().to_string(),
            broker: self.broker.clone(),
        };
        Zeroizing::new(toml::to_string(&file).expect("three strings serialize"))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("kid", &self.kid)
            .field("key", &"<redacted>")
            .field("broker", &self.broker)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootSecret;

    #[test]
    fn round_trip_and_redaction() {
        let kid = Kid::parse("device:e80421321203c37f").unwrap();
        let id = Identity {
            key: RootSecret::from_bytes([1; 32]).derive(&kid),
            kid,
            broker: "127.0.0.1:1883".into(),
        };
        let text = id.to_toml();
        assert!(
            text.contains(r#"kid = "device:e80421321203c37f""#),
            "{}",
            *text
        );
        assert_eq!(Identity::from_toml(&text).unwrap(), id);
        assert!(!format!("{id:?}").contains(id.key.to_hex().as_str()));
    }

    #[test]
    fn bad_files_name_the_problem() {
        let key = "ab".repeat(32);
        let ok =
            format!("kid = \"operator:admin\"\nkey = \"{key}\"\nbroker = \"127.0.0.1:1884\"\n");
        assert!(Identity::from_toml(&ok).is_ok());
        let e = Identity::from_toml(&ok.replace("operator:admin", "boss")).unwrap_err();
        assert!(e.to_string().contains("`kid`"), "{e}");
        let e = Identity::from_toml(&ok.replace(&key, "abc")).unwrap_err();
        assert!(e.to_string().contains("`key`"), "{e}");
        let e = Identity::from_toml(&format!("{ok}colour = \"red\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Identity::from_toml("kid = ").unwrap_err();
        assert!(matches!(e, IdentityError::Toml(_)));
    }
}
