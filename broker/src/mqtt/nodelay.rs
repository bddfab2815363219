//! `TCP_NODELAY` for the connections rumqttd accepts.
//!
//! rumqttd 0.20 binds its listener itself and never sets `TCP_NODELAY` on accepted sockets, so
//! Nagle's algorithm holds a small packet (a `committed/` confirmation) while an earlier one (the
//! PUBACK) is unacknowledged, and the client acknowledges late (delayed ACK, 40 ms on Linux):
//! the load generator measured a 43 ms median confirmation at 100 events/s (BENCHMARKS.md,
//! "Broker under MQTT load").
//!
//! On Linux an accepted socket inherits `TCP_NODELAY` from its listening socket, even when set
//! after `listen()`. So once rumqttd has bound, this module finds the listening socket among
//! the process' own file descriptors (`/proc/self/fd`), takes a duplicate of it with
//! `pidfd_getfd(2)` (safe code, no raw descriptor borrowed), and sets the option on it: every
//! connection accepted afterwards has it. Elsewhere (or if the kernel refuses `pidfd_getfd`,
//! before Linux 5.6 or under a strict seccomp policy) nothing changes but latency.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why `TCP_NODELAY` could not be set on a listener.
#[derive(Debug, Error)]
pub enum NodelayError {
    /// No listening socket bound to the address appeared in time.
    #[error("no listening socket on {0} in this process")]
    NotFound(SocketAddr),
    /// A system call failed.
    #[error("{call}: {source}")]
    Sys {
        /// Which call.
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not available on this platform.
    #[error("not supported on this platform")]
    Unsupported,
}

/// Waits up to `timeout` for this process' listening TCP socket bound to `addr` and sets
/// `TCP_NODELAY` on it, so that the connections it accepts from then on have it.
pub fn on_listener(addr: SocketAddr, timeout: Duration) -> Result<(), NodelayError> {
    let deadline = Instant::now() + timeout;
    loop {
        match imp::find_listener(addr)? {
            Some(fd) => return imp::set(&fd),
            None if Instant::now() >= deadline => return Err(NodelayError::NotFound(addr)),
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Whether `link` (the target of a `/proc/self/fd/<n>` link) names a socket.
fn is_socket_link(link: &std::path::Path) -> bool {
    link.to_str().is_some_and(|s| s.starts_with("socket:["))
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{is_socket_link, NodelayError};
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    use std::net::SocketAddr;
    use std::os::fd::OwnedFd;

    fn sys(call: &'static str) -> impl FnOnce(rustix::io::Errno) -> NodelayError {
        move |e| NodelayError::Sys {
            call,
            source: e.into(),
        }
    }

    /// A duplicate of the listening socket bound to `addr`, if there is one now.
    pub(super) fn find_listener(addr: SocketAddr) -> Result<Option<OwnedFd>, NodelayError> {
        let pidfd = pidfd_open(getpid(), PidfdFlags::empty()).map_err(sys("pidfd_open"))?;
        let dir = std::fs::read_dir("/proc/self/fd").map_err(|source| NodelayError::Sys {
            call: "read /proc/self/fd",
            source,
        })?;
        for entry in dir.flatten() {
            let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // Closed meanwhile, or not a socket: skip.
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if !is_socket_link(&link) {
                continue;
            }
            let fd = match pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::BADF) => continue,
                Err(e) => return Err(sys("pidfd_getfd")(e)),
            };
            let listening = rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false);
            let bound = rustix::net::getsockname(&fd)
                .ok()
                .and_then(|a| SocketAddr::try_from(a).ok());
            if listening && bound == Some(addr) {
                return Ok(Some(fd));
            }
        }
        Ok(None)
    }

    pub(super) fn set(fd: &OwnedFd) -> Result<(), NodelayError> {
        rustix::net::sockopt::set_tcp_nodelay(fd, true).map_err(sys("setsockopt TCP_NODELAY"))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::NodelayError;
    use std::net::SocketAddr;

    pub(super) enum Never {}

    pub(super) fn find_listener(_: SocketAddr) -> Result<Option<Never>, NodelayError> {
        Err(NodelayError::Unsupported)
    }

    pub(super) fn set(fd: &Never) -> Result<(), NodelayError> {
        match *fd {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn socket_links_are_recognised() {
        assert!(is_socket_link("socket:[12345]".as_ref()));
        assert!(!is_socket_link("/dev/null".as_ref()));
        assert!(!is_socket_link("pipe:[1]".as_ref()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn connections_accepted_after_it_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _before = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(!accepted.nodelay().unwrap(), "the default is Nagle on");

        on_listener(addr, Duration::from_secs(5)).unwrap();
        let _after = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        // A connected socket bound to the same port is not mistaken for the listener.
        assert!(!rustix::net::sockopt::socket_acceptconn(&accepted).unwrap());
    }

    #[test]
    fn an_address_nobody_listens_on_is_not_found() {
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = on_listener(free, Duration::from_millis(20)).unwrap_err();
        if cfg!(target_os = "linux") {
            assert!(
                matches!(err, NodelayError::NotFound(a) if a == free),
                "{err}"
            );
        }
    }
}
