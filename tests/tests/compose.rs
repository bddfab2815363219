//! `docker-compose.yml` and the `Dockerfile`, checked without a Docker engine.
//!
//! The compose file is parsed (yaml-rust2) and every service is held to what Docker would
//! need at `docker compose up`:
//! - its image comes from a build of the Dockerfile, whose runtime stage copies in the binary
//!   the command runs (the `COPY --from=builder` lines) and builds its package (`cargo build
//!   --release --locked -p …`);
//! - its command, its health check and the Dockerfile's `CMD` are accepted by the real binary:
//!   each is run with `--help` appended, which makes clap parse and validate every subcommand,
//!   flag and value before printing the help of the deepest subcommand, and do nothing else;
//!   the options that help's `Usage:` line marks as required are present;
//! - its environment keys are ones the binary reads (clap's `[env: KEY]` in the help);
//! - published ports are bound to 127.0.0.1 on the host and reach a `*-listen` address the
//!   service listens on, on all the container's interfaces; health URLs hit a listened port;
//!   client addresses (`--broker`, `--device-broker`, `PAIRBUS_BROKER`) name a service, one of
//!   its listened ports, and a service this one waits for;
//! - absolute paths in commands lie on a mounted volume; named volumes are declared (and every
//!   declared one is used) and are created and owned by the non-root runtime user in the
//!   Dockerfile; bind-mount sources exist;
//! - `depends_on` names existing services with a condition the target can meet: a health
//!   check for `service_healthy`, a one-shot job (`restart: "no"`) for
//!   `service_completed_successfully`; every long-running service has a health check.
//!
//! The manual check with a Docker client is `docker compose config -q` (README, "Docker").

use pairbus_tests::bin;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile.

/// What the Dockerfile builds.
struct Image {
    /// Logical lines (continuations joined).
    lines: Vec<String>,
    /// Binaries the runtime stage copies from the builder, by file name.
    binaries: BTreeSet<String>,
    /// Where they are copied.
    bin_dir: String,
    /// The runtime stage's `CMD`, exec form.
    cmd: Option<Vec<String>>,
}

fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let l = raw.trim();
        if l.starts_with('#') || (l.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head.trim_end());
            cur.push(' ');
        } else {
            cur.push_str(l);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_owned());
            }
            cur.clear();
        }
    }
    out
}

fn parse_dockerfile(path: &Path, errors: &mut Vec<String>) -> Image {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let lines = logical_lines(&text);
    let mut image = Image {
        lines: lines.clone(),
        binaries: BTreeSet::new(),
        bin_dir: String::new(),
        cmd: None,
    };
    let froms: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let builder = froms
        .iter()
        .find(|f| f.len() == 4 && f[2].eq_ignore_ascii_case("AS") && f[3] == "builder");
    match builder {
        Some(f) => {
            let tag = f[1].split_once(':').map(|(_, t)| t).unwrap_or("");
            if !f[1].starts_with("rust:") || !tag.starts_with(|c: char| c.is_ascii_digit()) {
                errors.push(format!(
                    "Dockerfile: the builder must be a pinned rust image (rust:1.xx-…), not {}",
                    f[1]
                ));
            }
        }
        None => errors.push("Dockerfile: no `FROM rust:… AS builder` stage".into()),
    }
    match froms.last() {
        Some(f) if f.get(1) == Some(&"debian:bookworm-slim") => {}
        other => errors.push(format!(
            "Dockerfile: the runtime stage must be debian:bookworm-slim, not {other:?}"
        )),
    }
    let build = lines
        .iter()
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build"));
    match build {
        Some(b) if b.contains("--release") && b.contains("--locked") => {}
        _ => errors.push("Dockerfile: no `cargo build --release --locked` in the builder".into()),
    }
    for l in &lines {
        if let Some(rest) = l.strip_prefix("COPY --from=builder ") {
            let mut parts: Vec<&str> = rest.split_whitespace().collect();
            let Some(dest) = parts.pop() else { continue };
            image.bin_dir = dest.trim_end_matches('/').to_owned();
            for src in parts {
                let name = src.rsplit('/').next().unwrap_or(src).to_owned();
                // The three binaries are in packages of the same name.
                if !build.is_some_and(|b| b.contains(&format!("-p {name}"))) {
                    errors.push(format!(
                        "Dockerfile copies {name} but does not build its package (-p {name})"
                    ));
                }
                image.binaries.insert(name);
            }
        }
        if let Some(user) = l.strip_prefix("USER ") {
            if matches!(user.trim(), "root" | "0") {
                errors.push("Dockerfile: the runtime user must not be root".into());
            }
        }
        if let Some(cmd) = l.strip_prefix("CMD ") {
            match serde_json::from_str::<Vec<String>>(cmd) {
                Ok(v) => image.cmd = Some(v),
                Err(e) => errors.push(format!("Dockerfile: CMD must be exec form (JSON): {e}")),
            }
        }
    }
    if !lines.iter().any(|l| l.starts_with("USER ")) {
        errors.push("Dockerfile: no USER: the runtime would run as root".into());
    }
    if image.binaries.is_empty() {
        errors.push("Dockerfile: no binary copied from the builder".into());
    }
    if !["/usr/local/bin", "/usr/bin", "/bin"].contains(&image.bin_dir.as_str()) {
        errors.push(format!(
            "Dockerfile: binaries copied to {}, which is not on the default PATH",
            image.bin_dir
        ));
    }
    image
}

