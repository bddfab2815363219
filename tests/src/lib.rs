//! Helpers for the end-to-end tests: the real binaries (`pairbus-broker`, `pairbus-agent`,
//! `pairbus-projector`) run as child processes on free loopback ports, each in its own
//! process (rumqttd's router threads cannot be stopped, so brokers never share a test process).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;

/// The directory of the binaries built with these tests (`target/<profile>`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory")
        .to_owned()
}

static BUILD: Once = Once::new();

/// Path to a workspace binary, building the three binaries once if they are missing (e.g. when
/// only this package's tests are run).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    BUILD.call_once(|| {
        let missing = ["pairbus-broker", "pairbus-agent", "pairbus-projector"]
            .iter()
            .any(|b| !bin_dir().join(b).exists());
        if missing {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--bins",
                "-p",
                "pairbus-broker",
                "-p",
                "pairbus-agent",
                "-p",
                "pairbus-projector",
            ]);
            if bin_dir().ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo build runs");
            assert!(status.success(), "building the pairbus binaries failed");
        }
    });
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// A running `pairbus-broker serve` on free loopback ports.
pub struct Broker {
    child: Child,
    /// The data folder.
    pub data: PathBuf,
    /// `127.0.0.1:<port>` of the device plane.
    pub device: String,
    /// `127.0.0.1:<port>` of the operator plane.
    pub operator: String,
    /// `127.0.0.1:<port>` of the HTTP API.
    pub http: String,
}

fn field<'a>(line: &'a str, after: &str) -> &'a str {
    line.split(after)
        .nth(1)
        .and_then(|r| r.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no `{after}` in ready line {line:?}"))
}

impl Broker {
    /// Starts `serve` on `data` (initialized on first start) and rewrites the operator and
    /// factory identities to point at the chosen operator plane.
    pub fn start(data: &Path) -> Broker {
        let mut child = Command::new(bin("pairbus-broker"))
            .args(["serve", "--data"])
            .arg(data)
            .args([
                "--device-listen",
                "127.0.0.1:0",
                "--operator-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .env("PAIRBUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let device = field(&line, "device plane ").to_owned();
        let operator = field(&line, "operator plane ").to_owned();
        let http = field(&line, "HTTP http://").to_owned();
        for id in ["operator-admin.toml", "factory-default.toml"] {
            let p = data.join(id);
            let text = std::fs::read_to_string(&p).expect("identity file");
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("broker") {
                        format!("broker = \"{operator}\"")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&p, text + "\n").expect("identity rewritten");
        }
        Broker {
            child,
            data: data.to_owned(),
            device,
            operator,
            http,
        }
    }

    /// Stops it with SIGTERM (graceful) and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion; panics with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `pairbus-agent --identity <identity> <args…>` to completion.
pub fn agent(identity: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(bin("pairbus-agent"))
            .arg("--identity")
            .arg(identity)
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A long-running `pairbus-agent … run`, killed on drop.
pub struct Running(Child);

impl Running {
    /// Starts `run` for a device identity.
    pub fn device(identity: &Path) -> Running {
        Running(
            Command::new(bin("pairbus-agent"))
                .arg("--identity")
                .arg(identity)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("agent run starts"),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
