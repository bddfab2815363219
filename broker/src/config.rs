//! `serve` settings: built-in defaults, overridden by a TOML config file, overridden by
//! `PAIRBUS_*` environment variables and command-line flags (clap reads both).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default device plane listener.
pub const DEFAULT_DEVICE_LISTEN: &str = "127.0.0.1:1883";
/// Default operator plane listener.
pub const DEFAULT_OPERATOR_LISTEN: &str = "127.0.0.1:1884";
/// Default HTTP API listener.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Default data folder.
pub const DEFAULT_DATA_DIR: &str = "./pairbus-data";

/// The config file (every field optional).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data folder.
    pub data: Option<PathBuf>,
    /// Device plane listener.
    pub device_listen: Option<SocketAddr>,
    /// Operator plane listener.
    pub operator_listen: Option<SocketAddr>,
    /// HTTP API listener.
    pub http_listen: Option<SocketAddr>,
}

impl FileConfig {
    /// Parses the TOML text of a config file.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Data folder.
    pub data: PathBuf,
    /// Device plane listener.
    pub device_listen: SocketAddr,
    /// Operator plane listener.
    pub operator_listen: SocketAddr,
    /// HTTP API listener.
    pub http_listen: SocketAddr,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("built-in default addresses parse")
}

/// Merges: `overrides` (flags or environment) win over `file`, which wins over the defaults.
pub fn resolve(overrides: FileConfig, file: FileConfig) -> ServeConfig {
    ServeConfig {
        data: overrides
            .data
            .or(file.data)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        device_listen: overrides
            .device_listen
            .or(file.device_listen)
            .unwrap_or_else(|| addr(DEFAULT_DEVICE_LISTEN)),
        operator_listen: overrides
            .operator_listen
            .or(file.operator_listen)
            .unwrap_or_else(|| addr(DEFAULT_OPERATOR_LISTEN)),
        http_listen: overrides
            .http_listen
            .or(file.http_listen)
            .unwrap_or_else(|| addr(DEFAULT_HTTP_LISTEN)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let file =
            FileConfig::parse("data = \"/srv/pb\"\nhttp_listen = \"127.0.0.1:9000\"\n").unwrap();
        let flags = FileConfig {
            http_listen: Some(addr("127.0.0.1:9100")),
            ..Default::default()
        };
        let c = resolve(flags, file);
        assert_eq!(c.data, PathBuf::from("/srv/pb"));
        assert_eq!(c.http_listen, addr("127.0.0.1:9100"));
        assert_eq!(c.device_listen, addr(DEFAULT_DEVICE_LISTEN));
        assert_eq!(c.operator_listen, addr(DEFAULT_OPERATOR_LISTEN));
    }

    #[test]
    fn unknown_or_bad_fields_are_errors() {
        assert!(FileConfig::parse("colour = 1")
            .unwrap_err()
            .contains("colour"));
        assert!(FileConfig::parse("http_listen = \"nowhere\"").is_err());
    }
}
