//! The line `pairbus-broker serve` prints on stdout once every listener is bound, so that a
//! script or a test that started it on port 0 learns the addresses:
//!
//! ```text
//! pairbus broker ready: device plane 127.0.0.1:1883, operator plane 127.0.0.1:1884, HTTP http://127.0.0.1:8080, data ./pairbus-data
//! ```
//!
//! [`Ready`]'s `Display` writes it and [`Ready::parse`] reads it back, so the two cannot drift.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What the ready line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The device plane's address.
    pub device: SocketAddr,
    /// The operator plane's address.
    pub operator: SocketAddr,
    /// The HTTP API's address.
    pub http: SocketAddr,
    /// The data folder.
    pub data: PathBuf,
}

const PREFIX: &str = "pairbus broker ready: device plane ";

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}, operator plane {}, HTTP http://{}, data {}",
            self.device,
            self.operator,
            self.http,
            self.data.display()
        )
    }
}

impl Ready {
    /// Reads a ready line (a trailing newline is ignored); `None` if it is not one.
    pub fn parse(line: &str) -> Option<Ready> {
        let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(PREFIX)?;
        let (device, rest) = rest.split_once(", operator plane ")?;
        let (operator, rest) = rest.split_once(", HTTP http://")?;
        let (http, data) = rest.split_once(", data ")?;
        Some(Ready {
            device: device.parse().ok()?,
            operator: operator.parse().ok()?,
            http: http.parse().ok()?,
            data: PathBuf::from(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_written_reads_back() {
        let r = Ready {
            device: "127.0.0.1:1883".parse().unwrap(),
            operator: "[::1]:1884".parse().unwrap(),
            http: "0.0.0.0:8080".parse().unwrap(),
            data: PathBuf::from("/tmp/a folder, with a comma"),
        };
        let line = format!("{r}\n");
        assert!(line.starts_with("pairbus broker ready: device plane 127.0.0.1:1883, "));
        assert_eq!(Ready::parse(&line), Some(r));
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        assert_eq!(Ready::parse(""), None);
        assert_eq!(
            Ready::parse("pairbus broker ready: device plane nowhere"),
            None
        );
        assert_eq!(
            Ready::parse("pairbus broker ready: device plane 127.0.0.1:1, operator plane x, HTTP http://127.0.0.1:3, data d"),
            None
        );
    }
}
