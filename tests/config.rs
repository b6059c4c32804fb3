//! The file: every example validates, every invalid case is reported at the
//! offending value, all errors at once, and no input makes netloom panic.

mod common;

use std::process::Command;

use common::NETLOOM;
use netloom::core::spec;

/// Errors of `text` as `LINE:COL: message` (the file name stripped).
fn errors(text: &str) -> Vec<String> {
    match spec::load("f.toml", text) {
        Ok(_) => Vec::new(),
        Err(d) => d
            .lines
            .iter()
            .map(|l| l.strip_prefix("f.toml:").unwrap().to_string())
            .collect(),
    }
}

/// `LINE:COL` of the last occurrence of `value` in `text` (where the
/// offending value stands in these small cases), or `at` itself when it is
/// already a position.
fn position(text: &str, at: &str) -> String {
    if at.split(':').all(|p| p.parse::<usize>().is_ok()) {
        return at.to_string();
    }
    let off = text
        .rfind(at)
        .unwrap_or_else(|| panic!("{at:?} not in {text:?}"));
    let (l, c) = netloom::core::diag::line_col(text, off);
    format!("{l}:{c}")
}

#[track_caller]
fn assert_error(text: &str, at: &str, needle: &str) {
    let at = &position(text, at);
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{at}: ")) && e.contains(needle)),
        "expected an error at {at} containing {needle:?}, got {errs:#?}"
    );
}

#[test]
fn every_example_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.starts_with("#:schema ../schemas/netloom.schema.json"),
                "{} must start with the schema line",
                p.display()
            );
            if let Err(d) = spec::load(&p.display().to_string(), &text) {
                panic!("{d}");
            }
            let out = Command::new(NETLOOM)
                .arg("validate")
                .arg("-c")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(
        n >= 4,
        "expected the tutorial and one example per feature, found {n}"
    );
}

#[test]
fn committed_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/netloom.schema.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let current = netloom::core::config::schema_json();
    if common::update_requested("UPDATE_SCHEMA") {
        std::fs::write(path, &current).unwrap();
        return;
    }
    assert_eq!(
        committed, current,
        "schemas/netloom.schema.json is stale: run `netloom schema > schemas/netloom.schema.json` (or UPDATE_SCHEMA=1 cargo test)"
    );
    let out = Command::new(NETLOOM).arg("schema").output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), current);
}

#[test]
fn syntax_and_shape_errors() {
    assert_error("x = [", "1:6", "");
    assert_error(
        "[containers.a]\nport = [\"80\"]\n",
        "2:1",
        "did you mean `ports`?",
    );
    assert_error("[networks.n]\nsubnet = 5\n", "2:10", "");
    assert_error("[settings]\nport_range = []\n", "2:14", "");
    assert_error("[containers.a]\nnetworks = 3\n", "2:12", "");
}

#[test]
fn names() {
    assert_error(
        "[containers.\"a/b\"]\n",
        "\"a/b\"",
        "invalid container name",
    );
    assert_error("[containers.\"..\"]\n", "\"..\"", "invalid container name");
    assert_error(
        "[networks.\"-x\"]\nsubnet = \"10.0.0.0/24\"\n",
        "\"-x\"",
        "invalid network name",
    );
    assert_error(
        "[containers.a]\nnetns = \"x/y\"\n",
        "\"x/y\"",
        "invalid netns name",
    );
}

