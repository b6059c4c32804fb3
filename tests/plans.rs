//! Golden plans: `tests/plans/<case>/` holds `config.toml`, the observed
//! state `observed.json` (the same model type the kernel reader fills),
//! optionally `applied.json` (the state of the last apply, for drift) and
//! the expected `plan.txt` and `plan.json` (the `--format json` output).
//! Run with `UPDATE_GOLDEN=1` (exactly `1`) to rewrite the expected files
//! after an intended change, and review the diff. `.ci/run` refuses to run
//! with it set.
//!
//! Also here: the plan's convergence properties, checked by applying plans
//! to a fake kernel (`tests/fake_kernel`) and planning again, on the golden
//! cases and on generated configs (proptest).

mod common;
mod fake_kernel;

use std::path::{Path, PathBuf};

use fake_kernel::FakeKernel;
use netloom::core::firewall;
use netloom::core::ipam::Allocations;
use netloom::core::model::{self, HostInfo, State};
use netloom::core::plan::Plan;
use netloom::core::{plan, render, spec};
use netloom::host::state::Owned;
use proptest::prelude::*;

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
    let alloc: Allocations = std::fs::read_to_string(dir.join("allocations.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_default();
    resolve(&path.display().to_string(), &text, &alloc)
}

fn resolve(name: &str, text: &str, alloc: &Allocations) -> State {
    let spec = spec::load(name, text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    model::resolve(&spec, alloc, &host()).unwrap().state
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
    let update = common::update_requested("UPDATE_GOLDEN");
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
        let json = render::json(&p);
        // The JSON rendering must always be valid JSON.
        let _: serde_json::Value = serde_json::from_str(&json).unwrap();
        for (file, actual) in [("plan.txt", &text), ("plan.json", &json)] {
            let golden = dir.join(file);
            if update {
                std::fs::write(&golden, actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            if expected != *actual {
                failures.push(format!(
                    "{}:\n{}",
                    golden.display(),
                    plan::unified("expected", "actual", &expected, actual)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden plans differ:\n{}",
        failures.join("\n")
    );
}

/// Applies `p` (made against `kernel`'s current state for `want`) to the
/// fake kernel, as `netloom apply` does: the netlink, netns, sysctl and file
/// operations in plan order, the firewall as one transaction, and the
/// table's deletion when the file wants no firewall.
fn apply_fake(kernel: &mut FakeKernel, want: &State, p: &Plan) {
    kernel.nft_target = want.firewall.clone();
    // The fake does not read the transaction's script (see fake_kernel);
    // any non-empty transaction stands for "install nft_target".
    let fw = want
        .firewall
        .as_ref()
        .map(|f| f.fw.clone())
        .unwrap_or_default();
    let tx = firewall::plan_transaction(&fw, None);
    let had_firewall = kernel.firewall.is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Nothing fails in the fake, so no object is held back from the
    // transaction.
    let fw_tx = |_: &std::collections::BTreeSet<String>| Some(tx.clone());
    let out = rt.block_on(netloom::host::apply::execute_with(
        kernel,
        p,
        &fw_tx,
        &mut Owned::default(),
    ));
    assert!(
        out.failed.is_empty(),
        "the fake kernel refused an operation: {:?}\nplan:\n{}",
        out.failed,
        render::text(p, render::Style::default())
    );
    if want.firewall.is_none() && had_firewall {
        kernel.firewall = None;
    }
}

/// plan(desired, observe(apply(plan(desired, observed)))) is empty: a plan
/// does everything it says it does, and no more is left to do. Checked on
/// every golden case, starting from its observed state; the second plan
/// also reports no drift against the state just applied.
#[test]
fn applying_a_golden_plan_converges() {
    for dir in cases() {
        let want = desired(&dir);
        let observed = read_state(&dir.join("observed.json")).unwrap_or_default();
        let applied = read_state(&dir.join("applied.json"));
        let mut kernel = FakeKernel::holding(&observed);
        // The fake reads back what the golden observed state says.
        assert_eq!(kernel.observe(&want), observed.clone(), "{}", dir.display());
        let first = plan::diff(&want, &observed, applied.as_ref());
        apply_fake(&mut kernel, &want, &first);
        let after = kernel.observe(&want);
        let second = plan::diff(&want, &after, Some(&want));
        assert!(
            second.is_empty() && second.drift.is_empty(),
            "{}: not converged after one apply:\n{}",
            dir.display(),
            render::text(&second, render::Style::default())
        );
    }
}

/// The plan of a config against itself (observed = applied = desired) is
/// empty, with no drift.
#[test]
fn plan_against_desired_is_empty() {
    for dir in cases() {
        let want = desired(&dir);
        let p = plan::diff(&want, &want, Some(&want));
        assert!(p.is_empty(), "{}: {:?}", dir.display(), p.changes);
        assert!(p.drift.is_empty());
    }
}

/// A tool, not a test: writes `desired.json` next to each case, as the
/// starting point for hand-made observed states. Run it with
/// `cargo test --test plans dump_desired -- --ignored`.
#[test]
#[ignore = "a tool: writes tests/plans/*/desired.json"]
fn dump_desired() {
    for dir in cases() {
        let s = serde_json::to_string_pretty(&desired(&dir)).unwrap();
        std::fs::write(dir.join("desired.json"), s).unwrap();
        eprintln!("wrote {}", dir.join("desired.json").display());
    }
}

// ---- generated configs ----

#[derive(Clone, Debug)]
struct GenNetwork {
    internal: bool,
    icc: bool,
    ipv6: bool,
}

#[derive(Clone, Debug)]
enum GenMode {
    /// The default bridge.
    Default,
    /// On the user-defined networks with these indexes (deduplicated).
    Networks(Vec<usize>),
    None,
    /// `container:c0` (only for containers after the first).
    SharesFirst,
}

#[derive(Clone, Debug)]
struct GenContainer {
    mode: GenMode,
    ports: Vec<u8>,
    link_first: bool,
}

fn gen_network() -> impl Strategy<Value = GenNetwork> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(internal, icc, ipv6)| GenNetwork {
        internal,
        icc,
        ipv6,
    })
}

fn gen_container() -> impl Strategy<Value = GenContainer> {
    let mode = prop_oneof![
        3 => Just(GenMode::Default),
        4 => proptest::collection::vec(0usize..3, 1..3).prop_map(GenMode::Networks),
        1 => Just(GenMode::None),
        1 => Just(GenMode::SharesFirst),
    ];
    (mode, proptest::collection::vec(0u8..4, 0..3), any::<bool>()).prop_map(
        |(mode, ports, link_first)| GenContainer {
            mode,
            ports,
            link_first,
        },
    )
}

/// Renders a generated config as the TOML a user would write. Ports are
/// published only where Docker allows them (not on internal networks or
/// shared namespaces), with distinct host ports per container.
fn render_config(nets: &[GenNetwork], containers: &[GenContainer]) -> String {
    let mut t = String::new();
    for (i, n) in nets.iter().enumerate() {
        t += &format!("[networks.n{i}]\nsubnet = \"10.{}.0.0/24\"\n", 10 * (i + 1));
        if n.ipv6 {
            t += &format!("subnet6 = \"fd00:{i}::/64\"\n");
        }
        t += &format!("internal = {}\nicc = {}\n\n", n.internal, n.icc);
    }
    for (i, c) in containers.iter().enumerate() {
        t += &format!("[containers.c{i}]\n");
        let mut publishable = true;
        match &c.mode {
            GenMode::Default => {
                if c.link_first && i > 0 && matches!(containers[0].mode, GenMode::Default) {
                    t += "links = [\"c0:first\"]\n";
                }
            }
            GenMode::Networks(idx) => {
                let mut names: Vec<usize> = idx.iter().map(|j| j % nets.len().max(1)).collect();
                names.sort();
                names.dedup();
                if nets.is_empty() {
                    // No user-defined network: stay on the default bridge.
                } else {
                    let list: Vec<String> = names.iter().map(|j| format!("\"n{j}\"")).collect();
                    t += &format!("networks = [{}]\n", list.join(", "));
                    publishable = names.iter().all(|j| !nets[*j].internal);
                }
            }
            GenMode::None => {
                t += "network_mode = \"none\"\n";
                publishable = false;
            }
            GenMode::SharesFirst => {
                if i > 0 && !matches!(containers[0].mode, GenMode::SharesFirst) {
                    t += "network_mode = \"container:c0\"\n";
                    publishable = false;
                }
            }
        }
        if publishable && !c.ports.is_empty() {
            let mut ports: Vec<String> = Vec::new();
            let mut kinds = c.ports.clone();
            kinds.sort();
            kinds.dedup();
            for k in kinds {
                let host = 8000 + 10 * i as u16 + u16::from(k);
                ports.push(match k {
                    0 => format!("\"{host}:80\""),
                    1 => format!("\"127.0.0.1:{host}:443\""),
                    2 => format!("\"{host}:53/udp\""),
                    _ => "\"3000\"".to_string(),
                });
            }
            t += &format!("ports = [{}]\n", ports.join(", "));
        }
        t += "\n";
    }
    t
}

proptest! {
    // No regression file is written into the source tree: a failure
    // prints its minimal config, which belongs in a golden case.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// For any config: applying the plan from an empty host to the fake
    /// kernel converges (the next plan is empty, with no drift), and the
    /// plan of the config against itself is empty.
    #[test]
    fn generated_configs_converge(
        nets in proptest::collection::vec(gen_network(), 0..3),
        containers in proptest::collection::vec(gen_container(), 1..5),
    ) {
        let text = render_config(&nets, &containers);
        let want = resolve("gen.toml", &text, &Allocations::default());

        let itself = plan::diff(&want, &want, Some(&want));
        prop_assert!(itself.is_empty() && itself.drift.is_empty(), "{text}\n{:?}", itself);

        let mut kernel = FakeKernel::default();
        let first = plan::diff(&want, &kernel.observe(&want), None);
        prop_assert!(!first.is_empty(), "nothing to do on an empty host:\n{text}");
        apply_fake(&mut kernel, &want, &first);
        let after = kernel.observe(&want);
        let second = plan::diff(&want, &after, Some(&want));
        prop_assert!(
            second.is_empty() && second.drift.is_empty(),
            "not converged:\n{text}\n{}",
            render::text(&second, render::Style::default())
        );
        // Taking it all down again leaves nothing netloom owns (host
        // sysctls are left as they are, as `netloom down` does).
        let down = plan::diff(&State::default(), &after, None);
        apply_fake(&mut kernel, &State::default(), &down);
        let mut gone = kernel.observe(&want);
        gone.sysctls.clear();
        prop_assert_eq!(gone, State::default(), "{}", text);
    }
}