// ---------------------------------------------------------------------------------------------
// The compose file.

/// One compose service, as far as these checks need it.
struct Service {
    name: String,
    image: Option<String>,
    build: Option<(String, String)>,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    ports: Vec<String>,
    volumes: Vec<String>,
    depends_on: BTreeMap<String, String>,
    health: Option<Vec<String>>,
    restart: Option<String>,
}

impl Service {
    fn one_shot(&self) -> bool {
        self.restart.as_deref() == Some("no")
    }

    /// The values of `--flag V` / `--flag=V` in the command.
    fn flag_values(&self, flag: &str) -> Vec<String> {
        flag_values(&self.command, flag)
    }

    /// Every address the command listens on (`--*-listen` flags and `PAIRBUS_*_LISTEN`).
    fn listens(&self, errors: &mut Vec<String>) -> Vec<SocketAddr> {
        let mut raw: Vec<String> = self
            .command
            .iter()
            .filter_map(|a| a.strip_prefix("--"))
            .filter_map(|a| a.split('=').next())
            .filter(|f| f.ends_with("-listen"))
            .flat_map(|f| self.flag_values(&format!("--{f}")))
            .collect();
        raw.extend(
            self.env
                .iter()
                .filter(|(k, _)| k.ends_with("_LISTEN"))
                .map(|(_, v)| v.clone()),
        );
        raw.iter()
            .filter_map(|a| match a.parse::<SocketAddr>() {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(format!("{}: listen address `{a}`: {e}", self.name));
                    None
                }
            })
            .collect()
    }
}

fn flag_values(argv: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == flag {
            if let Some(v) = it.next() {
                out.push(v.clone());
            }
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            out.push(v.to_owned());
        }
    }
    out
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list of scalars (`what` names it in errors).
fn list(y: &Yaml, what: &str, errors: &mut Vec<String>) -> Vec<String> {
    match y {
        Yaml::BadValue => vec![],
        Yaml::Array(a) => a
            .iter()
            .filter_map(|v| {
                let s = scalar(v);
                if s.is_none() {
                    errors.push(format!("{what}: {v:?} is not a plain value"));
                }
                s
            })
            .collect(),
        other => {
            errors.push(format!("{what}: must be a list (exec form), not {other:?}"));
            vec![]
        }
    }
}

