//! Running netloom day to day, through the real binary in throwaway
//! hosts: one agent at a time, log lines that name objects.

mod common;

use std::time::Duration;

use common::{Host, NETLOOM, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter", "python3", "curl"];

const CONFIG: &str = "[networks.app]\nsubnet = \"10.73.0.0/24\"\n\
                      [containers.api]\nnetworks = [\"app\"]\n";

#[test]
fn a_second_agent_refuses_to_start_and_names_the_first() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", CONFIG);
    let log = h.dir.path().join("agent.log");
    let first = h.spawn_logged(
        &format!(
            "env RUST_LOG=info {NETLOOM} watch --resync 0 -c {}",
            cfg.display()
        ),
        &log,
    );
    assert!(
        h.wait_for(
            &format!("grep -q reconciled {}", log.display()),
            Duration::from_secs(20)
        ),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The second one exits at once (timeout only guards a regression).
    let second = h.sh(&format!(
        "timeout 20 {NETLOOM} -c {} watch --resync 0",
        cfg.display()
    ));
    assert_eq!(second.code, 1, "{}\n{}", second.stdout, second.stderr);
    assert!(
        second.stderr.contains("another netloom agent is running")
            && second
                .stderr
                .contains(&format!("pid {first}, running since 20")),
        "{}",
        second.stderr
    );
    // The running agent's status was not overwritten.
    let agent = std::fs::read_to_string(h.state_dir().join("agent.json")).unwrap();
    assert!(agent.contains(&format!("\"pid\": {first}")), "{agent}");
    let st = h.netloom(&cfg, &["status"]);
    assert!(
        st.stdout.contains(&format!("Agent (pid {first}, running)")),
        "{}",
        st.stdout
    );
}

fn wait_log(h: &Host, log: &std::path::Path, needle: &str) -> String {
    let found = h.wait_for(
        &format!("grep -qF -- '{needle}' {}", log.display()),
        Duration::from_secs(20),
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(found, "no {needle:?} in the log:\n{text}");
    text
}

#[test]
fn agent_logs_name_every_change_and_interface_one_record_per_line() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", CONFIG);
    let log = h.dir.path().join("agent.log");
    h.spawn_logged(
        &format!(
            "env RUST_LOG=debug {NETLOOM} watch --resync 0 -c {}",
            cfg.display()
        ),
        &log,
    );
    let text = wait_log(&h, &log, "reconciled");
    for line in [
        "+ network.app",
        "+ container.api.eth0",
        "+ file./etc/netns/api/hosts",
    ] {
        assert!(text.contains(line), "no {line:?}:\n{text}");
    }
    // debug: the kernel and firewall operations themselves.
    assert!(text.contains("ip link add br-"), "{text}");
    assert!(text.contains("nft transaction:"), "{text}");

    // A file edit: the new container and the changed hosts file, by address.
    std::fs::write(
        &cfg,
        format!("{CONFIG}[containers.newbie]\nnetworks = [\"app\"]\n"),
    )
    .unwrap();
    let text = wait_log(&h, &log, "+ container.newbie.eth0");
    assert!(text.contains("~ file./etc/netns/api/hosts"), "{text}");

    // Drift inside a namespace names the interface.
    h.sh("ip -n api addr flush dev eth0").ok();
    let text = wait_log(&h, &log, "api: 10.73.0.2/24 removed from eth0");
    assert!(!text.contains("ifindex"), "{text}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    // An invalid file: its errors must still be one record each.
    let cfg = h.config("netloom.toml", CONFIG);
    let log = h.dir.path().join("agent.log");
    h.spawn_logged(
        &format!(
            "{NETLOOM} --log-format json watch --resync 0 -c {}",
            cfg.display()
        ),
        &log,
    );
    wait_log(&h, &log, "reconciled");
    std::fs::write(&cfg, "[containers.api]\nnetworks = [\"nope\"]\nbogus = 1\n").unwrap();
    let text = wait_log(&h, &log, "last good one stays in force");
    let mut addresses = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}\n{text}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        if let Some(a) = v["address"].as_str() {
            addresses.push(a.to_string());
        }
    }
    assert!(
        addresses.iter().any(|a| a == "container.api.eth0"),
        "{addresses:?}"
    );
}

