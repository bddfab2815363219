//! Keys: the fleet root secret, per-principal keys derived with HKDF-SHA256, serial hashing,
//! and the time-limited MQTT password token.
//!
//! - principal key = HKDF-SHA256(salt = `"pairbus/v1"`, IKM = root, info = kid), 32 bytes;
//! - serial key = HKDF-SHA256(salt = `"pairbus/v1"`, IKM = root, info = `"serial"`), and
//!   `serial_hash = HMAC-SHA256(serial key, serial)`; `device_id` = its first 16 hex digits;
//! - MQTT password = `<expiry unix seconds>.<hex HMAC-SHA256(key, "pairbus/v1/mqtt|" + kid + "|" + expiry)>`.
//!
//! Secrets are zeroized on drop and never shown by `Debug`.

use crate::ids::{DeviceId, Kid};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

type HmacSha256 = Hmac<Sha256>;

/// The HKDF salt of every pairbus v1 key.
pub const KDF_SALT: &[u8] = b"pairbus/v1";
/// The HKDF info of the serial-hashing key.
pub const SERIAL_INFO: &[u8] = b"serial";
/// The prefix of the MQTT token's MAC input.
pub const MQTT_TOKEN_PREFIX: &str = "pairbus/v1/mqtt|";
/// Longest MQTT token lifetime the broker accepts (expiry minus now), in seconds.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// Why a key or token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Not 64 hex digits.
    #[error("a key must be 64 hex digits (32 bytes)")]
    BadHex,
    /// Not `<digits>.<64 hex>`.
    #[error("malformed token: expected <expiry unix seconds>.<64 hex digits>")]
    MalformedToken,
    /// The token's expiry has passed.
    #[error("token expired at {expiry} (now {now})")]
    Expired {
        /// The token's expiry, Unix seconds.
        expiry: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The token expires further ahead than the broker allows.
    #[error("token lifetime too long: expires at {expiry}, more than {max} s after {now}")]
    TooLong {
        /// The token's expiry, Unix seconds.
        expiry: u64,
        /// The time it was checked at.
        now: u64,
        /// The longest lifetime accepted.
        max: u64,
    },
    /// The MAC does not match this kid's key.
    #[error("token MAC does not match")]
    BadMac,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], KeyError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| KeyError::BadHex)?;
    Ok(out)
}

/// The fleet root secret: 32 random bytes from which every key is derived.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RootSecret([u8; 32]);

impl RootSecret {
    /// Generates a fresh secret from the caller's cryptographic RNG (e.g. `rand_core::OsRng`).
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        RootSecret(bytes)
    }

    /// Wraps known bytes (test vectors, a restored backup).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        RootSecret(bytes)
    }

    /// Parses the 64 hex digits of a `fleet.key` file (surrounding whitespace allowed).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        Ok(RootSecret(parse_hex32(s)?))
    }

    /// The 64 hex digits to store in `fleet.key`.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// The key of the principal `kid`.
    pub fn derive(&self, kid: &Kid) -> Key {
        Key(self.expand(kid.to_string().as_bytes()))
    }

    fn expand(&self, info: &[u8]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(KDF_SALT), &self.0);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte maximum.
        hk.expand(info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The keyed hash of a serial number: `HMAC-SHA256(HKDF(root, "serial"), serial)`.
    pub fn serial_hash(&self, serial: &str) -> [u8; 32] {
        let key = Zeroizing::new(self.expand(SERIAL_INFO));
        hmac_sha256(&key[..], &[serial.as_bytes()])
    }
}

impl fmt::Debug for RootSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootSecret(<redacted>)")
    }
}

/// The device id that belongs to a serial hash: its first 16 hex digits.
pub fn device_id_from_serial_hash(serial_hash: &[u8; 32]) -> DeviceId {
    DeviceId::parse(&hex::encode(&serial_hash[..8])).expect("16 lower-case hex digits")
}