fn parse_service(name: &str, y: &Yaml, errors: &mut Vec<String>) -> Service {
    let what = |k: &str| format!("service {name}: {k}");
    let build = match &y["build"] {
        Yaml::BadValue => None,
        Yaml::String(ctx) => Some((ctx.clone(), "Dockerfile".to_owned())),
        b @ Yaml::Hash(_) => Some((
            scalar(&b["context"]).unwrap_or_else(|| ".".into()),
            scalar(&b["dockerfile"]).unwrap_or_else(|| "Dockerfile".into()),
        )),
        other => {
            errors.push(format!("{}: unexpected {other:?}", what("build")));
            None
        }
    };
    let env = match &y["environment"] {
        Yaml::BadValue => BTreeMap::new(),
        Yaml::Hash(h) => h
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
            .collect(),
        a @ Yaml::Array(_) => list(a, &what("environment"), errors)
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        other => {
            errors.push(format!("{}: unexpected {other:?}", what("environment")));
            BTreeMap::new()
        }
    };
    let depends_on = match &y["depends_on"] {
        Yaml::BadValue => BTreeMap::new(),
        Yaml::Hash(h) => h
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    scalar(k)?,
                    scalar(&v["condition"]).unwrap_or_else(|| "service_started".into()),
                ))
            })
            .collect(),
        a @ Yaml::Array(_) => list(a, &what("depends_on"), errors)
            .into_iter()
            .map(|d| (d, "service_started".into()))
            .collect(),
        other => {
            errors.push(format!("{}: unexpected {other:?}", what("depends_on")));
            BTreeMap::new()
        }
    };
    let health = match &y["healthcheck"] {
        Yaml::BadValue => None,
        h => {
            let test = list(&h["test"], &what("healthcheck.test"), errors);
            match test.split_first() {
                Some((kind, argv)) if kind == "CMD" && !argv.is_empty() => Some(argv.to_vec()),
                _ => {
                    errors.push(format!(
                        "{}: must be [\"CMD\", binary, args…] (no shell in the image needed), not {test:?}",
                        what("healthcheck.test")
                    ));
                    None
                }
            }
        }
    };
    Service {
        name: name.to_owned(),
        image: scalar(&y["image"]),
        build,
        command: list(&y["command"], &what("command"), errors),
        env,
        ports: list(&y["ports"], &what("ports"), errors),
        volumes: list(&y["volumes"], &what("volumes"), errors),
        depends_on,
        health,
        restart: scalar(&y["restart"]),
    }
}

// ---------------------------------------------------------------------------------------------
// The binaries' own judgement of a command line.

