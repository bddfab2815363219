//! The factory station: makes a device from its serial number.
//!
//! **Key custody (v1).** A device's key is HKDF(root, `device:<id>`) and its serial hash is
//! keyed with HKDF(root, `serial`): both need the fleet root secret, which a factory key
//! cannot produce (HKDF is one-way, and the broker verifies every device key by deriving it
//! from the root). So `make` takes the root (`--fleet-key FILE`): the factory station is
//! trusted with the root in v1, a documented limit. It writes only the device's own key into
//! the device's identity file, so a device never learns any key but its own; the root is never
//! written, logged or sent.

use crate::draft::{self, Draft, ManufactureSpec};
use crate::error::AgentError;
use pairbus_schemas::identity::Identity;
use pairbus_schemas::ids::{DeviceId, Kid};
use pairbus_schemas::keys::{device_id_from_serial_hash, Key, RootSecret};
use pairbus_schemas::qr::{encode_qr, QrClaims};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Longest serial number accepted.
pub const MAX_SERIAL_LEN: usize = 128;

/// A device as the factory makes it (pure: nothing written yet).
#[derive(Debug)]
pub struct MadeDevice {
    /// Its id (first 16 hex digits of the serial hash).
    pub device_id: DeviceId,
    /// Its identity (its own key only).
    pub identity: Identity,
    /// The signed QR text.
    pub qr: String,
    /// The QR's expiry, Unix seconds.
    pub qr_expires_at: u64,
    /// The `device.manufactured` draft.
    pub draft: Draft,
}

/// Checks a serial number: 1 to 128 printable ASCII characters without spaces.
pub fn check_serial(serial: &str) -> Result<(), AgentError> {
    if serial.is_empty()
        || serial.len() > MAX_SERIAL_LEN
        || !serial.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(AgentError::Invalid(format!(
            "serial number must be 1 to {MAX_SERIAL_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

/// Makes a device (pure): serial hash, id, key, QR claims signed by the factory, and the
/// `device.manufactured` draft. `now_secs` is the QR's `iat`; it expires `ttl_secs` later.
#[allow(clippy::too_many_arguments)]
pub fn make_device(
    root: &RootSecret,
    factory: &Kid,
    factory_key: &Key,
    serial: &str,
    spec: ManufactureSpec,
    device_broker: &str,
    now_secs: u64,
    ttl_secs: u64,
) -> Result<MadeDevice, AgentError> {
    check_serial(serial)?;
    let serial_hash = root.serial_hash(serial);
    let device_id = device_id_from_serial_hash(&serial_hash);
    let kid = device_id.kid();
    let exp = now_secs.saturating_add(ttl_secs);
    let qr = encode_qr(
        &QrClaims {
            device_id: device_id.clone(),
            device_type: spec.device_type.clone(),
            model: spec.model.clone(),
            iat: now_secs,
            exp,
        },
        factory,
        factory_key,
    );
    Ok(MadeDevice {
        identity: Identity {
            key: root.derive(&kid),
            kid,
            broker: device_broker.to_owned(),
        },
        draft: draft::manufactured(
            device_id.clone(),
            serial_hash,
            spec,
            exp.saturating_mul(1000),
        ),
        device_id,
        qr,
        qr_expires_at: exp,
    })
}

/// Checks that `key` is the key the root derives for `kid` (a factory identity that does not
/// belong to this fleet would make devices the broker cannot verify).
pub fn check_factory_key(root: &RootSecret, kid: &Kid, key: &Key) -> Result<(), AgentError> {
    if &root.derive(kid) != key {
        return Err(AgentError::Invalid(format!(
            "the fleet key does not match the identity of {kid}: wrong fleet.key or identity file"
        )));
    }
    Ok(())
}

/// Writes `contents` to a new file with mode 0600; refuses to overwrite.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| AgentError::io(path, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| AgentError::io(path, e))
}

/// Reads a `fleet.key` file.
pub fn read_fleet_key(path: &Path) -> Result<RootSecret, AgentError> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?,
    );
    RootSecret::from_hex(&text).map_err(|e| AgentError::Invalid(format!("{}: {e}", path.display())))
}

/// Where `make` writes a device's files.
#[derive(Debug, Clone)]
pub struct OutputPaths {
    /// The identity file.
    pub identity: PathBuf,
    /// The PNG, if wanted.
    pub png: Option<PathBuf>,
    /// The SVG, if wanted.
    pub svg: Option<PathBuf>,
}

impl OutputPaths {
    /// The default paths in `dir`: `<device_id>.toml`, `.png`, `.svg`.
    pub fn in_dir(dir: &Path, device_id: &DeviceId) -> Self {
        Self::named(dir, device_id.as_str())
    }

    /// The paths in `dir` for a chosen base name (see [`check_file_stem`]): `<stem>.toml`,
    /// `.png`, `.svg`.
    pub fn named(dir: &Path, stem: &str) -> Self {
        OutputPaths {
            identity: dir.join(format!("{stem}.toml")),
            png: Some(dir.join(format!("{stem}.png"))),
            svg: Some(dir.join(format!("{stem}.svg"))),
        }
    }
}

/// Checks a file base name chosen for a device's files: 1 to 64 characters of
/// `[A-Za-z0-9_.-]`, not starting with a dot (no paths, no hidden files).
pub fn check_file_stem(stem: &str) -> Result<(), AgentError> {
    let ok = !stem.is_empty()
        && stem.len() <= 64
        && !stem.starts_with('.')
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "file name `{stem}`: 1 to 64 characters of A-Z a-z 0-9 _ . - not starting with a dot"
        )))
    }
}

