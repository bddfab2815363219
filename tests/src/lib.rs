//! Helpers for the end-to-end tests: the real binaries (`pairbus-broker`, `pairbus-agent`,
//! `pairbus-projector`) run as child processes on free loopback ports, each in its own
//! process (rumqttd's router threads cannot be stopped, so brokers never share a test process).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

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
        Broker::start_at(data, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Like [`Broker::start`], with the device and operator planes on the given addresses
    /// (e.g. `127.0.0.1:<free_port()>`, so that identities can name them before the broker runs).
    pub fn start_at(data: &Path, device_listen: &str, operator_listen: &str) -> Broker {
        let mut child = Command::new(bin("pairbus-broker"))
            .args(["serve", "--data"])
            .arg(data)
            .args([
                "--device-listen",
                device_listen,
                "--operator-listen",
                operator_listen,
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
            point_identity(&data.join(id), &operator);
        }
        Broker {
            child,
            data: data.to_owned(),
            device,
            operator,
            http,
        }
    }

    /// `GET http://<http><path>` with the operator's bearer token; the JSON answer (panics on
    /// a non-200 status).
    pub fn get(&self, path: &str) -> serde_json::Value {
        api_get(&self.http, &self.data.join("operator-admin.toml"), path)
    }

    /// The embedded projector's history of a device (`/v1/devices/<id>/history`): its entries.
    pub fn history(&self, device: &str) -> Vec<serde_json::Value> {
        self.get(&format!("/v1/devices/{device}/history"))["entries"]
            .as_array()
            .expect("history entries")
            .clone()
    }

    /// Stops it with SIGTERM (graceful) and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Stops it gracefully, checks the whole log offline (`pairbus-broker verify`) and returns
    /// every logged event (`pairbus-broker export`).
    pub fn stop_and_read_log(self) -> Vec<Logged> {
        let data = self.data.clone();
        self.stop();
        verify(&data);
        logged_events(&data)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET http://<http><path>` on a query API (the broker's or `pairbus-projector serve`'s) with
/// the bearer token of the operator identity `operator`; the JSON answer (panics on a non-200
/// status).
pub fn api_get(http: &str, operator: &Path, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let token = agent(operator, &["token", "--bearer"]);
    let mut s = std::net::TcpStream::connect(http).expect("HTTP connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {http}\r\nAuthorization: {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("HTTP answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP head");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}\n{body}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
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

/// Rewrites the `broker = "…"` line of an identity file.
pub fn point_identity(file: &Path, addr: &str) {
    let text = std::fs::read_to_string(file).expect("identity file");
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("broker") {
                format!("broker = \"{addr}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(file, text + "\n").expect("identity rewritten");
}

/// A loopback port nobody listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// `pairbus-broker init --data <data>`: fleet key and first identities, without serving.
pub fn init_data(data: &Path, operator_addr: &str) {
    run_ok(
        Command::new(bin("pairbus-broker"))
            .args(["init", "--data"])
            .arg(data)
            .args(["--operator-addr", operator_addr])
            .env("PAIRBUS_LOG", "warn"),
    );
}

/// `pairbus-agent --identity <identity> <args…>`, whatever its exit status.
pub fn agent_output(identity: &Path, args: &[&str]) -> Output {
    Command::new(bin("pairbus-agent"))
        .arg("--identity")
        .arg(identity)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("pairbus-agent runs")
}

/// The `queued <type> id=<hex> seq=<n>` lines of an agent's output.
pub fn queued(out: &str) -> Vec<(String, String, u64)> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("queued ")?;
            let mut it = rest.split_whitespace();
            let t = it.next()?.to_owned();
            let id = it.next()?.strip_prefix("id=")?.to_owned();
            let seq = it.next()?.strip_prefix("seq=")?.parse().ok()?;
            Some((t, id, seq))
        })
        .collect()
}

/// The device id in `make`'s `made device <id> -> …` line.
pub fn made_device(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("made device "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `made device` line in {out}"))
        .to_owned()
}

/// Polls `f` every 100 ms until it holds; panics naming `what` after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pairbus-broker verify --data <data>` (the broker must be stopped); panics if it fails.
pub fn verify(data: &Path) -> String {
    let out = run_ok(
        Command::new(bin("pairbus-broker"))
            .args(["verify", "--data"])
            .arg(data)
            .env("PAIRBUS_LOG", "warn"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One record of the log, its event opened with the key the fleet root derives.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The log's own sequence number.
    pub log_seq: u64,
    /// The event.
    pub event: pairbus_schemas::Event,
}

/// The log's events signed by `kid`, as `(id hex, seq)` in log order, after checking that no
/// event id appears twice anywhere in the log.
pub fn device_events(log: &[Logged], kid: &str) -> Vec<(String, u64)> {
    let mut seen = std::collections::HashMap::new();
    for l in log {
        if let Some(prev) = seen.insert(l.event.id, l.log_seq) {
            panic!(
                "event {} logged twice (log seqs {prev} and {})",
                l.event.id, l.log_seq
            );
        }
    }
    log.iter()
        .filter(|l| l.event.src.to_string() == kid)
        .map(|l| (l.event.id.to_hex(), l.event.seq))
        .collect()
}

/// Delivers what is still pending in `identity`'s outbox (`send`) and checks that nothing is
/// left pending and nothing was refused. (The log can show an event before a stopped `run`
/// got its confirmation; re-sending it is answered `already_committed`.)
pub fn drain_outbox(identity: &Path) {
    let o = agent(identity, &["send"]);
    assert!(
        o.contains("delivered:") || o.contains("0 event(s) pending"),
        "{o}"
    );
    let listed = agent(identity, &["outbox"]);
    assert!(!listed.contains("pending "), "all confirmed: {listed}");
    assert!(!listed.contains("refused "), "none refused: {listed}");
}

/// The whole log of a stopped broker (`export --format jsonl`), every event opened and
/// MAC-checked with the fleet root in `<data>/fleet.key`.
pub fn logged_events(data: &Path) -> Vec<Logged> {
    let out = run_ok(
        Command::new(bin("pairbus-broker"))
            .args(["export", "--format", "jsonl", "--data"])
            .arg(data)
            .env("PAIRBUS_LOG", "warn"),
    );
    let root = fleet_root(data);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("jsonl record");
            let cose = hex::decode(v["event"].as_str().expect("event hex")).expect("hex");
            let event = pairbus_schemas::open_event(&cose, pairbus_schemas::MAX_EVENT_SIZE, |k| {
                Some(root.derive(k))
            })
            .expect("every logged event opens with the fleet root");
            Logged {
                log_seq: v["seq"].as_u64().expect("seq"),
                event,
            }
        })
        .collect()
}

/// The fleet root secret of a data folder.
pub fn fleet_root(data: &Path) -> pairbus_schemas::RootSecret {
    let hex = std::fs::read_to_string(data.join("fleet.key")).expect("fleet.key");
    pairbus_schemas::RootSecret::from_hex(hex.trim()).expect("fleet.key holds a root")
}

fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').expect("address is host:port")
}

fn mosquitto(tool: &str) -> Command {
    let probe = Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        probe.is_ok(),
        "{tool} not found: install mosquitto-clients (.ci/run does)"
    );
    Command::new(tool)
}

/// One QoS 1 PUBLISH of `payload` on `topic` with Debian's `mosquitto_pub`, connected as
/// `client_id`/`user`/`password`. Stands for a hostile (but authenticated) client writing
/// where rumqttd 0.20 cannot stop it.
pub fn raw_publish(
    addr: &str,
    client_id: &str,
    user: &str,
    password: &str,
    topic: &str,
    payload: &[u8],
) {
    let (host, port) = host_port(addr);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), payload).expect("payload written");
    run_ok(
        mosquitto("mosquitto_pub")
            .args([
                "-h", host, "-p", port, "-i", client_id, "-u", user, "-P", password,
            ])
            .args(["-t", topic, "-q", "1", "-f"])
            .arg(file.path()),
    );
}

/// The retained message of `topic`, if any arrives within a second, read with Debian's
/// `mosquitto_sub` connected as `client_id`/`user`/`password`.
pub fn retained(
    addr: &str,
    client_id: &str,
    user: &str,
    password: &str,
    topic: &str,
) -> Option<Vec<u8>> {
    let (host, port) = host_port(addr);
    let out = mosquitto("mosquitto_sub")
        .args([
            "-h", host, "-p", port, "-i", client_id, "-u", user, "-P", password,
        ])
        .args(["-t", topic, "-C", "1", "-W", "1", "-F", "%x"])
        .output()
        .expect("mosquitto_sub runs");
    if !out.status.success() {
        return None; // timed out: nothing retained
    }
    hex::decode(String::from_utf8_lossy(&out.stdout).trim()).ok()
}

/// Waits until a running device's retained presence card on the device plane says `online`
/// (the agent publishes it after its SUBACK, so its `cmd/` subscription is in place). Reads it
/// as `reader` (another device's identity file, never running).
pub fn wait_online(device_plane: &str, reader: &Path, device: &str) {
    let text = std::fs::read_to_string(reader).expect("reader identity");
    let kid = text
        .lines()
        .find_map(|l| l.strip_prefix("kid = "))
        .expect("kid line")
        .trim_matches('"')
        .to_owned();
    wait_until(20, &format!("{device} online"), || {
        let token = agent(reader, &["token"]);
        retained(
            device_plane,
            &kid,
            &kid,
            token.trim(),
            &format!("pairbus/v1/presence/{device}"),
        )
        .is_some_and(|card| String::from_utf8_lossy(&card).contains(r#""status":"online""#))
    });
}

/// A long-running `pairbus-agent … run`, killed on drop.
pub struct Running(Child);

impl Running {
    /// Starts `run` for a device identity.
    pub fn device(identity: &Path) -> Running {
        Running::device_with(identity, &[])
    }

    /// Starts `run <args…>` for a device identity (e.g. `--resend-after 1`).
    pub fn device_with(identity: &Path, args: &[&str]) -> Running {
        Running(
            Command::new(bin("pairbus-agent"))
                .arg("--identity")
                .arg(identity)
                .arg("run")
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("agent run starts"),
        )
    }

    /// Waits until its control socket (`<identity>.outbox/control.sock`) answers.
    pub fn wait_ready(&self, identity: &Path) {
        let sock = PathBuf::from(format!("{}.outbox", identity.display())).join("control.sock");
        wait_until(15, "the running agent's control socket", || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// SIGKILL, and waits.
    pub fn kill9(mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reaped");
    }

    /// SIGTERM (a clean stop), and waits up to 15 s; panics if it does not stop.
    pub fn term(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        wait_until(15, "`run` to stop on SIGTERM", || {
            self.0.try_wait().expect("try_wait").is_some()
        });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A device made by `make`.
#[derive(Debug, Clone)]
pub struct Made {
    /// Its 16 hex digit id.
    pub id: String,
    /// Its identity file.
    pub identity: PathBuf,
    /// Its QR code image.
    pub png: PathBuf,
    /// The QR code's text (`PB1:…`).
    pub qr: String,
    /// `make`'s whole output.
    pub out: String,
}

/// `pairbus-agent --identity <factory> <global…> make --serial <serial> --type sensor
/// --fleet-key <data>/fleet.key --device-broker <device_broker> --out <out> --no-terminal <extra…>`.
pub fn make(
    factory: &Path,
    global: &[&str],
    device_broker: &str,
    out: &Path,
    serial: &str,
    extra: &[&str],
) -> Made {
    let fleet = factory.with_file_name("fleet.key");
    let mut args: Vec<&str> = global.to_vec();
    args.extend([
        "make",
        "--serial",
        serial,
        "--type",
        "sensor",
        "--fleet-key",
        fleet.to_str().unwrap(),
        "--device-broker",
        device_broker,
        "--out",
        out.to_str().unwrap(),
        "--no-terminal",
    ]);
    args.extend(extra);
    let text = agent(factory, &args);
    let id = made_device(&text);
    let qr = text
        .lines()
        .find(|l| l.starts_with("PB1:"))
        .unwrap_or_else(|| panic!("no QR text in {text}"))
        .to_owned();
    Made {
        identity: out.join(format!("{id}.toml")),
        png: out.join(format!("{id}.png")),
        id,
        qr,
        out: text,
    }
}

/// What a Python interop script reported: it must have exited 0 and printed one JSON object
/// on stdout (its stderr is shown on failure, and echoed otherwise).
pub struct ScriptOutput(pub serde_json::Value);

impl ScriptOutput {
    /// Runs `python script args…`.
    pub fn run(python: &str, script: &Path, args: &[&std::ffi::OsStr]) -> Self {
        let out = Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{stderr}",
            script.display(),
            out.status
        );
        eprint!("{stderr}");
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "the script's stdout is not JSON ({e}): {}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        ScriptOutput(json)
    }

    /// The string field `name` (a panic naming it if it is missing).
    pub fn field(&self, name: &str) -> String {
        self.0[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string `{name}` in the script's output: {}", self.0))
            .to_owned()
    }
}

/// Activates a made device from its QR image (as the broker's `operator-admin`, owner
/// `alice`), then runs the device's own `setup` (its proof of possession). Returns `setup`'s
/// output.
pub fn activate_and_set_up(broker: &Broker, m: &Made) -> String {
    let operator = broker.data.join("operator-admin.toml");
    let qr = m.png.to_str().expect("QR image path is UTF-8");
    agent(&operator, &["activate", "--qr", qr, "--owner", "alice"]);
    agent(&m.identity, &["setup", "--owner", "alice"])
}

/// The Python of the interop tests' venv (`PAIRBUS_PYTHON`, made by
/// `tests/interop/setup-venv.sh`); `None` (the test is skipped, with a note) when unset,
/// except under CI (`CI` set), where a missing Python is a failure.
pub fn python(what: &str) -> Option<String> {
    match std::env::var("PAIRBUS_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if std::env::var_os("CI").is_some() => panic!(
            "PAIRBUS_PYTHON is not set, but CI is: .ci/run should have set it to the python of \
             the venv made by tests/interop/setup-venv.sh"
        ),
        _ => {
            eprintln!(
                "skipped: set PAIRBUS_PYTHON to a python with pycose 1.1, cbor2, cryptography and \
                 paho-mqtt (PAIRBUS_PYTHON=$(tests/interop/setup-venv.sh)) to run {what}"
            );
            None
        }
    }
}