/// Runs `argv --help` (clap parses and validates everything before it, then prints the help
/// of the deepest subcommand reached); returns that help, plus the top-level help.
fn clap_accepts(argv: &[String]) -> Result<(String, String), String> {
    let run = |args: &[String]| {
        let mut cmd = Command::new(bin(&argv[0]));
        cmd.args(args).arg("--help");
        // Only the arguments decide: no PAIRBUS_* of this test process may interfere.
        for (k, _) in std::env::vars() {
            if k.starts_with("PAIRBUS_") {
                cmd.env_remove(k);
            }
        }
        cmd.output()
            .map_err(|e| format!("running {}: {e}", argv[0]))
    };
    let out = run(&argv[1..])?;
    if !out.status.success() {
        return Err(format!(
            "`{}` is refused by the binary: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let top = run(&[])?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&top.stdout).into_owned(),
    ))
}

/// The options a help's `Usage:` line marks as required (outside brackets).
fn required_options(help: &str) -> Vec<String> {
    let Some(usage) = help.lines().find_map(|l| l.trim().strip_prefix("Usage: ")) else {
        return vec![];
    };
    let mut depth = 0i32;
    let mut out = Vec::new();
    for tok in usage.split_whitespace() {
        if depth == 0 && tok.starts_with("--") {
            out.push(tok.trim_end_matches(']').to_owned());
        }
        depth += tok.matches('[').count() as i32 - tok.matches(']').count() as i32;
    }
    out
}

/// Checks one command line against the image and the binary. `env`: keys the service sets.
fn check_invocation(
    what: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    image: &Image,
    errors: &mut Vec<String>,
) {
    let Some(binary) = argv.first() else {
        errors.push(format!("{what}: empty command"));
        return;
    };
    let name = binary
        .strip_prefix(&format!("{}/", image.bin_dir))
        .unwrap_or(binary);
    if !image.binaries.contains(name) {
        errors.push(format!(
            "{what}: runs `{binary}`, which the image does not provide (it has {:?})",
            image.binaries
        ));
        return;
    }
    let argv: Vec<String> = std::iter::once(name.to_owned())
        .chain(argv[1..].iter().cloned())
        .collect();
    let (help, top) = match clap_accepts(&argv) {
        Ok(h) => h,
        Err(e) => {
            errors.push(format!("{what}: {e}"));
            return;
        }
    };
    for req in required_options(&help) {
        if !argv
            .iter()
            .any(|a| a == &req || a.starts_with(&format!("{req}=")))
        {
            errors.push(format!("{what}: `{req}` is required by {name} but missing"));
        }
    }
    for key in env.keys() {
        let read =
            |h: &str| h.contains(&format!("[env: {key}=")) || h.contains(&format!("[env: {key}]"));
        if !read(&help) && !read(&top) {
            errors.push(format!(
                "{what}: environment `{key}` is not read by `{}`",
                argv.join(" ")
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

/// Services `name` waits for, directly or not.
fn waits_for(services: &BTreeMap<String, Service>, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        if let Some(s) = services.get(&n) {
            for d in s.depends_on.keys() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
    }
    seen
}

fn check_compose(compose_path: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let base = compose_path.parent().expect("compose file's folder");
    let text = std::fs::read_to_string(compose_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", compose_path.display()));
    let docs = match YamlLoader::load_from_str(&text) {
        Ok(d) => d,
        Err(e) => return vec![format!("{}: not YAML: {e}", compose_path.display())],
    };
    let Some(doc) = docs.first() else {
        return vec!["the compose file is empty".into()];
    };
    let Some(svc_yaml) = doc["services"].as_hash() else {
        return vec!["the compose file has no `services` map".into()];
    };
    let declared: BTreeSet<String> = doc["volumes"]
        .as_hash()
        .map(|h| h.keys().filter_map(scalar).collect())
        .unwrap_or_default();
    let services: BTreeMap<String, Service> = svc_yaml
        .iter()
        .filter_map(|(k, v)| {
            let n = scalar(k)?;
            Some((n.clone(), parse_service(&n, v, &mut errors)))
        })
        .collect();

    // Images: every build is of the one Dockerfile parsed here.
    let mut images = BTreeMap::new();
    let mut built_tags = BTreeSet::new();
    for s in services.values() {
        if let Some((ctx, file)) = &s.build {
            let path = base.join(ctx).join(file);
            if !path.is_file() {
                errors.push(format!(
                    "{}: build file {} not found",
                    s.name,
                    path.display()
                ));
                continue;
            }
            let key = path.canonicalize().unwrap_or(path);
            if !images.contains_key(&key) {
                let img = parse_dockerfile(&key, &mut errors);
                images.insert(key.clone(), img);
            }
            built_tags.extend(s.image.clone());
        }
    }
    assert_eq!(
        images.len(),
        1,
        "the services build exactly one Dockerfile ({errors:?})"
    );
    let image = images.into_values().next().expect("one image");
    if let Some(cmd) = &image.cmd {
        check_invocation("Dockerfile CMD", cmd, &BTreeMap::new(), &image, &mut errors);
    }
    // The paths of every `chown` in a RUN (each `&&`-separated part on its own).
    let chowned: BTreeSet<&str> = image
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("RUN "))
        .flat_map(|l| l.split("&&"))
        .filter_map(|part| part.trim().strip_prefix("chown "))
        .flat_map(|args| args.split_whitespace())
        .collect();

    let mut used_volumes = BTreeSet::new();
    for s in services.values() {
        let what = format!("service {}", s.name);
        match (&s.build, &s.image) {
            (Some(_), _) => {}
            (None, Some(tag)) if built_tags.contains(tag) => {}
            (None, other) => errors.push(format!(
                "{what}: neither a build nor an image built here ({other:?})"
            )),
        }
        if s.command.is_empty() {
            errors.push(format!("{what}: no command (say what it runs)"));
        } else {
            check_invocation(
                &format!("{what}: command"),
                &s.command,
                &s.env,
                &image,
                &mut errors,
            );
        }
        if let Some(h) = &s.health {
            check_invocation(
                &format!("{what}: healthcheck"),
                h,
                &BTreeMap::new(),
                &image,
                &mut errors,
            );
        } else if !s.one_shot() {
            errors.push(format!(
                "{what}: a long-running service needs a healthcheck (or restart: \"no\" for a job)"
            ));
        }

        // Volumes.
        let mut mounts = Vec::new();
        for v in &s.volumes {
            let parts: Vec<&str> = v.split(':').collect();
            let (src, dst, mode) = match parts.as_slice() {
                [src, dst] => (*src, *dst, "rw"),
                [src, dst, mode] => (*src, *dst, *mode),
                _ => {
                    errors.push(format!("{what}: volume `{v}`: expected SRC:DST[:ro|rw]"));
                    continue;
                }
            };
            if !matches!(mode, "ro" | "rw") {
                errors.push(format!("{what}: volume `{v}`: mode must be ro or rw"));
            }
            if !dst.starts_with('/') {
                errors.push(format!("{what}: volume `{v}`: the target must be absolute"));
            }
            if src.starts_with('.') || src.starts_with('/') {
                if !base.join(src).exists() {
                    errors.push(format!("{what}: bind mount source {src} does not exist"));
                }
            } else {
                used_volumes.insert(src.to_owned());
                if !declared.contains(src) {
                    errors.push(format!(
                        "{what}: named volume `{src}` is not declared under top-level volumes"
                    ));
                }
                if mode == "rw" && !chowned.contains(dst) {
                    errors.push(format!(
                        "{what}: {dst} must be created and chowned to the runtime user in the Dockerfile (a fresh named volume takes the image's ownership)"
                    ));
                }
            }
            mounts.push(dst.trim_end_matches('/').to_owned());
        }
        let on_mount = |p: &str| {
            mounts
                .iter()
                .any(|m| p == m || p.starts_with(&format!("{m}/")))
                || p.starts_with(&format!("{}/", image.bin_dir))
        };
        let paths = s
            .command
            .iter()
            .chain(s.health.iter().flatten())
            .chain(s.env.values())
            .filter(|a| a.starts_with('/'));
        for p in paths {
            if !on_mount(p) {
                errors.push(format!("{what}: {p} is on no mounted volume"));
            }
        }

        // Ports and listen addresses.
        let listens = s.listens(&mut errors);
        for p in &s.ports {
            let parts: Vec<&str> = p.split(':').collect();
            let [ip, host, container] = parts.as_slice() else {
                errors.push(format!(
                    "{what}: port `{p}` must be 127.0.0.1:HOST:CONTAINER (never all host interfaces)"
                ));
                continue;
            };
            if *ip != "127.0.0.1" {
                errors.push(format!(
                    "{what}: port `{p}` is published on {ip}, not 127.0.0.1"
                ));
            }
            if host.parse::<u16>().is_err() {
                errors.push(format!("{what}: port `{p}`: bad host port"));
            }
            match container.parse::<u16>() {
                Ok(port) if listens.iter().any(|l| l.port() == port && l.ip().is_unspecified()) => {}
                Ok(port) => errors.push(format!(
                    "{what}: port `{p}` publishes {port}, on which the command does not listen on all the container's interfaces (it listens on {listens:?})"
                )),
                Err(_) => errors.push(format!("{what}: port `{p}`: bad container port")),
            }
        }
        for url in s.health.iter().flat_map(|h| flag_values(h, "--url")) {
            let port = url
                .strip_prefix("http://127.0.0.1:")
                .and_then(|r| r.split('/').next())
                .and_then(|p| p.parse::<u16>().ok());
            match port {
                Some(port) if listens.iter().any(|l| l.port() == port) => {}
                _ => errors.push(format!(
                    "{what}: health URL {url} is not http://127.0.0.1:<a port the service listens on {listens:?}>"
                )),
            }
        }

        // Client addresses: a service, a port it listens on, a service this one waits for.
        let mut clients = s.flag_values("--broker");
        clients.extend(s.flag_values("--device-broker"));
        clients.extend(s.env.get("PAIRBUS_BROKER").cloned());
        let upstream = waits_for(&services, &s.name);
        for c in clients {
            let Some((host, port)) = c.rsplit_once(':') else {
                errors.push(format!("{what}: broker address `{c}` is not HOST:PORT"));
                continue;
            };
            let Some(target) = services.get(host) else {
                errors.push(format!("{what}: broker address `{c}`: no service `{host}`"));
                continue;
            };
            let port: u16 = port.parse().unwrap_or(0);
            let theirs = target.listens(&mut Vec::new());
            if !theirs
                .iter()
                .any(|l| l.port() == port && l.ip().is_unspecified())
            {
                errors.push(format!(
                    "{what}: `{c}`: {host} does not listen on {port} for other containers ({theirs:?})"
                ));
            }
            if !upstream.contains(host) {
                errors.push(format!(
                    "{what}: uses {host} but does not wait for it (depends_on)"
                ));
            }
        }

        // Ordering.
        for (dep, cond) in &s.depends_on {
            let Some(target) = services.get(dep) else {
                errors.push(format!("{what}: depends on `{dep}`, which is no service"));
                continue;
            };
            match cond.as_str() {
                "service_healthy" if target.health.is_none() => errors.push(format!(
                    "{what}: waits for {dep} to be healthy, but {dep} has no healthcheck"
                )),
                "service_completed_successfully" if !target.one_shot() => errors.push(format!(
                    "{what}: waits for {dep} to complete, but {dep} is not a one-shot job (restart: \"no\")"
                )),
                "service_healthy" | "service_completed_successfully" | "service_started" => {}
                other => errors.push(format!("{what}: unknown depends_on condition {other}")),
            }
        }
        if waits_for(&services, &s.name).contains(&s.name) {
            errors.push(format!("{what}: depends_on cycle"));
        }
    }
    for v in declared.difference(&used_volumes) {
        errors.push(format!("volume `{v}` is declared but no service mounts it"));
    }
    errors
}

#[test]
fn docker_compose_and_dockerfile_are_consistent() {
    let root = repo();
    let errors = check_compose(&root.join("docker-compose.yml"));
    assert!(
        errors.is_empty(),
        "docker-compose.yml / Dockerfile:\n  {}",
        errors.join("\n  ")
    );
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    for must in ["target", ".venv", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == must),
            ".dockerignore must exclude {must}"
        );
    }
}

/// The checks catch what they claim to: a broken copy of the compose file fails each of them.
#[test]
fn broken_compose_files_are_caught() {
    let root = repo();
    let good = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(root.join("Dockerfile"), dir.path().join("Dockerfile")).expect("Dockerfile");
    std::fs::create_dir_all(dir.path().join("docker")).expect("docker/");
    std::fs::copy(
        root.join("docker/devices.csv"),
        dir.path().join("docker/devices.csv"),
    )
    .expect("devices.csv");
    let cases: &[(&str, &str, &str)] = &[
        ("\"127.0.0.1:1883:1883\"", "\"1883:1883\"", "127.0.0.1:HOST:CONTAINER"),
        ("\"127.0.0.1:8080:8080\"", "\"127.0.0.1:8080:8090\"", "does not listen"),
        ("\"pairbus-broker\", \"serve\"", "\"pairbus-broker\", \"serve\", \"--colour\"", "refused by the binary"),
        ("- --skip-existing", "- --skip-everything", "refused by the binary"),
        ("PAIRBUS_BROKER: \"broker:1884\"", "PAIRBUS_BROKERS: \"broker:1884\"", "not read"),
        ("PAIRBUS_BROKER: \"broker:1884\"", "PAIRBUS_BROKER: \"broker:1999\"", "does not listen on 1999"),
        ("- \"broker:1883\"", "- \"brokr:1883\"", "no service `brokr`"),
        ("\"pairbus-agent\", \"--identity\", \"/devices/sensor.toml\", \"run\"", "\"pairbus-bogus\", \"--identity\", \"/devices/sensor.toml\", \"run\"", "does not provide"),
        ("http://127.0.0.1:8080/healthz", "http://127.0.0.1:9999/healthz", "health URL"),
        ("      - devices:/devices:ro\n", "      - device:/devices:ro\n", "not declared"),
        ("      - ./docker/devices.csv:", "      - ./docker/missing.csv:", "does not exist"),
        ("      factory:\n        condition: service_completed_successfully", "      factory:\n        condition: service_healthy", "no healthcheck"),
        ("      activate:\n        condition: service_completed_successfully\n    healthcheck:\n      test: [\"CMD\", \"pairbus-agent\", \"--identity\", \"/devices/manager.toml\"", "      manager:\n        condition: service_started\n    healthcheck:\n      test: [\"CMD\", \"pairbus-agent\", \"--identity\", \"/devices/manager.toml\"", "cycle"),
        ("      - /etc/pairbus/devices.csv", "      - /etc/other.csv", "on no mounted volume"),
        ("      - --fleet-key\n      - /data/fleet.key\n      - --device-broker", "      - --device-broker", "`--fleet-key` is required"),
    ];
    for (from, to, expect) in cases {
        assert!(
            good.contains(from),
            "the compose file no longer contains {from:?}"
        );
        let path = dir.path().join("docker-compose.yml");
        std::fs::write(&path, good.replacen(from, to, 1)).expect("write");
        let errors = check_compose(&path);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "replacing {from:?} by {to:?} should fail with {expect:?}, got {errors:?}"
        );
    }
    // A named volume written by the non-root user must be chowned in the Dockerfile.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    std::fs::write(
        dir.path().join("Dockerfile"),
        dockerfile.replace(
            "chown pairbus:pairbus /data /devices /projector",
            "chown pairbus:pairbus /data /projector",
        ),
    )
    .expect("write");
    std::fs::write(dir.path().join("docker-compose.yml"), &good).expect("write");
    let errors = check_compose(&dir.path().join("docker-compose.yml"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/devices must be created and chowned")),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The compose scenario itself, on loopback.

/// A long-running service's process, killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Services in an order that respects `depends_on`.
fn start_order(services: &BTreeMap<String, Service>) -> Vec<&Service> {
    let mut order: Vec<&Service> = Vec::new();
    while order.len() < services.len() {
        let before = order.len();
        for s in services.values() {
            let placed = |n: &String| order.iter().any(|o| &o.name == n);
            if !placed(&s.name) && s.depends_on.keys().all(placed) {
                order.push(s);
            }
        }
        assert!(order.len() > before, "depends_on has a cycle");
    }
    order
}

/// Runs the compose file's own commands in its order without Docker: the broker on free
/// loopback ports (never on the container's 0.0.0.0), each volume a temporary folder, each
/// `service:port` and health URL pointed at the broker's real addresses. The one-shot jobs run
/// twice (re-running `docker compose up` must be safe); the device agents run until their
/// health checks pass, and the broker's projector then shows both devices activated and
/// configured by their own setup. The standalone projector runs too (on a free loopback port)
/// until its health check passes, once this branch's binary has `pairbus-projector serve`.
#[test]
fn the_compose_scenario_runs_on_loopback() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).expect("compose file");
    let doc = &YamlLoader::load_from_str(&text).expect("YAML")[0];
    let mut errors = Vec::new();
    let services: BTreeMap<String, Service> = doc["services"]
        .as_hash()
        .expect("services")
        .iter()
        .map(|(k, v)| {
            let n = scalar(k).expect("service name");
            (n.clone(), parse_service(&n, v, &mut errors))
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let broker_svc = services
        .values()
        .find(|s| {
            s.command.get(1).map(String::as_str) == Some("serve")
                && s.command[0] == "pairbus-broker"
        })
        .expect("a pairbus-broker serve service");
    // The broker's data volume is its data folder here too.
    let data_volume = broker_svc
        .volumes
        .iter()
        .find_map(|v| v.strip_suffix(":/data"))
        .expect("the broker mounts a volume on /data");
    let broker = pairbus_tests::Broker::start(&tmp.path().join(data_volume));
    // As in the containers, the first identities do not name a reachable broker: the jobs
    // must say where it is (--broker / PAIRBUS_BROKER).
    for id in ["operator-admin.toml", "factory-default.toml"] {
        pairbus_tests::point_identity(&broker.data.join(id), "127.0.0.1:9");
    }
    // The broker's container ports, by what listens on them.
    let mut addrs: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &broker_svc.env {
        let port = value.rsplit(':').next().unwrap_or_default();
        let real = match key.as_str() {
            "PAIRBUS_DEVICE_LISTEN" => &broker.device,
            "PAIRBUS_OPERATOR_LISTEN" => &broker.operator,
            "PAIRBUS_HTTP_LISTEN" => &broker.http,
            _ => continue,
        };
        addrs.insert(format!("{}:{port}", broker_svc.name), real.clone());
        addrs.insert(format!("127.0.0.1:{port}"), real.clone());
    }
    assert_eq!(
        addrs.len(),
        6,
        "the broker service sets its three listeners: {addrs:?}"
    );

    // Other services' own listeners (the standalone projector's): a free loopback port each,
    // for the command and for its health URL.
    let mut own: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in services.values().filter(|s| s.name != broker_svc.name) {
        for l in s.listens(&mut Vec::new()) {
            let real = format!("127.0.0.1:{}", pairbus_tests::free_port());
            let m = own.entry(s.name.clone()).or_default();
            m.insert(l.to_string(), real.clone());
            m.insert(format!("127.0.0.1:{}", l.port()), real);
        }
    }

    let localize = |s: &Service, arg: &str| -> String {
        for v in &s.volumes {
            let parts: Vec<&str> = v.split(':').collect();
            let (src, dst) = (parts[0], parts[1]);
            if arg == dst || arg.starts_with(&format!("{dst}/")) {
                let host = if src.starts_with('.') || src.starts_with('/') {
                    root.join(src)
                } else {
                    tmp.path().join(src)
                };
                return format!("{}{}", host.display(), &arg[dst.len()..]);
            }
        }
        // A whole `host:port` argument, or the authority of a URL.
        let subst = |arg: &str, from: &str, to: &str| {
            if arg == from {
                to.to_owned()
            } else {
                arg.replace(&format!("//{from}/"), &format!("//{to}/"))
            }
        };
        let mut out = arg.to_owned();
        for (from, to) in &addrs {
            if s.name == broker_svc.name || !from.starts_with("127.0.0.1:") {
                out = subst(&out, from, to);
            }
        }
        for (from, to) in own.get(&s.name).into_iter().flatten() {
            out = subst(&out, from, to);
        }
        out
    };
    let command = |s: &Service, argv: &[String]| {
        let mut cmd = Command::new(bin(&argv[0]));
        cmd.args(argv[1..].iter().map(|a| localize(s, a)))
            .env("RUST_LOG", "warn");
        for (k, v) in &s.env {
            cmd.env(k, localize(s, v));
        }
        cmd
    };
    let healthy = |s: &Service| {
        let h = s.health.as_ref().expect("a healthcheck");
        command(s, h)
            .output()
            .expect("health runs")
            .status
            .success()
    };

    let mut running = Vec::new();
    let mut devices = Vec::new();
    for s in start_order(&services) {
        if s.name == broker_svc.name {
            for v in &s.volumes {
                let src = v.split(':').next().unwrap_or_default();
                std::fs::create_dir_all(tmp.path().join(src)).expect("volume folder");
            }
            assert!(healthy(s), "the broker's health check fails");
            continue;
        }
        for v in &s.volumes {
            let src = v.split(':').next().unwrap_or_default();
            if !(src.starts_with('.') || src.starts_with('/')) {
                std::fs::create_dir_all(tmp.path().join(src)).expect("volume folder");
            }
        }
        if s.one_shot() {
            for round in ["first", "second"] {
                let out = command(s, &s.command).output().expect("job runs");
                assert!(
                    out.status.success(),
                    "{} ({round} run) failed:\n{}{}",
                    s.name,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let stdout = String::from_utf8_lossy(&out.stdout);
                if round == "second" {
                    assert!(
                        stdout.contains("skipped") && !stdout.contains("queued "),
                        "{}: a second run must skip what the first did:\n{stdout}",
                        s.name
                    );
                } else {
                    // Everything confirmed, not merely queued for a later run.
                    assert!(stdout.contains("delivered: "), "{}:\n{stdout}", s.name);
                }
            }
        } else {
            assert!(!healthy(s), "{}: healthy before it runs", s.name);
            let child = command(s, &s.command)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("service starts");
            running.push(Child(child));
            pairbus_tests::wait_until(30, &format!("{} to be healthy", s.name), || healthy(s));
            if s.command[0] != "pairbus-agent" {
                continue;
            }
            let identity = localize(s, &flag_values(&s.command, "--identity")[0]);
            let text = std::fs::read_to_string(&identity).expect("device identity");
            let identity = pairbus_schemas::identity::Identity::from_toml(&text).expect("identity");
            devices.push(identity.kid.device_id().expect("a device").to_string());
        }
    }
    assert_eq!(devices.len(), 2, "two device agents run");
    for d in &devices {
        pairbus_tests::wait_until(30, &format!("device {d} configured"), || {
            broker.get(&format!("/v1/devices/{d}"))["state"] == "configured"
        });
    }
    drop(running);
    broker.stop();
}