/// Decides whether a device was already made (for `--skip-existing`): `existing` is the
/// identity file found where `made` would be written. The same identity: already made;
/// another one: an error (that file belongs to a different device or fleet).
pub fn already_made(existing: Option<&Identity>, made: &Identity) -> Result<bool, AgentError> {
    match existing {
        None => Ok(false),
        Some(e) if e.kid == made.kid && e.key == made.key => Ok(true),
        Some(e) => Err(AgentError::Invalid(format!(
            "an identity file for {} is already where {} would be written",
            e.kid, made.kid
        ))),
    }
}

/// Writes the device's identity file (0600, never overwritten) and its QR images.
pub fn write_outputs(made: &MadeDevice, paths: &OutputPaths) -> Result<(), AgentError> {
    write_secret_file(&paths.identity, made.identity.to_toml().as_bytes())?;
    if let Some(p) = &paths.png {
        crate::qrimage::write_png(&made.qr, p)?;
    }
    if let Some(p) = &paths.svg {
        std::fs::write(p, crate::qrimage::to_svg(&made.qr)?).map_err(|e| AgentError::io(p, e))?;
    }
    Ok(())
}

/// One row of a `batch` CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// Line number (1-based) for messages.
    pub line: usize,
    /// Serial number.
    pub serial: String,
    /// Device type.
    pub device_type: String,
    /// Model (empty: the type).
    pub model: Option<String>,
    /// Name (empty: generated).
    pub name: Option<String>,
    /// Components `kind=spec` separated by `;`.
    pub components: Vec<String>,
    /// Base name of the device's files (empty: the device id).
    pub file: Option<String>,
}