#[test]
fn networks() {
    let t = "[networks.a]\nsubnet = \"10.1.0.0/16\"\nbridge = \"sixteen-bytes-xx\"\n";
    assert_error(t, "3:10", "at most 15 bytes");
    // Reserved: netloom creates its interfaces under such names first.
    let t = "[networks.a]\nsubnet = \"10.1.0.0/16\"\nbridge = \"nl~mine\"\n";
    assert_error(t, "3:10", "netloom's temporary interface names");
    let t = "[networks.a]\nsubnet = \"10.1.0.0/16\"\nbridge = \"br0\"\n[networks.b]\nsubnet = \"10.2.0.0/16\"\nbridge = \"br0\"\n";
    assert_error(t, "6:10", "already used by network `a`");
    let t = "[networks.a]\nsubnet = \"10.1.0.0/16\"\n[networks.b]\nsubnet = \"10.1.128.0/17\"\n";
    assert_error(t, "4:10", "overlaps");
    assert_error(
        "[networks.a]\nsubnet = \"10.1.0.0/33\"\n",
        "2:10",
        "not an IPv4 subnet",
    );
    assert_error(
        "[networks.a]\nsubnet = \"10.1.0.1/16\"\n",
        "2:10",
        "did you mean 10.1.0.0/16?",
    );
    assert_error(
        "[networks.a]\nsubnet = \"10.1.0.0/16\"\ngateway = \"10.2.0.1\"\n",
        "3:11",
        "not inside subnet",
    );
    assert_error(
        "[networks.a]\nsubnet = \"10.1.0.0/16\"\ngateway = \"10.1.255.255\"\n",
        "3:11",
        "broadcast",
    );
    assert_error(
        "[networks.a]\nsubnet = \"10.1.0.0/16\"\ngateway = \"10.1.0.0\"\n",
        "3:11",
        "network or broadcast",
    );
    assert_error("[networks.a]\n", "1:1", "needs a subnet");
    assert_error(
        "[networks.a]\nsubnet = \"10.1.0.0/16\"\nmtu = 20\n",
        "3:7",
        "mtu",
    );
}

#[test]
fn addresses() {
    let net = "[networks.n]\nsubnet = \"10.1.0.0/24\"\n";
    assert_error(
        &format!("{net}[containers.a]\nnetworks = {{ n = {{ ip = \"10.2.0.5\" }} }}\n"),
        "\"10.2.0.5\"",
        "not inside subnet",
    );
    assert_error(
        &format!("{net}[containers.a]\nnetworks = {{ n = {{ ip = \"10.1.0.1\" }} }}\n"),
        "\"10.1.0.1\"",
        "gateway",
    );
    assert_error(
        &format!("{net}[containers.a]\nnetworks = {{ n = {{ ip = \"10.1.0.255\" }} }}\n"),
        "\"10.1.0.255\"",
        "broadcast",
    );
    let t = format!(
        "{net}[containers.a]\nnetworks = {{ n = {{ ip = \"10.1.0.5\" }} }}\n[containers.b]\nnetworks = {{ n = {{ ip = \"10.1.0.5\" }} }}\n"
    );
    assert_error(&t, "\"10.1.0.5\"", "already given to container `a`");
    assert_error(
        &format!("{net}[containers.a]\nnetworks = {{ n = {{ mac = \"zz\" }} }}\n"),
        "\"zz\"",
        "not a MAC",
    );
    assert_error(
        &format!("{net}[containers.a]\nnetworks = [\"n\", \"n\"]\n"),
        "\"n\"]",
        "listed twice",
    );
    assert_error(
        "[containers.a]\nnetworks = [\"nope\"]\n",
        "\"nope\"",
        "not declared",
    );
}

#[test]
fn ports() {
    assert_error(
        "[containers.a]\nports = [\"0:80\"]\n",
        "2:10",
        "out of range",
    );
    assert_error(
        "[containers.a]\nports = [\"8000-8002:80\"]\n",
        "2:10",
        "different length",
    );
    assert_error(
        "[containers.a]\nports = [\"80/icmp\"]\n",
        "2:10",
        "protocol",
    );
    assert_error(
        "[containers.a]\nports = [\"8080:80\"]\n[containers.b]\nports = [\"8080:81\"]\n",
        "4:10",
        "already published by container `a`",
    );
    // Same port, other protocol or other host IP: fine.
    assert!(errors("[containers.a]\nports = [\"8080:80\", \"8080:80/udp\", \"127.0.0.1:9000:80\", \"127.0.0.2:9000:80\"]\n").is_empty());
    // 0.0.0.0 claims every address.
    assert_error(
        "[containers.a]\nports = [\"9000:80\", \"127.0.0.1:9000:81\"]\n",
        "2:21",
        "already published",
    );
    let t = "[networks.n]\nsubnet = \"10.1.0.0/24\"\ninternal = true\n[containers.a]\nnetworks = [\"n\"]\nports = [\"80:80\"]\n";
    assert_error(t, "6:10", "internal");
    assert_error(
        "[settings]\nport_range = \"6000-5000\"\n",
        "2:14",
        "reversed",
    );
}

