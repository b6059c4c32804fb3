//! Printing plans: text for people (the README's "Reading a plan"), JSON
//! for programs.

use std::fmt::Write as _;

use crate::core::plan::{Action, Failure, Plan};

/// How much of each change a text plan shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detail {
    /// One line per change (what `apply` and `down` print by default).
    Brief,
    /// Each change with its kernel and firewall operations; derived files
    /// summarised by the lines they gain and lose (`plan`'s default).
    #[default]
    Normal,
    /// Everything, with the full unified diff of each file (`--verbose`).
    Full,
}

/// ANSI colours (only when writing to a terminal) and the detail level.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Whether to emit ANSI escape codes.
    pub color: bool,
    /// How much of each change to show.
    pub detail: Detail,
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
        // A derived file reads best as the lines it gains and loses.
        let is_file = c.address.starts_with("file.");
        let summary = match (&c.diff, is_file && style.detail != Detail::Full) {
            (Some(d), true) => file_summary(c.action, d),
            _ => c.summary.clone(),
        };
        if !summary.is_empty() {
            let _ = write!(out, "  {summary}");
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
        if style.detail == Detail::Brief || (is_file && style.detail == Detail::Normal) {
            continue;
        }
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

/// A file change in one line: `+1 line: 10.0.0.5 newbie` (the lines
/// added and removed, the first few shown), or the size of a new or
/// removed file.
pub fn file_summary(action: Action, diff: &str) -> String {
    let body = diff
        .lines()
        .filter(|l| !l.starts_with("+++") && !l.starts_with("---"));
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for l in body {
        if let Some(x) = l.strip_prefix('+') {
            added.push(x.split_whitespace().collect::<Vec<_>>().join(" "));
        } else if let Some(x) = l.strip_prefix('-') {
            removed.push(x.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    let lines = |n: usize| if n == 1 { "line" } else { "lines" };
    match action {
        Action::Create => format!("new file, {} {}", added.len(), lines(added.len())),
        Action::Delete => format!("{} {}", removed.len(), lines(removed.len())),
        _ => {
            const SHOWN: usize = 3;
            let part = |sign: char, v: &[String]| {
                let mut shown: Vec<&str> = v.iter().take(SHOWN).map(String::as_str).collect();
                if v.len() > SHOWN {
                    shown.push("...");
                }
                format!("{sign}{} {}: {}", v.len(), lines(v.len()), shown.join(", "))
            };
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(part('+', &added));
            }
            if !removed.is_empty() {
                parts.push(part('-', &removed));
            }
            parts.join("; ")
        }
    }
}

/// The plan as a Markdown pull-request comment: the `Plan:` line, a table
/// of changes, drift, and the text plan folded below.
pub fn markdown(plan: &Plan, detail: Detail) -> String {
    let mut out = String::from("### netloom plan\n\n");
    let s = plan.summary();
    if plan.is_empty() {
        out.push_str("**No changes.**\n");
    } else {
        let _ = writeln!(
            out,
            "**Plan: {} to add, {} to change, {} to destroy.**\n",
            s.add, s.change, s.destroy
        );
        out.push_str("| | address | change |\n|---|---|---|\n");
        for c in &plan.changes {
            let what = match (&c.diff, c.address.starts_with("file.")) {
                (Some(d), true) => file_summary(c.action, d),
                _ => match &c.reason {
                    Some(r) => format!("{} ({r})", c.summary),
                    None => c.summary.clone(),
                },
            };
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} |",
                c.action.symbol(),
                c.address,
                md_cell(&what)
            );
        }
    }
    if !plan.drift.is_empty() {
        out.push_str("\n**Changed outside netloom (drift):**\n\n");
        for d in &plan.drift {
            let _ = writeln!(out, "- `{}`: {}", d.address, md_cell(&d.what));
        }
    }
    if !plan.is_empty() {
        let full = text(
            plan,
            Style {
                color: false,
                detail: if detail == Detail::Brief {
                    Detail::Normal
                } else {
                    detail
                },
            },
        );
        // Four backticks: the plan itself may hold a three-backtick line.
        out.push_str("\n<details><summary>Operations</summary>\n\n````diff\n");
        out.push_str(&full);
        out.push_str("````\n\n</details>\n");
    }
    out
}

/// Text safe inside a Markdown table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Version of the JSON documents below. Fields are only ever added within
/// a version; a removed or renamed field or a changed meaning bumps it.
pub const JSON_FORMAT_VERSION: &str = "1";

fn plan_value(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "format_version": JSON_FORMAT_VERSION,
        "drift": plan.drift,
        "changes": plan.changes,
        "summary": plan.summary(),
        "no_changes": plan.is_empty(),
    })
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// The plan as one JSON document.
pub fn json(plan: &Plan) -> String {
    pretty(&plan_value(plan))
}

/// What an apply did, for `apply --format json`.
#[derive(Clone, Debug, Default)]
pub struct ApplyResult<'a> {
    /// Addresses of the changes made.
    pub applied: &'a [String],
    /// Changes that failed: (address, the object failed with it).
    pub failed: &'a [(String, Failure)],
    /// Objects held back before applying (clashes, taken ports, ...).
    pub held: &'a [Failure],
    /// Changes that wait for a failed object.
    pub waiting: &'a [String],
}

/// `apply --format json`: the plan and what became of it, one document.
pub fn apply_json(plan: &Plan, r: &ApplyResult) -> String {
    let done: std::collections::BTreeSet<&str> = r.applied.iter().map(String::as_str).collect();
    let mut counts = crate::core::plan::Summary::default();
    for c in plan
        .changes
        .iter()
        .filter(|c| done.contains(c.address.as_str()))
    {
        match c.action {
            Action::Create => counts.add += 1,
            Action::Update => counts.change += 1,
            Action::Delete => counts.destroy += 1,
            Action::Replace => {
                counts.add += 1;
                counts.destroy += 1;
            }
        }
    }
    let mut objects: Vec<serde_json::Value> = r
        .held
        .iter()
        .map(|f| serde_json::json!({"object": f.object, "error": f.error, "stage": "plan"}))
        .collect();
    for (addr, f) in r.failed {
        objects.push(
            serde_json::json!({"object": f.object, "error": f.error, "stage": "apply", "address": addr}),
        );
    }
    let ok = r.failed.is_empty() && r.held.is_empty();
    pretty(&serde_json::json!({
        "format_version": JSON_FORMAT_VERSION,
        "plan": plan_value(plan),
        "result": {
            "success": ok,
            "applied": r.applied,
            "failed_objects": objects,
            "waiting": r.waiting,
            "counts": {
                "added": counts.add,
                "changed": counts.change,
                "destroyed": counts.destroy,
                "failed": r.failed.len() + r.held.len(),
                "waiting": r.waiting.len(),
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_file_change_is_one_line() {
        let diff = crate::core::plan::unified(
            "h",
            "h",
            "127.0.0.1\tlocalhost\n10.0.0.2\tapi\n",
            "127.0.0.1\tlocalhost\n10.0.0.2\tapi\n10.0.0.5\tnewbie newbie.app\n",
        );
        assert_eq!(
            file_summary(Action::Update, &diff),
            "+1 line: 10.0.0.5 newbie newbie.app"
        );
        let diff = crate::core::plan::unified("h", "h", "a\nb\nc\nd\n", "x\n");
        assert_eq!(
            file_summary(Action::Update, &diff),
            "+1 line: x; -4 lines: a, b, c, ..."
        );
    }
}