/// Parses a batch CSV: a header naming at least `serial` and `type` (also `model`, `name`,
/// `components`, `file`, in any order); comma-separated, no quoting; `#` lines and blank lines skipped.
pub fn parse_batch_csv(text: &str) -> Result<Vec<BatchRow>, AgentError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or_else(|| AgentError::Invalid("batch CSV is empty".into()))?;
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| cols.iter().position(|c| c == name);
    let (Some(serial_i), Some(type_i)) = (col("serial"), col("type")) else {
        return Err(AgentError::Invalid(
            "batch CSV header must name the columns `serial` and `type` (optional: model, name, components, file)".into(),
        ));
    };
    let (model_i, name_i, comp_i, file_i) =
        (col("model"), col("name"), col("components"), col("file"));
    let mut rows = Vec::new();
    for (line, l) in lines {
        let fields: Vec<&str> = l.split(',').map(str::trim).collect();
        if fields.len() > cols.len() {
            return Err(AgentError::Invalid(format!(
                "batch CSV line {line}: {} fields, the header has {}",
                fields.len(),
                cols.len()
            )));
        }
        let get = |i: Option<usize>| {
            i.and_then(|i| fields.get(i))
                .filter(|s| !s.is_empty())
                .map(|s| s.to_string())
        };
        let (Some(serial), Some(device_type)) = (get(Some(serial_i)), get(Some(type_i))) else {
            return Err(AgentError::Invalid(format!(
                "batch CSV line {line}: serial and type are required"
            )));
        };
        rows.push(BatchRow {
            line,
            serial,
            device_type,
            model: get(model_i),
            name: get(name_i),
            components: get(comp_i)
                .map(|c| {
                    c.split(';')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            file: get(file_i),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pairbus_schemas::event::Body;
    use pairbus_schemas::qr::verify_qr;

    #[test]
    fn made_device_matches_what_the_broker_derives() {
        let root = RootSecret::from_bytes([5; 32]);
        let fac = Kid::parse("factory:line-1").unwrap();
        let fkey = root.derive(&fac);
        let spec = ManufactureSpec {
            device_type: "phone".into(),
            model: "P1".into(),
            manufacturer: "acme".into(),
            name: "n".into(),
            components: vec![],
        };
        let m = make_device(&root, &fac, &fkey, "SN-1", spec, "127.0.0.1:1883", 1000, 50).unwrap();
        assert_eq!(
            m.device_id,
            device_id_from_serial_hash(&root.serial_hash("SN-1"))
        );
        assert_eq!(m.identity.key, root.derive(&m.device_id.kid()));
        let v = verify_qr(&m.qr, 1000, |k| Some(root.derive(k))).unwrap();
        assert_eq!((v.claims.exp, v.factory), (1050, fac.clone()));
        let Body::Manufactured(b) = &m.draft.body else {
            panic!()
        };
        assert_eq!(b.qr_expires_at, 1_050_000);
        let toml = m.identity.to_toml();
        assert!(!toml.contains("SN-1"), "the serial is never stored");
        assert!(check_factory_key(&root, &fac, &fkey).is_ok());
        assert!(check_factory_key(&RootSecret::from_bytes([6; 32]), &fac, &fkey).is_err());
        assert!(check_serial("has space").is_err() && check_serial("").is_err());
    }

    #[test]
    fn identity_files_are_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.toml");
        write_secret_file(&p, b"x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(write_secret_file(&p, b"y").is_err());
    }

    #[test]
    fn batch_csv() {
        let rows = parse_batch_csv("# comment\nserial,type,model,components\nA1,phone,P1,camera=12MP;battery=4Ah\n\nA2,sensor\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].components, vec!["camera=12MP", "battery=4Ah"]);
        assert_eq!((rows[1].line, rows[1].model.as_deref()), (5, None));
        assert!(parse_batch_csv("sn,type\n").is_err());
        assert!(parse_batch_csv("serial,type\n,phone\n").is_err());
        assert!(parse_batch_csv("serial,type\na,b,c\n").is_err());
        let rows = parse_batch_csv("serial,type,file\nA1,phone,manager\nA2,sensor\n").unwrap();
        assert_eq!(rows[0].file.as_deref(), Some("manager"));
        assert_eq!(rows[1].file, None);
    }

    #[test]
    fn chosen_file_names() {
        for ok in ["manager", "sensor-1", "a.b_c", "X"] {
            assert!(check_file_stem(ok).is_ok(), "{ok}");
            let p = OutputPaths::named(Path::new("/d"), ok);
            assert_eq!(p.identity, Path::new("/d").join(format!("{ok}.toml")));
            assert_eq!(p.png, Some(Path::new("/d").join(format!("{ok}.png"))));
        }
        let long = "a".repeat(65);
        for bad in ["", ".hidden", "../x", "a/b", "sp ace", long.as_str()] {
            let e = check_file_stem(bad).unwrap_err().to_string();
            assert!(e.contains("file name"), "{bad}: {e}");
        }
    }

    #[test]
    fn already_made_only_for_the_same_identity() {
        let root = RootSecret::from_bytes([5; 32]);
        let ident = |kid: &str| {
            let kid = Kid::parse(kid).unwrap();
            Identity {
                key: root.derive(&kid),
                kid,
                broker: "b:1".into(),
            }
        };
        let made = ident("device:0123456789abcdef");
        assert!(!already_made(None, &made).unwrap());
        assert!(already_made(Some(&made), &made).unwrap());
        // Same kid, another fleet's key; or another device: not ours to skip.
        let mut foreign = made.clone();
        foreign.key = RootSecret::from_bytes([6; 32]).derive(&made.kid);
        assert!(already_made(Some(&foreign), &made).is_err());
        let other = ident("device:0123456789abcdee");
        let e = already_made(Some(&other), &made).unwrap_err().to_string();
        assert!(e.contains("0123456789abcdee"), "{e}");
    }
}
