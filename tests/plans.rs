//! Golden plans: `tests/plans/<case>/` holds `config.toml`, the observed
//! state `observed.json` (the same model type the kernel reader fills),
//! optionally `applied.json` (the state of the last apply, for drift) and
//! the expected `plan.txt`. Run with `UPDATE_GOLDEN=1` to rewrite the
//! expected files after an intended change, and review the diff.

use std::path::{Path, PathBuf};

use netloom::core::ipam::Allocations;
use netloom::core::model::{self, HostInfo, State};
use netloom::core::{plan, render, spec};

fn host() -> HostInfo {
    HostInfo {
        upstream_dns: vec!["10.99.0.2:53".parse().unwrap()],
        state_dir: PathBuf::from("/var/lib/netloom"),
        // The golden plans are those of a host where the agent runs.
        agent_dns: true,
    }
}

fn read_state(p: &Path) -> Option<State> {
    let text = std::fs::read_to_string(p).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

fn desired(dir: &Path) -> State {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let spec = spec::load(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
    let alloc: Allocations = std::fs::read_to_string(dir.join("allocations.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_default();
    model::resolve(&spec, &alloc, &host()).unwrap().state
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plans"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
    v.sort();
    v
}

#[test]
fn golden_plans() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut failures = Vec::new();
    let all = cases();
    assert!(
        all.len() >= 7,
        "expected the golden cases, found {}",
        all.len()
    );
    for dir in all {
        let want = desired(&dir);
        let observed = read_state(&dir.join("observed.json")).unwrap_or_default();
        let applied = read_state(&dir.join("applied.json"));
        let p = plan::diff(&want, &observed, applied.as_ref());
        let text = render::text(&p, render::Style::default());
        // The JSON rendering must always be valid JSON.
        let _: serde_json::Value = serde_json::from_str(&render::json(&p)).unwrap();
        let golden = dir.join("plan.txt");
        if update {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != text {
            failures.push(format!(
                "{}:\n{}",
                dir.display(),
                plan::unified("expected", "actual", &expected, &text)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden plans differ:\n{}",
        failures.join("\n")
    );
}

/// Applying a plan to the observed state it was made against must give the
/// desired state: checked by planning again against the desired state.
#[test]
fn plan_against_desired_is_empty() {
    for dir in cases() {
        let want = desired(&dir);
        let p = plan::diff(&want, &want, Some(&want));
        assert!(p.is_empty(), "{}: {:?}", dir.display(), p.changes);
        assert!(p.drift.is_empty());
    }
}

/// Writes `desired.json` next to each case (with `DUMP_DESIRED=1`), as the
/// starting point for hand-made observed states.
#[test]
fn dump_desired() {
    if std::env::var("DUMP_DESIRED").is_err() {
        return;
    }
    for dir in cases() {
        let s = serde_json::to_string_pretty(&desired(&dir)).unwrap();
        std::fs::write(dir.join("desired.json"), s).unwrap();
    }
}