/// `apply --format json`: one document, the plan and its result; the
/// result part is kept as a golden file (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn apply_json_prints_one_result_document() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let mut h = Host::new();
    let cfg = h.config("netloom.toml", CONFIG);
    let r = h.netloom(&cfg, &["apply", "--format", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    assert_eq!(doc["format_version"], "1");
    assert!(
        doc["plan"]["changes"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/apply_result.json");
    let got = format!(
        "{}\n",
        serde_json::to_string_pretty(&doc["result"]).unwrap()
    );
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &got).unwrap();
    } else {
        assert_eq!(std::fs::read_to_string(&golden).unwrap_or_default(), got);
    }

    // A failed object: success false, the object named, exit 1.
    h.spawn("python3 -m http.server 8090 --bind 0.0.0.0");
    assert!(h.wait_for(
        "curl -s -m 1 -o /dev/null http://127.0.0.1:8090/",
        Duration::from_secs(10)
    ));
    let cfg = h.config(
        "netloom.toml",
        &format!("{CONFIG}[containers.web]\nnetworks = [\"app\"]\nports = [\"8090:80\"]\n"),
    );
    let r = h.netloom(&cfg, &["apply", "--format", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).expect("one JSON document");
    let res = &doc["result"];
    assert_eq!(res["success"], false, "{res}");
    assert_eq!(res["failed_objects"][0]["object"], "container.web", "{res}");
    assert_eq!(res["counts"]["failed"], 1, "{res}");
    h.netloom(&cfg, &["down"]).ok();
}

/// `netloom` run outside any sandbox, from `cwd`, for commands that fail
/// (or print) before touching the kernel or a state dir.
fn plain(cwd: &std::path::Path, args: &[&str]) -> common::Run {
    let out = std::process::Command::new(NETLOOM)
        .args(args)
        .current_dir(cwd)
        .env_remove("NETLOOM_CONFIG")
        .env("NETLOOM_STATE_DIR", "/nonexistent-netloom-test")
        .output()
        .expect("run netloom");
    common::Run::from(out)
}

#[test]
fn a_missing_file_names_the_config_flag() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["status"][..], &["inspect", "app"][..]] {
        let r = plain(dir.path(), args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        let line = r.stderr.trim_end();
        assert!(
            line.contains("cannot read netloom.toml")
                && line.contains("-c/--config PATH")
                && line.contains("`netloom down` works without it"),
            "{args:?}: {line}"
        );
        // One line: log collectors and grep see the whole message.
        assert_eq!(line.lines().count(), 1, "{line}");
    }
}

#[test]
fn plan_as_a_user_says_it_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Readable by `nobody`, who runs the plan below.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cfg = dir.path().join("netloom.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let run = |cmd: &str| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", NETLOOM])
            .args(["-c", &cfg.display().to_string(), cmd])
            .env("NETLOOM_STATE_DIR", "/nonexistent-netloom-test")
            .output()
            .expect("setpriv");
        common::Run::from(out)
    };
    let plan = run("plan");
    assert_eq!(plan.code, 1, "{}", plan.stderr);
    assert!(
        plan.stderr
            .contains("plan reads the kernel's network state and needs root")
            && plan
                .stderr
                .contains("`netloom plan --offline` plans without it"),
        "{}",
        plan.stderr
    );
    let apply = run("apply");
    assert_eq!(apply.code, 1, "{}", apply.stderr);
    assert!(
        apply
            .stderr
            .contains("apply reads and changes the kernel's network state"),
        "{}",
        apply.stderr
    );
}

#[test]
fn shell_completions_and_man_page() {
    let dir = tempfile::tempdir().unwrap();
    // bash loads the script and registers the completion function.
    let bash = std::process::Command::new("bash")
        .args([
            "-c",
            &format!("source <({NETLOOM} completions bash) && complete -p netloom"),
        ])
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&bash.stdout);
    assert!(
        bash.status.success() && registered.contains("netloom"),
        "{registered}{}",
        String::from_utf8_lossy(&bash.stderr)
    );
    for shell in ["bash", "zsh", "fish"] {
        let r = plain(dir.path(), &["completions", shell]);
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        // fish spells options as `-l config`.
        for word in ["validate", "plan", "status", "config", "offline"] {
            assert!(r.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    let bad = plain(dir.path(), &["completions", "tcsh"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    let man = plain(dir.path(), &["man"]);
    assert_eq!(man.code, 0, "{}", man.stderr);
    assert!(man.stdout.contains(".TH netloom 1"), "{}", man.stdout);
    for needle in [
        ".SH SYNOPSIS",
        ".SH SUBCOMMANDS",
        "netloom\\-validate",
        "\\-\\-config",
    ] {
        assert!(man.stdout.contains(needle), "man page lacks {needle}");
    }
}

#[test]
fn status_calls_a_file_edit_pending_and_down_needs_no_file() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let h = Host::new();
    let cfg = h.config("netloom.toml", CONFIG);
    h.netloom(&cfg, &["apply"]).ok();
    // Edited, not applied: an MTU change (the network and its endpoints)
    // and a new container: all pending, none of it drift.
    let cfg = h.config(
        "netloom.toml",
        "[networks.app]\nsubnet = \"10.73.0.0/24\"\nmtu = 1400\n\
         [containers.api]\nnetworks = [\"app\"]\n\
         [containers.web]\nnetworks = [\"app\"]\n",
    );
    let st = h.netloom(&cfg, &["status"]);
    assert_eq!(st.code, 2, "{}\n{}", st.stdout, st.stderr);
    let row = |prefix: &str| {
        st.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} row in:\n{}", st.stdout))
            .to_string()
    };
    assert!(row("app ").ends_with("pending"), "{}", st.stdout);
    assert!(row("web").ends_with("pending"), "{}", st.stdout);
    assert!(!st.stdout.contains("drift"), "{}", st.stdout);
    assert!(!st.stdout.contains("Drift"), "{}", st.stdout);

    // `down` from a directory without the file, no -c: it works from the
    // state record.
    let empty = h.dir.path().join("elsewhere");
    std::fs::create_dir_all(&empty).unwrap();
    let down = h.sh(&format!(
        "cd {} && env -u NETLOOM_CONFIG {NETLOOM} down",
        empty.display()
    ));
    assert_eq!(down.code, 0, "{}\n{}", down.stdout, down.stderr);
    assert!(h.netns_list().trim().is_empty(), "{}", h.netns_list());
}
