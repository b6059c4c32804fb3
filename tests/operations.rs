//! Running netloom day to day, through the real binary in throwaway
//! hosts: one agent at a time, log lines that name objects.

mod common;

use std::time::Duration;

use common::{Host, NETLOOM, kernel_tests_possible};

const TOOLS: &[&str] = &["ip", "nft", "unshare", "nsenter"];

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
