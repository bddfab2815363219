//! The README's "Walkthrough: the seed stories", run as written: one test per seed command
//! (generate, activate, log, history; setup, discover, pair, verify pairing).
//!
//! The shell block is read from README.md and split into its sections (`# <command>: …`
//! comment lines). The sections run in order, once, against one real broker (a shared
//! fixture: the stories build on each other), each logical line with `bash` from a folder
//! holding the broker's `pairbus-data`, the binaries on `PATH`, and `DEVICE_PLANE` /
//! `PAIRBUS_API` set to the broker's ephemeral addresses. Lines ending in `&` (`run`) are
//! started in the background and stopped at exit. Each test then checks what its own
//! section printed and the state it left (through the broker's HTTP API).

use pairbus_tests::{bin, wait_until, Broker};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

/// The seed commands, in the README's order.
const SECTIONS: [&str; 8] = [
    "generate",
    "activate",
    "log",
    "history",
    "setup",
    "discover",
    "pair",
    "verify pairing",
];

/// The walkthrough block of README.md: the prelude's lines, then each section's lines
/// (continuations joined, comments and blank lines dropped).
fn readme_block() -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).expect("README.md");
    let start = text
        .find("## Walkthrough: the seed stories")
        .expect("README has the walkthrough section");
    let rest = &text[start..];
    let body = rest
        .split_once("```sh\n")
        .and_then(|(_, b)| b.split_once("\n```"))
        .map(|(b, _)| b)
        .expect("a ```sh block in the walkthrough section");
    let mut prelude = Vec::new();
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut pending = String::new();
    for raw in body.lines() {
        let line = raw.trim();
        if let Some(comment) = line.strip_prefix('#') {
            if let Some(name) = SECTIONS
                .iter()
                .find(|n| comment.trim_start().starts_with(&format!("{n}:")))
            {
                sections.push(((*name).to_owned(), Vec::new()));
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        let logical = std::mem::take(&mut pending);
        match sections.last_mut() {
            Some((_, lines)) => lines.push(logical),
            None => prelude.push(logical),
        }
    }
    let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names, SECTIONS,
        "README's walkthrough block must have one section per seed command, in order"
    );
    for (name, lines) in &sections {
        assert!(!lines.is_empty(), "README section `{name}` has no command");
    }
    (prelude, sections)
}

/// `NAME=…` or `export NAME=…`: kept and replayed before every later line.
fn is_assignment(line: &str) -> bool {
    let l = line.strip_prefix("export ").unwrap_or(line);
    l.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The shared fixture: one broker, the walkthrough run so far.
struct Walk {
    dir: tempfile::TempDir,
    broker: Broker,
    sections: Vec<(String, Vec<String>)>,
    /// Assignments seen so far (the prelude's, then the sections').
    assigns: Vec<String>,
    /// The output (stdout and stderr of each command) of every section run, by name.
    outputs: Vec<(String, String)>,
    /// Background `run`s.
    running: Vec<Child>,
    /// Why an earlier section failed (the later ones cannot run).
    failed: Option<String>,
}

static WALK: Mutex<Option<Walk>> = Mutex::new(None);

extern "C" {
    fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
}

/// Stops the background agents and the broker and removes the folder when the test process
/// exits (the fixture is shared by all tests, so no one test may drop it).
extern "C" fn teardown() {
    let mut guard = WALK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mut walk) = guard.take() {
        for c in &mut walk.running {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(walk);
    }
}

impl Walk {
    fn new() -> Walk {
        let (prelude, sections) = readme_block();
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::start(&dir.path().join("pairbus-data"));
        // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit(3) expects.
        let registered = unsafe { atexit(teardown) };
        assert_eq!(registered, 0, "atexit failed");
        let mut walk = Walk {
            dir,
            broker,
            sections,
            assigns: Vec::new(),
            outputs: Vec::new(),
            running: Vec::new(),
            failed: None,
        };
        for line in prelude {
            assert!(
                is_assignment(&line),
                "the walkthrough's prelude only sets variables: {line}"
            );
            walk.run_line(&line).expect("the prelude runs");
            walk.assigns.push(line);
        }
        walk
    }

    fn bash(&self, script: &str) -> Command {
        let bin_dir = bin("pairbus-agent").parent().expect("bin dir").to_owned();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin_dir];
        dirs.extend(std::env::split_paths(&path));
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "set -euo pipefail\n{}\n{script}",
                self.assigns.join("\n")
            ))
            .current_dir(self.dir.path())
            .env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .env("DEVICE_PLANE", &self.broker.device)
            .env("PAIRBUS_API", format!("http://{}", self.broker.http))
            .env("PAIRBUS_LOG", "warn")
            .env("RUST_LOG", "warn")
            .env_remove("PAIRBUS_TOKEN")
            .env_remove("PAIRBUS_IDENTITY");
        cmd
    }

    /// Runs one line; its stdout and stderr, or why it failed.
    fn run_line(&mut self, line: &str) -> Result<String, String> {
        if let Some(bg) = line.strip_suffix('&') {
            let child = self
                .bash(&format!("exec {}", bg.trim()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{line}: {e}"))?;
            self.running.push(child);
            return Ok(String::new());
        }
        let out = self
            .bash(line)
            .output()
            .map_err(|e| format!("{line}: {e}"))?;
        let text = format!(
            "$ {line}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("failed ({}):\n{text}", out.status));
        }
        Ok(text)
    }

    /// Waits for what a human would wait for before a section (the pairing handshake).
    fn before(&self, name: &str) -> Result<(), String> {
        if name == "verify pairing" {
            let (m, s) = (self.device_in("manager"), self.device_in("sensor"));
            wait_until(30, "the pairing handshake (an edge in the graph)", || {
                let g = self.broker.get("/v1/graph");
                g["edges"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["manager"] == m.as_str() && e["sensor"] == s.as_str())
                })
            });
        }
        Ok(())
    }

    fn run_section(&mut self, i: usize) -> Result<(), String> {
        let (name, lines) = self.sections[i].clone();
        self.before(&name)?;
        let mut text = String::new();
        for line in &lines {
            text += &self.run_line(line).map_err(|e| format!("`{name}`: {e}"))?;
            if is_assignment(line) {
                self.assigns.push(line.clone());
            }
        }
        self.outputs.push((name, text));
        Ok(())
    }

    /// The id of the one device made in `devices/<folder>`.
    fn device_in(&self, folder: &str) -> String {
        let dir = self.dir.path().join("devices").join(folder);
        let ids: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".toml")
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(ids.len(), 1, "one device in {}: {ids:?}", dir.display());
        ids[0].clone()
    }
}