#[test]
fn modes_and_links() {
    assert_error(
        "[containers.a]\nnetwork_mode = \"host\"\nports = [\"80\"]\n",
        "3:10",
        "cannot publish ports",
    );
    assert_error(
        "[containers.a]\nnetwork_mode = \"host\"\nnetworks = [\"bridge\"]\n",
        "3:12",
        "takes no networks",
    );
    assert_error(
        "[containers.a]\nnetwork_mode = \"container:b\"\n",
        "2:16",
        "undeclared container `b`",
    );
    assert_error(
        "[containers.a]\nnetwork_mode = \"bogus\"\n",
        "2:16",
        "unknown network_mode",
    );
    let t = "[containers.a]\nnetwork_mode = \"container:b\"\n[containers.b]\nnetwork_mode = \"container:a\"\n";
    assert_error(t, "2:16", "cycle");
    assert_error(
        "[containers.a]\nlinks = [\"b\"]\n",
        "2:10",
        "undeclared container `b`",
    );
    let t = "[networks.n]\nsubnet = \"10.1.0.0/24\"\n[containers.a]\nnetworks = [\"n\"]\n[containers.b]\nlinks = [\"a\"]\n";
    assert_error(t, "6:10", "share no network");
    assert!(errors("[containers.a]\n[containers.b]\nlinks = [\"a:alias\"]\n[containers.c]\nnetwork_mode = \"container:b\"\n").is_empty());
}

#[test]
fn all_errors_are_collected() {
    let t = "[networks.a]\nsubnet = \"10.1.0.1/16\"\n[containers.x]\nports = [\"0:1\"]\nlinks = [\"nope\"]\n";
    assert_eq!(errors(t).len(), 3, "{:?}", errors(t));
}

