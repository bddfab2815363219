//! How the demo tells its story on stdout: numbered steps, indented details, and the count of
//! expectations that held.

use super::expect::Check;
use super::DemoError;
use std::cell::Cell;
use std::io::Write as _;

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not stop the demo.
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// The storyteller.
#[derive(Debug, Default)]
pub(super) struct Narrator {
    step: Cell<usize>,
    held: Cell<usize>,
}

impl Narrator {
    /// Starts a numbered step.
    pub fn step(&self, s: &str) {
        self.step.set(self.step.get() + 1);
        say(&format!("\n[{:>2}] {s}", self.step.get()));
    }

    /// A detail of the current step.
    pub fn line(&self, s: &str) {
        say(&format!("     {s}"));
    }

    /// A block of text (a history, the graph), indented.
    pub fn block(&self, s: &str) {
        for l in s.lines() {
            say(&format!("       {l}"));
        }
    }

    /// The closing line.
    pub fn summary(&self, s: &str) {
        say(&format!("\n{s}"));
    }

    /// Checks an expectation now: counted if it holds, the demo's error if not.
    pub fn expect(&self, what: &str, check: Check) -> Result<(), DemoError> {
        check.map_err(|why| DemoError::Expectation {
            what: what.into(),
            why,
        })?;
        self.held.set(self.held.get() + 1);
        Ok(())
    }

    /// How many expectations held.
    pub fn held(&self) -> usize {
        self.held.get()
    }
}
