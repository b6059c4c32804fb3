//! The layout is the architecture (README, "Architecture"): this test
//! reads the sources and fails when a layer imports what it must not.
//!
//! - `src/core/` is the functional core: no I/O and no runtime. It may not
//!   name the shell or the commands (`crate::host`, `crate::cmd`), the
//!   crates that reach the machine (tokio, nix, rtnetlink, netlink-*,
//!   notify, hickory, nftables, libc, futures), processes, files, sockets,
//!   environment or terminal (`std::process`, `std::fs`, `std::env`,
//!   `std::os`, `std::io::stdin/stdout/stderr`, the socket types of
//!   `std::net`), and it does not print. Address types (`std::net::IpAddr`
//!   and friends) are plain values and allowed.
//! - `src/host/` is the shell: it may use the core, never `crate::cmd`,
//!   and it does not print (it logs through `tracing`).
//! - Only `src/cmd/` and `src/main.rs` print.
//! - No import circle between modules: read as a graph of `crate::` paths,
//!   the modules point one way (dispatch → commands → shared steps → shell
//!   → core).
//!
//! Unit tests (`tests.rs`, `*_tests.rs`, an inline `mod tests` at the end
//! of a file) are test code and may do anything.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line, without a trailing `//` comment (doc comments and
/// comments may mention anything).
fn code_of(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        return "";
    }
    match line.find("//") {
        Some(i) if !line[..i].contains('"') => &line[..i],
        _ => line,
    }
}

/// Every `(file:line, offending text)` in files under `dir` whose code
/// contains one of `needles`.
fn offenders(dir: &str, needles: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    assert!(!files.is_empty(), "no sources under {dir}");
    let mut found = Vec::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "tests.rs" || name.ends_with("_tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).expect("source is UTF-8");
        for (n, line) in text.lines().enumerate() {
            // Unit tests sit at the end of a file; they may do anything.
            if line.starts_with("mod tests") || line.starts_with("mod kernel_tests {") {
                break;
            }
            let code = code_of(line);
            if let Some(needle) = needles.iter().find(|n| code.contains(*n)) {
                found.push(format!(
                    "{}:{}: `{needle}` in: {}",
                    f.strip_prefix(root).unwrap_or(&f).display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

const PRINTING: [&str; 4] = ["println!", "print!(", "eprintln!", "eprint!("];

#[test]
fn core_does_no_io_and_imports_no_shell() {
    let mut needles = vec![
        "crate::host",
        "crate::cmd",
        "tokio",
        "nix::",
        "rtnetlink",
        "netlink_",
        "notify::",
        "hickory",
        "nftables::",
        "libc::",
        "futures::",
        "std::process",
        "std::fs",
        "std::env",
        "std::os::",
        "std::io::stdin",
        "std::io::stdout",
        "std::io::stderr",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "UnixStream",
        "File::open",
    ];
    needles.extend(PRINTING);
    let found = offenders("src/core", &needles);
    assert!(
        found.is_empty(),
        "the functional core must not do I/O or import the shell:\n{}",
        found.join("\n")
    );
}

#[test]
fn shell_does_not_import_the_commands_or_print() {
    let mut needles = vec!["crate::cmd"];
    needles.extend(PRINTING);
    let found = offenders("src/host", &needles);
    assert!(
        found.is_empty(),
        "the shell must not import the commands or print:\n{}",
        found.join("\n")
    );
}

/// The checker itself: it must see an import where there is one.
#[test]
fn the_checker_finds_what_it_looks_for() {
    assert_eq!(code_of("use std::fs; // x"), "use std::fs; ");
    assert_eq!(code_of("    //! uses std::fs"), "");
    assert_eq!(code_of("let s = \"a // b\";"), "let s = \"a // b\";");
    let found = offenders("src/host", &["use crate::core"]);
    assert!(!found.is_empty(), "the shell imports the core somewhere");
}

/// The module a source file defines: `src/core/firewall.rs` and
/// `src/host/nft/mod.rs` are `core::firewall` and `host::nft`.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root.join("src")).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The `crate::…` paths named in one line of code, with one level of
/// braces expanded (`crate::host::{nft, observe}` names both).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches(':').to_string();
        if tail[end..].starts_with('{') && tail[..end].ends_with("::") {
            let inner = &tail[end + 1..];
            let close = inner.find('}').unwrap_or(inner.len());
            for item in inner[..close].split(',') {
                let item = item.trim().split("::").next().unwrap_or("").trim();
                if item == "self" {
                    out.push(path.clone());
                } else if !item.is_empty() {
                    out.push(format!("{path}::{item}"));
                }
            }
        } else {
            out.push(path);
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn no_import_circles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let modules: Vec<String> = files.iter().map(|f| module_of(root, f)).collect();
    let mut edges: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for (f, m) in files.iter().zip(&modules) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "tests.rs" || name.ends_with("_tests.rs") || m.is_empty() || m == "main" {
            continue;
        }
        let text = fs::read_to_string(f).expect("source is UTF-8");
        for line in text.lines() {
            if line.starts_with("mod tests") {
                break;
            }
            let code = code_of(line);
            // A parent names its children by relative paths (`status::run`).
            for child in modules.iter().filter(|c| {
                c.strip_prefix(m.as_str())
                    .and_then(|r| r.strip_prefix("::"))
                    .is_some_and(|r| !r.contains("::"))
            }) {
                let last = child.rsplit("::").next().unwrap_or(child);
                let named = code.match_indices(&format!("{last}::")).any(|(i, _)| {
                    !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
                });
                if named {
                    edges.entry(m.clone()).or_default().insert(child.clone());
                }
            }
            for path in crate_paths(code) {
                // The longest module that the path starts with.
                let target = modules
                    .iter()
                    .filter(|t| path == **t || path.starts_with(&format!("{t}::")))
                    .max_by_key(|t| t.len());
                if let Some(t) = target {
                    if t != m {
                        edges.entry(m.clone()).or_default().insert(t.clone());
                    }
                }
            }
        }
    }
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(
        m: &str,
        edges: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_string());
            circles.push(c.join(" -> "));
            return;
        }
        stack.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, stack, done, circles);
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let mut circles = Vec::new();
    let mut done = Default::default();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        edges
            .get("cmd::status")
            .is_some_and(|e| e.contains("cmd::steps")),
        "the graph was read: status uses the shared steps"
    );
    assert!(
        circles.is_empty(),
        "modules import each other in a circle:\n{}",
        circles.join("\n")
    );
}