/// A principal's 32-byte HMAC-SHA256 key.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// Wraps known bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }

    /// Parses the 64 hex digits of an identity file's `key`.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        Ok(Key(parse_hex32(s)?))
    }

    /// The 64 hex digits to write into an identity file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    /// The raw bytes (for handing to another HMAC implementation).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac_sha256(&self.0, parts)
    }

    /// Checks a full 32-byte HMAC-SHA256 tag in constant time; any other length is refused.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac.verify_slice(tag).is_ok()
    }

    /// Mints the MQTT password for `kid`, valid until `expiry` (Unix seconds).
    pub fn mint_token(&self, kid: &Kid, expiry: u64) -> String {
        let tag = self.mac(&[&token_input(kid, expiry)]);
        format!("{expiry}.{}", hex::encode(tag))
    }

    /// Checks an MQTT password for `kid` at time `now` (Unix seconds): well formed, unexpired,
    /// not valid for longer than [`MAX_TOKEN_LIFETIME_SECS`], and MAC'd with this key.
    /// Returns the expiry.
    pub fn check_token(&self, kid: &Kid, token: &str, now: u64) -> Result<u64, KeyError> {
        let (expiry_s, mac_hex) = token.split_once('.').ok_or(KeyError::MalformedToken)?;
        if expiry_s.is_empty()
            || expiry_s.len() > 20
            || !expiry_s.bytes().all(|b| b.is_ascii_digit())
            || (expiry_s.len() > 1 && expiry_s.starts_with('0'))
            || mac_hex.len() != 64
        {
            return Err(KeyError::MalformedToken);
        }
        let expiry: u64 = expiry_s.parse().map_err(|_| KeyError::MalformedToken)?;
        let mut tag = [0u8; 32];
        hex::decode_to_slice(mac_hex, &mut tag).map_err(|_| KeyError::MalformedToken)?;
        if !self.verify(&[&token_input(kid, expiry)], &tag) {
            return Err(KeyError::BadMac);
        }
        if expiry <= now {
            return Err(KeyError::Expired { expiry, now });
        }
        if expiry - now > MAX_TOKEN_LIFETIME_SECS {
            return Err(KeyError::TooLong {
                expiry,
                now,
                max: MAX_TOKEN_LIFETIME_SECS,
            });
        }
        Ok(expiry)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

fn token_input(kid: &Kid, expiry: u64) -> Vec<u8> {
    format!("{MQTT_TOKEN_PREFIX}{kid}|{expiry}").into_bytes()
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootSecret {
        RootSecret::from_bytes(core::array::from_fn(|i| i as u8))
    }

    #[test]
    fn derivation_is_hkdf_with_the_kid_as_info() {
        // RFC 5869 HKDF computed by hand: PRK = HMAC(salt, IKM), OKM = HMAC(PRK, info || 0x01).
        let kid = Kid::parse("operator:admin").unwrap();
        let prk = hmac_sha256(KDF_SALT, &[&root().0]);
        let okm = hmac_sha256(&prk, &[b"operator:admin", &[1]]);
        assert_eq!(root().derive(&kid).as_bytes(), &okm);
        assert_ne!(
            root().derive(&kid),
            root().derive(&Kid::parse("operator:admin2").unwrap())
        );
    }

    #[test]
    fn serial_hash_is_keyed_and_gives_the_device_id() {
        let h = root().serial_hash("SN-0001");
        assert_ne!(h, root().serial_hash("SN-0002"));
        let other_root = RootSecret::from_bytes([9; 32]);
        assert_ne!(h, other_root.serial_hash("SN-0001"));
        assert_eq!(
            device_id_from_serial_hash(&h).as_str(),
            &hex::encode(h)[..16]
        );
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let r = root();
        assert_eq!(format!("{r:?}"), "RootSecret(<redacted>)");
        let k = r.derive(&Kid::broker());
        assert!(!format!("{k:?}").contains(&k.to_hex()[..8]));
    }

    #[test]
    fn hex_round_trip_and_refusal() {
        let r = root();
        assert_eq!(RootSecret::from_hex(&r.to_hex()).unwrap().0, r.0);
        assert_eq!(RootSecret::from_hex("abcd").unwrap_err(), KeyError::BadHex);
        assert_eq!(
            Key::from_hex(&"zz".repeat(32)).unwrap_err(),
            KeyError::BadHex
        );
    }

    #[test]
    fn tokens_check_mac_expiry_and_lifetime() {
        let kid = Kid::parse("device:e80421321203c37f").unwrap();
        let key = root().derive(&kid);
        let now = 1_800_000_000;
        let tok = key.mint_token(&kid, now + 600);
        assert_eq!(key.check_token(&kid, &tok, now), Ok(now + 600));
        assert_eq!(
            key.check_token(&kid, &tok, now + 600),
            Err(KeyError::Expired {
                expiry: now + 600,
                now: now + 600
            })
        );
        let other = Kid::parse("device:e80421321203c37e").unwrap();
        assert_eq!(key.check_token(&other, &tok, now), Err(KeyError::BadMac));
        let long = key.mint_token(&kid, now + MAX_TOKEN_LIFETIME_SECS + 1);
        assert!(matches!(
            key.check_token(&kid, &long, now),
            Err(KeyError::TooLong { .. })
        ));
        for bad in [
            "",
            ".",
            "123",
            "x.00",
            "0123.ab",
            &format!("+5.{}", "0".repeat(64)),
        ] {
            assert_eq!(
                key.check_token(&kid, bad, now),
                Err(KeyError::MalformedToken),
                "{bad}"
            );
        }
        // A truncated tag is refused as malformed, never compared as a prefix.
        assert_eq!(
            key.check_token(&kid, &tok[..tok.len() - 2], now),
            Err(KeyError::MalformedToken)
        );
    }
}
