//! Golden plans of `plan --offline --base OLD.toml` (what a pull-request
//! check comments) in text, Markdown and JSON, through the real binary.
//! `tests/plan_formats/<case>/` holds `base.toml`, `config.toml` and the
//! expected `plan.txt`, `plan.md`, `plan.json`. Run with `UPDATE_GOLDEN=1`
//! to rewrite them after an intended change, and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

const NETLOOM: &str = env!("CARGO_BIN_EXE_netloom");

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/plan_formats"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
    v.sort();
    v
}

fn plan(dir: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(NETLOOM)
        .current_dir(dir)
        // Nothing of the machine may enter an offline plan.
        .env_remove("NETLOOM_STATE_DIR")
        .env_remove("NETLOOM_CONFIG")
        .args([
            "-c",
            "config.toml",
            "plan",
            "--offline",
            "--base",
            "base.toml",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn base_plans_are_pull_request_diffs() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok();
    let mut failures = Vec::new();
    let all = cases();
    assert!(!all.is_empty());
    for dir in all {
        for (file, extra) in [
            ("plan.txt", &[][..]),
            ("plan.md", &["--format", "markdown"][..]),
            ("plan.json", &["--format", "json"][..]),
        ] {
            let (code, got) = plan(&dir, extra);
            assert_eq!(code, 0, "{}: {got}", dir.display());
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != got {
                failures.push(format!("{}:\n{got}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_base_equal_to_the_file_plans_nothing() {
    let dir = &cases()[0];
    let out = Command::new(NETLOOM)
        .current_dir(dir)
        .args([
            "-c",
            "base.toml",
            "plan",
            "--offline",
            "--base",
            "base.toml",
            "--detailed-exitcode",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("No changes."));
}

#[test]
fn an_added_container_is_a_compact_diff_not_a_rebuild() {
    let (_, text) = plan(&cases()[0], &[]);
    // Existing containers keep their addresses; their hosts files gain one line.
    assert!(
        text.contains("~ file./etc/netns/api/hosts  +1 line: 10.0.0.4 newbie newbie.app"),
        "{text}"
    );
    assert!(!text.contains("+ container.api"), "{text}");
    assert!(!text.contains("@@"), "no full diffs by default: {text}");
    let (_, verbose) = plan(&cases()[0], &["--verbose"]);
    assert!(
        verbose.contains("@@") && verbose.contains("+10.0.0.4\tnewbie"),
        "{verbose}"
    );
}

#[test]
fn an_offline_plan_takes_nothing_from_the_machine() {
    // No upstream_dns in the file: resolv.conf names only the gateway, not
    // the nameservers of the machine running the plan.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("netloom.toml"),
        "[networks.app]\nsubnet = \"10.0.0.0/24\"\n[containers.api]\nnetworks = [\"app\"]\n",
    )
    .unwrap();
    let out = Command::new(NETLOOM)
        .current_dir(dir.path())
        .args(["plan", "--offline", "--verbose"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let servers: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("+nameserver "))
        .collect();
    assert_eq!(servers, vec!["10.0.0.1"], "{text}");
}
