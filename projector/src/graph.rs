//! The pairing graph view (`pairbus/v1/audit/graph`), its invariants and its renderings.
//!
//! The graph lives in the device cards (a sensor's `manager`, a manager's `sensors`); this
//! module derives the view from them.

use crate::fold::Projections;
use crate::model::DeviceState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A device in the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The device id.
    pub device: String,
    /// Its state.
    pub state: DeviceState,
    /// Its type.
    pub device_type: String,
    /// Its display name.
    pub name: String,
}

/// A manager → sensor edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Edge {
    /// The managing device.
    pub manager: String,
    /// The managed device.
    pub sensor: String,
    /// Log position of the acceptance that made the pair.
    pub since: Option<u64>,
}

/// The pairing graph: devices that are in at least one pair, and the pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// Paired devices, sorted by id.
    pub nodes: Vec<Node>,
    /// Pairs, sorted by (manager, sensor).
    pub edges: Vec<Edge>,
}

/// The graph as the projections hold it now.
pub fn graph(p: &Projections) -> Graph {
    let mut nodes = BTreeMap::new();
    let mut edges = Vec::new();
    for (id, card) in &p.devices {
        if let Some(m) = &card.manager {
            edges.push(Edge {
                manager: m.to_string(),
                sensor: id.to_string(),
                since: card.manager_since,
            });
        }
        if card.manager.is_some() || !card.sensors.is_empty() {
            nodes.insert(
                id.to_string(),
                Node {
                    device: id.to_string(),
                    state: card.state,
                    device_type: card.device_type.clone(),
                    name: card.name.clone(),
                },
            );
        }
    }
    edges.sort();
    Graph {
        nodes: nodes.into_values().collect(),
        edges,
    }
}

/// Checks the graph invariants, returning the first violation: both ends of every edge agree,
/// a sensor has at most one manager (by construction of `manager: Option`), no cycles, edges
/// only between activated, unrevoked devices, and every card's state matches its fields.
pub fn check_invariants(p: &Projections) -> Result<(), String> {
    for (id, card) in &p.devices {
        if card.state != card.derive_state() {
            return Err(format!(
                "{id}: state {:?} but fields say {:?}",
                card.state,
                card.derive_state()
            ));
        }
        if let Some(m) = &card.manager {
            let mc = p
                .devices
                .get(m)
                .ok_or(format!("{id}: manager {m} has no card"))?;
            if !mc.sensors.contains(id) {
                return Err(format!("{id}: manager {m} does not list it"));
            }
            if !card.is_active() || !mc.is_active() {
                return Err(format!("edge {m} -> {id} between inactive devices"));
            }
            // walk up: must terminate without meeting `id` again
            let mut cur = mc.manager.as_ref();
            let mut steps = 0;
            while let Some(x) = cur {
                if x == id || steps > p.devices.len() {
                    return Err(format!("{id}: cycle through its managers"));
                }
                steps += 1;
                cur = p.devices.get(x).and_then(|c| c.manager.as_ref());
            }
        }
        for s in &card.sensors {
            let sc = p
                .devices
                .get(s)
                .ok_or(format!("{id}: sensor {s} has no card"))?;
            if sc.manager.as_ref() != Some(id) {
                return Err(format!(
                    "{id} lists sensor {s} whose manager is {:?}",
                    sc.manager
                ));
            }
        }
    }
    Ok(())
}

/// A text rendering: one line per manager with its sensors, indented as a tree.
pub fn to_text(g: &Graph) -> String {
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut has_manager = std::collections::BTreeSet::new();
    for e in &g.edges {
        children.entry(&e.manager).or_default().push(&e.sensor);
        has_manager.insert(e.sensor.as_str());
    }
    let state: BTreeMap<&str, &Node> = g.nodes.iter().map(|n| (n.device.as_str(), n)).collect();
    let mut out = String::new();
    fn walk(
        out: &mut String,
        d: &str,
        depth: usize,
        children: &BTreeMap<&str, Vec<&str>>,
        state: &BTreeMap<&str, &Node>,
    ) {
        let label = state
            .get(d)
            .map(|n| format!(" ({}, {})", n.name, n.device_type))
            .unwrap_or_default();
        let _ = writeln!(out, "{}{}{}", "  ".repeat(depth), d, label);
        if depth > 64 {
            return;
        }
        for c in children.get(d).into_iter().flatten() {
            walk(out, c, depth + 1, children, state);
        }
    }
    for root in g.nodes.iter().map(|n| n.device.as_str()) {
        if !has_manager.contains(root) {
            walk(&mut out, root, 0, &children, &state);
        }
    }
    if out.is_empty() {
        out.push_str("(no pairs)\n");
    }
    out
}

/// A Graphviz rendering.
pub fn to_dot(g: &Graph) -> String {
    let mut out = String::from("digraph pairing {\n");
    for n in &g.nodes {
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n{}\"];",
            n.device,
            n.device,
            n.name.replace('"', "'")
        );
    }
    for e in &g.edges {
        let _ = writeln!(out, "  \"{}\" -> \"{}\";", e.manager, e.sensor);
    }
    out.push_str("}\n");
    out
}
