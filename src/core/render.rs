//! Printing plans: text for people (the README's "Reading a plan"), JSON
//! for programs.

use std::fmt::Write as _;

use crate::core::plan::{Action, Plan};

/// ANSI colours, only when writing to a terminal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Whether to emit ANSI escape codes.
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn action(&self, a: Action) -> String {
        let code = match a {
            Action::Create => "32",
            Action::Delete => "31",
            Action::Update => "33",
            Action::Replace => "35",
        };
        self.paint(code, a.symbol())
    }
}

/// The plan as text: drift section, one change per line with its kernel
/// operations and diffs indented below, and the `Plan:` line.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    if !plan.drift.is_empty() {
        out.push_str("Objects changed outside netloom since its last apply (drift):\n\n");
        for d in &plan.drift {
            let _ = writeln!(
                out,
                "  {} {}: {}",
                style.paint("33", "!"),
                d.address,
                d.what
            );
        }
        out.push('\n');
    }
    if plan.is_empty() {
        out.push_str("No changes. The host matches the configuration.\n");
        return out;
    }
    out.push_str("netloom will perform the following actions:\n\n");
    for c in &plan.changes {
        let _ = write!(out, "  {} {}", style.action(c.action), c.address);
        if !c.summary.is_empty() {
            let _ = write!(out, "  {}", c.summary);
        }
        if let Some(r) = &c.reason {
            let label = if c.action == Action::Replace {
                "forces replacement"
            } else {
                "changes"
            };
            let _ = write!(out, "  ({label}: {r})");
        }
        out.push('\n');
        for op in &c.ops {
            let _ = writeln!(out, "      {op}");
        }
        if let Some(d) = &c.diff {
            for line in d.lines() {
                let painted = if line.starts_with("+++") || line.starts_with("---") {
                    style.paint("1", line)
                } else if line.starts_with('+') {
                    style.paint("32", line)
                } else if line.starts_with('-') {
                    style.paint("31", line)
                } else if line.starts_with("@@") {
                    style.paint("36", line)
                } else {
                    line.to_string()
                };
                let _ = writeln!(out, "        {painted}");
            }
        }
    }
    let s = plan.summary();
    let _ = writeln!(
        out,
        "\nPlan: {} to add, {} to change, {} to destroy.",
        s.add, s.change, s.destroy
    );
    out
}

/// The plan as one JSON document.
pub fn json(plan: &Plan) -> String {
    let v = serde_json::json!({
        "format_version": "1",
        "drift": plan.drift,
        "changes": plan.changes,
        "summary": plan.summary(),
        "no_changes": plan.is_empty(),
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
