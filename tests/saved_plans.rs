//! Golden saved plans: the document `plan --out` writes, for golden plan
//! cases of `tests/plans/` (config, observed state and allocations from
//! there; a fixed host identity and config path). The expected documents
//! are `tests/saved_plans/<case>.json`; run with `UPDATE_GOLDEN=1` to
//! rewrite them after an intended change of the format (and bump
//! `saved_plan::FORMAT_VERSION` if old plans can no longer be read).

use std::path::{Path, PathBuf};

use netloom::core::ipam::Allocations;
use netloom::core::model::{self, HostInfo, State};
use netloom::core::saved_plan::{self, Inputs};
use netloom::core::{plan, spec};

const CASES: &[&str] = &["empty_host", "port_added", "dual_stack"];

fn host() -> HostInfo {
    HostInfo {
        upstream_dns: vec!["10.99.0.2:53".parse().unwrap()],
        state_dir: PathBuf::from("/var/lib/netloom"),
        agent_dns: true,
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn saved(case: &str) -> String {
    let dir = root().join("tests/plans").join(case);
    let bytes = std::fs::read(dir.join("config.toml")).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let spec = spec::load("/etc/netloom.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let alloc_text =
        std::fs::read_to_string(dir.join("allocations.json")).unwrap_or_else(|_| "{}".into());
    let alloc: Allocations = serde_json::from_str(&alloc_text).unwrap();
    let desired = model::resolve(&spec, &alloc, &host()).unwrap().state;
    let observed: State =
        serde_json::from_str(&std::fs::read_to_string(dir.join("observed.json")).unwrap()).unwrap();
    let p = plan::diff(&desired, &observed, None);
    let inputs = Inputs {
        config_path: "/etc/netloom.toml",
        config_bytes: &bytes,
        host_identity: "machine-id=golden\nhostname=golden\nnetns=0:1\n",
        state_json: &alloc_text,
        observed: &observed,
    };
    saved_plan::to_text(&saved_plan::build(&inputs, &p))
}

#[test]
fn golden_saved_plans() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut failures = Vec::new();
    for case in CASES {
        let text = saved(case);
        // Whatever the golden says, the document reads back as itself.
        let back = saved_plan::parse(&text).unwrap();
        assert!(saved_plan::stale_reasons(&back, &back).is_empty());
        let golden = root()
            .join("tests/saved_plans")
            .join(format!("{case}.json"));
        if update {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != text {
            failures.push(format!(
                "{case}:\n{}",
                plan::unified("expected", "actual", &expected, &text)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
