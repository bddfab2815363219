//! The data folder: `fleet.key` (the root secret), the first identities, and `log/`.
//!
//! Secrets are written with mode 0600 into files that must not exist yet: `init` never
//! overwrites a key.

use pairbus_schemas::identity::Identity;
use pairbus_schemas::{Kid, RootSecret};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the root secret.
pub const FLEET_KEY: &str = "fleet.key";
/// File name of the first operator's identity.
pub const OPERATOR_IDENTITY: &str = "operator-admin.toml";
/// File name of the first factory station's identity.
pub const FACTORY_IDENTITY: &str = "factory-default.toml";

/// Why the data folder could not be set up or read.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `init` found a key already there.
    #[error("{0} already exists: refusing to overwrite a fleet key (move it away first)")]
    Exists(PathBuf),
    /// `fleet.key` does not hold 64 hex digits.
    #[error("{path}: {source}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: pairbus_schemas::keys::KeyError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` into a new file with mode 0600 (fails if it exists) and syncs it.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            DataDirError::Exists(path.to_owned())
        } else {
            DataDirError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// What `init` created.
#[derive(Debug)]
pub struct Initialized {
    /// The root secret's file.
    pub fleet_key: PathBuf,
    /// The operator identity's file.
    pub operator: PathBuf,
    /// The factory identity's file.
    pub factory: PathBuf,
}

/// Creates the data folder, a fresh root secret and the first operator and factory identities
/// (both connect to `operator_plane`).
pub fn init(dir: &Path, operator_plane: &str) -> Result<Initialized, DataDirError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let fleet_key = dir.join(FLEET_KEY);
    if fleet_key.exists() {
        return Err(DataDirError::Exists(fleet_key));
    }
    let root = RootSecret::generate(&mut rand_core::OsRng);
    let mut hex = root.to_hex();
    hex.push('\n');
    write_secret_file(&fleet_key, hex.as_bytes())?;
    let mut made = Vec::new();
    for (file, kid) in [
        (OPERATOR_IDENTITY, "operator:admin"),
        (FACTORY_IDENTITY, "factory:default"),
    ] {
        let kid = Kid::parse(kid).expect("built-in kids are valid");
        let identity = Identity {
            key: root.derive(&kid),
            kid,
            broker: operator_plane.to_owned(),
        };
        let path = dir.join(file);
        write_secret_file(&path, identity.to_toml().as_bytes())?;
        made.push(path);
    }
    let factory = made.pop().expect("two identities");
    let operator = made.pop().expect("two identities");
    Ok(Initialized {
        fleet_key,
        operator,
        factory,
    })
}

/// Rewrites the first identities' `broker` address (used by `serve` when it initialized the
/// folder with a port chosen by the OS, known only once the plane is bound).
pub fn point_identities(dir: &Path, operator_plane: &str) -> Result<(), DataDirError> {
    for file in [OPERATOR_IDENTITY, FACTORY_IDENTITY] {
        let path = dir.join(file);
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(io(&path))?);
        let mut identity = Identity::from_toml(&text).map_err(|e| DataDirError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        })?;
        identity.broker = operator_plane.to_owned();
        let tmp = path.with_extension("toml.new");
        let _ = std::fs::remove_file(&tmp);
        write_secret_file(&tmp, identity.to_toml().as_bytes())?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(())
}

/// Reads the root secret from `<dir>/fleet.key`.
pub fn load_root(dir: &Path) -> Result<RootSecret, DataDirError> {
    let path = dir.join(FLEET_KEY);
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(io(&path))?);
    RootSecret::from_hex(&text).map_err(|source| DataDirError::BadKey { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_private_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let made = init(dir.path(), "127.0.0.1:1884").unwrap();
        let root = load_root(dir.path()).unwrap();
        let op = Identity::from_toml(&std::fs::read_to_string(&made.operator).unwrap()).unwrap();
        assert_eq!(op.key, root.derive(&op.kid));
        assert_eq!(op.kid.to_string(), "operator:admin");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [&made.fleet_key, &made.operator, &made.factory] {
                let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
        assert!(matches!(
            init(dir.path(), "x"),
            Err(DataDirError::Exists(_))
        ));
        assert_eq!(load_root(dir.path()).unwrap().to_hex(), root.to_hex());
    }

    #[test]
    fn a_bad_fleet_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FLEET_KEY), "not hex").unwrap();
        let e = load_root(dir.path()).unwrap_err().to_string();
        assert!(e.contains("fleet.key") && e.contains("64 hex"), "{e}");
        assert!(load_root(&dir.path().join("missing")).is_err());
    }
}