/// The shared fixture with every section up to `name` run; `name`'s output.
fn through(name: &str) -> (MutexGuard<'static, Option<Walk>>, String) {
    let mut guard = WALK.lock().unwrap_or_else(|e| e.into_inner());
    let walk = guard.get_or_insert_with(Walk::new);
    if let Some(why) = &walk.failed {
        panic!("an earlier section failed: {why}");
    }
    let target = SECTIONS
        .iter()
        .position(|s| *s == name)
        .expect("a seed command");
    while walk.outputs.len() <= target {
        let i = walk.outputs.len();
        if let Err(e) = walk.run_section(i) {
            walk.failed = Some(e.clone());
            panic!("{e}");
        }
    }
    let out = walk.outputs[target].1.clone();
    eprintln!("{out}");
    (guard, out)
}

fn card(w: &Walk, device: &str) -> Value {
    w.broker.get(&format!("/v1/devices/{device}"))
}

fn history_types(w: &Walk, device: &str) -> Vec<String> {
    w.broker
        .history(device)
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn generate() {
    let (g, out) = through("generate");
    let w = g.as_ref().expect("fixture");
    let phone = w.device_in("phone");
    assert!(out.contains(&format!("made device {phone} -> ")), "{out}");
    assert!(out.contains("queued device.manufactured"), "{out}");
    assert!(out.contains("delivered: 1 event(s) committed"), "{out}");
    assert!(out.contains("\nPB1:"), "the QR text is printed: {out}");
    for ext in ["toml", "png", "svg"] {
        let f = w.dir.path().join(format!("devices/phone/{phone}.{ext}"));
        assert!(f.is_file(), "{} written", f.display());
    }
    let id = std::fs::read_to_string(w.dir.path().join(format!("devices/phone/{phone}.toml")))
        .expect("identity");
    assert!(id.contains(&format!("kid = \"device:{phone}\"")), "{id}");
    assert!(
        id.contains(&format!("broker = \"{}\"", w.broker.device)),
        "{id}"
    );
    let c = card(w, &phone);
    assert_eq!(c["device_type"], "phone", "{c}");
    assert_eq!(c["model"], "P1", "{c}");
    assert!(c["components"].to_string().contains("12MP"), "{c}");
}

#[test]
fn activate() {
    let (g, out) = through("activate");
    let w = g.as_ref().expect("fixture");
    let phone = w.device_in("phone");
    assert!(
        out.contains(&format!("QR code ok: device {phone} (phone P1)")),
        "{out}"
    );
    assert!(
        out.contains("activation token (shown once, keep it): "),
        "{out}"
    );
    assert!(out.contains("queued device.activated"), "{out}");
    assert!(out.contains("queued device.setup_completed"), "{out}");
    // `pairbus-projector device` (live) shows the activation completed by the device's proof.
    assert!(out.contains("configured"), "{out}");
    assert!(out.contains("alice"), "{out}");
    let c = card(w, &phone);
    assert_eq!(c["state"], "configured", "{c}");
    assert_eq!(c["owner"], "alice", "{c}");
    assert!(c["activated_at"].is_u64(), "activation completed: {c}");
    assert!(c["activation"].to_string().contains("198.51.100.7"), "{c}");
}

#[test]
fn log() {
    let (g, out) = through("log");
    let w = g.as_ref().expect("fixture");
    let phone = w.device_in("phone");
    assert!(out.contains("queued device.action"), "{out}");
    assert!(out.contains("delivered: 1 event(s) committed"), "{out}");
    let h = w.broker.history(&phone);
    let action = h
        .iter()
        .find(|e| e["type"] == "device.action")
        .unwrap_or_else(|| panic!("no device.action in the history: {h:?}"));
    let text = action.to_string();
    for want in [
        "login",
        "\"user\"",
        "alice",
        "method",
        "password",
        "203.0.113.9",
        "pairbus-app/1.0",
    ] {
        assert!(text.contains(want), "{want} missing from {text}");
    }
}

#[test]
fn history() {
    let (g, out) = through("history");
    let w = g.as_ref().expect("fixture");
    let phone = w.device_in("phone");
    assert!(out.contains(&phone), "{out}");
    let order = [
        "device.manufactured",
        "device.activated",
        "device.setup_completed",
        "device.action",
    ];
    let mut at = 0;
    for t in order {
        let found = out[at..]
            .find(t)
            .unwrap_or_else(|| panic!("{t} missing (or out of order) in the history:\n{out}"));
        at += found + t.len();
    }
    for want in [
        "login",
        "alice",
        "password",
        "203.0.113.9",
        "pairbus-app/1.0",
    ] {
        assert!(
            out.contains(want),
            "{want} missing from the history:\n{out}"
        );
    }
    assert!(!out.contains("refused"), "nothing refused:\n{out}");
    assert_eq!(history_types(w, &phone).len(), 4, "the complete trail");
}

#[test]
fn setup() {
    let (g, out) = through("setup");
    let w = g.as_ref().expect("fixture");
    assert_eq!(
        out.matches("queued device.setup_completed").count(),
        2,
        "{out}"
    );
    for d in [w.device_in("manager"), w.device_in("sensor")] {
        let c = card(w, &d);
        assert_eq!(c["state"], "configured", "{c}");
        assert_eq!(c["owner"], "bob", "{c}");
    }
}

#[test]
fn discover() {
    let (g, out) = through("discover");
    let w = g.as_ref().expect("fixture");
    let (m, s) = (w.device_in("manager"), w.device_in("sensor"));
    for d in [&m, &s] {
        let line = out
            .lines()
            .find(|l| l.starts_with(d.as_str()))
            .unwrap_or_else(|| panic!("{d} not listed:\n{out}"));
        assert!(line.contains("  online  "), "{line}");
        assert!(line.contains("configured=true"), "{line}");
    }
    // The phone never ran: it is not listed.
    assert!(!out.contains(&w.device_in("phone")), "{out}");
}

#[test]
fn pair() {
    let (g, out) = through("pair");
    let w = g.as_ref().expect("fixture");
    let (m, s) = (w.device_in("manager"), w.device_in("sensor"));
    assert!(out.contains("queued pairing.requested"), "{out}");
    assert!(out.contains("delivered: 1 event(s) committed"), "{out}");
    let h = w.broker.history(&m);
    let req = h
        .iter()
        .find(|e| e["type"] == "pairing.requested")
        .unwrap_or_else(|| panic!("no pairing.requested in the manager's history: {h:?}"));
    assert!(req.to_string().contains(&s), "{req}");
}

#[test]
fn verify_pairing() {
    let (g, out) = through("verify pairing");
    let w = g.as_ref().expect("fixture");
    let (m, s) = (w.device_in("manager"), w.device_in("sensor"));
    // `pairbus-projector device $S`
    assert!(out.contains("paired"), "{out}");
    let c = card(w, &s);
    assert_eq!(c["state"], "paired", "{c}");
    assert_eq!(c["manager"], m.as_str(), "{c}");
    // `pairbus-projector graph`: the edge manager → sensor.
    // (text form: the manager, then its sensors indented under it)
    let graph = out
        .split("$ pairbus-projector graph\n")
        .nth(1)
        .and_then(|g| g.split("\n$ ").next())
        .unwrap_or_else(|| panic!("no graph output:\n{out}"));
    let lines: Vec<&str> = graph.lines().collect();
    assert!(
        lines
            .windows(2)
            .any(|w| w[0].starts_with(&format!("{m} (")) && w[1].starts_with(&format!("  {s} ("))),
        "the graph does not show {s} under {m}:\n{graph}"
    );
    // `discover`: the manager's card lists its sensor.
    let line = out
        .lines()
        .find(|l| l.starts_with(m.as_str()) && l.contains("  online  "))
        .unwrap_or_else(|| panic!("{m} not listed online:\n{out}"));
    assert!(line.contains(&format!("sensors={s}")), "{line}");
    let types = history_types(w, &s);
    for t in ["pairing.offered", "pairing.accepted"] {
        assert!(types.iter().any(|x| x == t), "{t} missing: {types:?}");
    }
}

#[test]
fn every_readme_command_is_a_pairbus_command() {
    // Each section's foreground lines are pairbus commands or assignments: nothing in the
    // README's block is left unexercised by a seed-command test above.
    let (_, sections) = readme_block();
    for (name, lines) in sections {
        for l in lines {
            assert!(
                is_assignment(&l)
                    || l.starts_with("pairbus-agent ")
                    || l.starts_with("pairbus-projector "),
                "section `{name}` has a line that is neither an assignment nor a pairbus command: {l}"
            );
        }
    }
}
