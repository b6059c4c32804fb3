//! Confirmed applies against the kernel: a change that cuts the outside
//! client off is rolled back when not confirmed (the client reaches the
//! published port again), kept when confirmed, and rolled back by the
//! next `apply` when the waiting process was killed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Host, NETLOOM, UPLINK_IP, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "curl", "python3", "unshare", "nsenter"];

const PUBLISHED: &str = "[containers.web]\nports = [\"8080:80\"]\n";
/// The change that cuts the outside off: the port is no longer published
/// (and `web`'s own hosts line changes, so a rollback has files to restore).
const CUT: &str = "[containers.web]\nhostname = \"cut\"\n";

/// The files netloom wrote for `web`.
fn web_files(h: &Host) -> String {
    h.sh("cat /etc/netns/web/hosts /etc/netns/web/resolv.conf")
        .stdout
}

fn outside_reaches(h: &Host) -> bool {
    h.sh(&format!(
        "ip netns exec outside curl -sf -m 2 -o /dev/null http://{UPLINK_IP}:8080/"
    ))
    .code
        == 0
}

/// A host with `web` serving on the published port 8080, reachable from
/// outside.
fn serving_host() -> (Host, std::path::PathBuf) {
    let mut h = Host::with_outside();
    let cfg = h.config("c.toml", PUBLISHED);
    h.netloom(&cfg, &["apply"]).ok();
    let log = h.dir.path().join("web.log");
    h.spawn_logged(
        "ip netns exec web python3 -m http.server 80 --bind 172.17.0.2",
        &log,
    );
    assert!(
        h.wait_for(
            &format!("ip netns exec outside curl -sf -m 1 -o /dev/null http://{UPLINK_IP}:8080/"),
            Duration::from_secs(10)
        ),
        "the published port does not work to begin with"
    );
    (h, cfg)
}

/// Starts `apply --confirm-timeout SECS` in the background; its pid goes to
/// `pid`, its exit status to `rc`, its stderr to `err`.
fn apply_in_background(
    h: &mut Host,
    cfg: &Path,
    secs: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = h.dir.path();
    let (pid, rc, err) = (d.join("apply.pid"), d.join("apply.rc"), d.join("apply.err"));
    h.spawn(&format!(
        "sh -c 'sh -c \"echo \\$\\$ > {pid}; exec {NETLOOM} -c {cfg} apply --confirm-timeout {secs}\" 2> {err}; echo $? > {rc}'",
        pid = pid.display(),
        cfg = cfg.display(),
        err = err.display(),
        rc = rc.display(),
    ));
    (pid, rc)
}

#[test]
fn an_unconfirmed_change_is_rolled_back_and_its_content_rejected() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let (h, cfg) = serving_host();
    let files_before = web_files(&h);
    assert!(files_before.contains("172.17.0.2"), "{files_before}");
    h.config("c.toml", CUT);
    let r = h.netloom(&cfg, &["apply", "--confirm-timeout", "2"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("rolled back"), "{}", r.stderr);
    // The change was made (the plan removed the port) and undone.
    assert!(r.stdout.contains("- port.web.8080/tcp"), "{}", r.stdout);
    assert!(outside_reaches(&h), "not rolled back");
    // The files are back to their text (the state record keeps only their
    // digests: a rollback once wrote those into hosts and resolv.conf).
    assert_eq!(web_files(&h), files_before, "files not rolled back");

    // The rolled-back content is not applied again by a plain apply ...
    let r = h.netloom(&cfg, &["apply"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("was rolled back"), "{}", r.stderr);
    assert!(outside_reaches(&h));
    // ... and status says why.
    let s = h.netloom(&cfg, &["status"]);
    assert!(
        format!("{}{}", s.stdout, s.stderr).contains("rolled back"),
        "{}\n{}",
        s.stdout,
        s.stderr
    );
    // Control: once the file changes, a plain apply applies it.
    h.config("c.toml", "[containers.web]\nports = [\"9090:80\"]\n");
    h.netloom(&cfg, &["apply"]).ok();
    assert!(!outside_reaches(&h));
}

#[test]
fn a_confirmed_change_is_kept() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let (mut h, cfg) = serving_host();
    h.config("c.toml", CUT);
    let (_, rc) = apply_in_background(&mut h, &cfg, 60);
    assert!(
        h.wait_for(
            &format!("! ip netns exec outside curl -sf -m 1 -o /dev/null http://{UPLINK_IP}:8080/"),
            Duration::from_secs(20)
        ),
        "the change was not applied"
    );
    let c = h.netloom(&cfg, &["confirm"]);
    assert_eq!(c.code, 0, "{}\n{}", c.stdout, c.stderr);
    assert!(
        h.wait_for(
            &format!("test -s {}", rc.display()),
            Duration::from_secs(20)
        ),
        "the waiting apply did not end after confirm"
    );
    assert_eq!(std::fs::read_to_string(&rc).unwrap().trim(), "0");
    assert!(!outside_reaches(&h), "a confirmed change was undone");
    // Nothing waits any more.
    assert_eq!(h.netloom(&cfg, &["confirm"]).code, 1);
}

#[test]
fn a_killed_waiting_apply_is_rolled_back_by_the_next_apply() {
    if !kernel_tests_possible(TOOLS) {
        return;
    }
    let (mut h, cfg) = serving_host();
    h.config("c.toml", CUT);
    let (pid, _) = apply_in_background(&mut h, &cfg, 3);
    assert!(
        h.wait_for(
            &format!("! ip netns exec outside curl -sf -m 1 -o /dev/null http://{UPLINK_IP}:8080/"),
            Duration::from_secs(20)
        ),
        "the change was not applied"
    );
    h.sh(&format!("kill -9 $(cat {})", pid.display())).ok();
    // Until the deadline the next apply refuses (a change awaits
    // confirmation); after it, it rolls back first.
    assert!(
        h.wait_for(
            &format!(
                "{NETLOOM} -c {} apply 2>&1 | grep -q 'rolling back'",
                cfg.display()
            ),
            Duration::from_secs(30)
        ),
        "the next apply did not roll back"
    );
    assert!(outside_reaches(&h), "not rolled back after the crash");
}