#[test]
fn cli_validate_exit_codes_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[containers.a]\nports = [\"0:1\"]\nlinks = [\"zz\"]\n",
    )
    .unwrap();
    let out = Command::new(NETLOOM)
        .args(["validate", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:10: ", bad.display())), "{err}");
    assert!(err.contains(&format!("{}:3:10: ", bad.display())), "{err}");
    // plan --offline refuses an invalid file the same way.
    let out = Command::new(NETLOOM)
        .args(["plan", "--offline", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn no_panic_on_any_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.toml");
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"\0\0\0".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x41],
        (0..=255u8).cycle().take(4096).collect(),
        b"[[containers]]\n".to_vec(),
        b"containers = 1\n".to_vec(),
        b"[containers.a.networks.b]\nip = 1\n".to_vec(),
        b"[networks.bridge]\n".to_vec(),
        b"[networks.n]\nsubnet = \"0.0.0.0/0\"\n".to_vec(),
        b"[networks.n]\nsubnet = \"10.0.0.0/30\"\nmtu = -1\n".to_vec(),
        "[containers.\u{e9}]\n".as_bytes().to_vec(),
    ];
    for input in inputs {
        std::fs::write(&p, &input).unwrap();
        for cmd in [&["validate"][..], &["plan", "--offline"][..]] {
            let out = Command::new(NETLOOM)
                .args(cmd)
                .arg("-c")
                .arg(&p)
                .output()
                .unwrap();
            let code = out.status.code();
            assert!(
                code == Some(0) || code == Some(1),
                "{cmd:?} on {input:?}: {code:?} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
        }
    }
}

#[test]
fn offline_plan_of_the_tutorial() {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/docker-tutorial.toml");
    // --verbose: file contents are shown in full only on request.
    let out = Command::new(NETLOOM)
        .args(["plan", "--offline", "--verbose", "-c", p])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "+ network.bridge  bridge docker0 172.17.0.1/16",
        "+ network.mynetwork",
        "+ container.web  netns web",
        "+ container.web.eth0  eth0 on bridge via veth",
        "172.17.0.2/16, 02:42:ac:11:00:02",
        "ip -n web route add default via 172.17.0.1 dev eth0",
        "+ port.web.8080/tcp  0.0.0.0:8080 -> 172.17.0.2:80/tcp",
        "+ file./etc/netns/tomcat2/hosts",
        "+172.17.0.3\ttomcat1 tomcat",
        "192.168.0.3\ttomcat5 tomcat5.mynetwork",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("Plan: ") && last.ends_with(" to add, 0 to change, 0 to destroy."),
        "{last}"
    );
    let out = Command::new(NETLOOM)
        .args(["plan", "--offline", "--format", "json", "-c", p])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["change"], 0);
    assert!(v["changes"].as_array().unwrap().len() > 10);
    // --detailed-exitcode: changes planned -> 2.
    let out = Command::new(NETLOOM)
        .args(["plan", "--offline", "--detailed-exitcode", "-c", p])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Runs a real JSON Schema validator (Python's `jsonschema`, Draft
/// 2020-12 with format checks) over each TOML file converted to JSON
/// (`tomllib`); the number of schema errors per file, or `None` when the
/// validator is not installed (outside CI only).
fn schema_errors(files: &[std::path::PathBuf]) -> Option<Vec<usize>> {
    const SCRIPT: &str = r#"
import json, sys, tomllib, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
for f in sys.argv[2:]:
    with open(f, "rb") as fh:
        print(len(list(v.iter_errors(tomllib.load(fh)))))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import jsonschema, tomllib"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with jsonschema and tomllib is required in CI (Debian: python3-jsonschema)"
        );
        println!("SKIPPED: schema validation: python3 jsonschema is not installed");
        return None;
    }
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/netloom.schema.json");
    let out = Command::new("python3")
        .args(["-c", SCRIPT, schema])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect(),
    )
}

fn toml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn schema_catches_what_it_can_of_the_invalid_files() {
    let files = toml_files(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/invalid"));
    assert_eq!(files.len(), 16, "one file per kind of error");
    // Each file is one kind of error that `validate` refuses.
    for f in &files {
        let out = Command::new(NETLOOM)
            .args(["validate", "-c"])
            .arg(f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{} validates", f.display());
    }
    let Some(counts) = schema_errors(&files) else {
        return;
    };
    let name = |f: &std::path::PathBuf| f.file_stem().unwrap().to_string_lossy().into_owned();
    let caught: Vec<String> = files
        .iter()
        .zip(&counts)
        .filter(|(_, n)| **n > 0)
        .map(|(f, _)| name(f))
        .collect();
    println!(
        "the schema catches {} of the {} kinds of error: {caught:?}",
        caught.len(),
        files.len()
    );
    // What a schema can see in one value; overlaps, addresses against a
    // subnet and references need the whole file (`validate`).
    let expected: Vec<String> = files
        .iter()
        .map(name)
        .filter(|n| n.as_str() < "13")
        .collect();
    assert_eq!(caught, expected);
}

#[test]
fn every_example_passes_the_schema() {
    // The patterns are never stricter than `validate`: an editor must not
    // flag a file netloom accepts.
    let files = toml_files(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"));
    let Some(counts) = schema_errors(&files) else {
        return;
    };
    for (f, n) in files.iter().zip(counts) {
        assert_eq!(n, 0, "{} fails the schema", f.display());
    }
}
