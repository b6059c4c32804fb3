//! Saved plans (`netloom plan --out PLAN`, `netloom apply PLAN`).
//!
//! A saved plan is one JSON document that wraps the plan exactly as `plan
//! --format json` prints it with what it was computed from:
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "netloom_version": "0.1.0",
//!   "config": { "path": "/etc/netloom.toml", "sha256": "…" },
//!   "host_sha256": "…",       // machine-id, hostname, network namespace
//!   "state_sha256": "…",      // netloom's records: allocations, ownership, last apply
//!   "observed_sha256": "…",   // the observed host the plan was computed against
//!   "observed": { … },        // that observed state (names what moved later)
//!   "plan": { … }             // `plan --format json`
//! }
//! ```
//!
//! `apply PLAN` computes the same document again from the live host and
//! applies only when nothing moved: [`stale_reasons`] says what did. A plan
//! is only as good as the inputs it was computed from, so each input has a
//! digest, and the observed state is kept whole so that "what changed on
//! the host" can be named per address.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::hash::sha256_hex;
use crate::core::model::State;
use crate::core::plan::{self, Plan};

/// Version of the saved-plan document. Bumped on any incompatible change;
/// `apply PLAN` refuses other versions.
pub const FORMAT_VERSION: u32 = 1;

/// The config file a plan was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    /// Absolute path of the file.
    pub path: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// One saved plan (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    /// [`FORMAT_VERSION`] of the netloom that wrote it.
    pub format_version: u32,
    /// Version of the netloom that wrote it, for messages.
    pub netloom_version: String,
    /// The file the plan was made from.
    pub config: ConfigRef,
    /// SHA-256 of [`Inputs::host_identity`], hex.
    pub host_sha256: String,
    /// SHA-256 of netloom's records ([`Inputs::state_json`]), hex.
    pub state_sha256: String,
    /// [`digest_json`] of `observed`.
    pub observed_sha256: String,
    /// The observed host the plan was computed against.
    pub observed: State,
    /// The plan as `plan --format json` prints it.
    pub plan: Value,
}

/// The inputs of a plan that a saved plan pins down.
pub struct Inputs<'a> {
    /// Absolute path of the config file.
    pub config_path: &'a str,
    /// Its bytes as read.
    pub config_bytes: &'a [u8],
    /// What identifies the host (see `host::identity`).
    pub host_identity: &'a str,
    /// netloom's records as JSON (allocations, ownership, last apply).
    pub state_json: &'a str,
    /// The observed host.
    pub observed: &'a State,
}

/// SHA-256 of the canonical JSON of `v` (maps are ordered, so equal values
/// give equal digests).
pub fn digest_json<T: Serialize>(v: &T) -> String {
    sha256_hex(serde_json::to_string(v).unwrap_or_default().as_bytes())
}

/// The saved plan of `plan`, computed from `inputs`.
pub fn build(inputs: &Inputs, plan: &Plan) -> SavedPlan {
    let plan_json: Value =
        serde_json::from_str(&crate::core::render::json(plan)).unwrap_or(Value::Null);
    SavedPlan {
        format_version: FORMAT_VERSION,
        netloom_version: env!("CARGO_PKG_VERSION").to_string(),
        config: ConfigRef {
            path: inputs.config_path.to_string(),
            sha256: sha256_hex(inputs.config_bytes),
        },
        host_sha256: sha256_hex(inputs.host_identity.as_bytes()),
        state_sha256: sha256_hex(inputs.state_json.as_bytes()),
        observed_sha256: digest_json(inputs.observed),
        observed: inputs.observed.clone(),
        plan: plan_json,
    }
}

/// The document as written to the file: pretty JSON and a final newline.
pub fn to_text(p: &SavedPlan) -> String {
    let mut s = serde_json::to_string_pretty(p).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// Why a saved plan cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON, or not the shape of a saved plan.
    #[error("not a netloom saved plan: {0}")]
    Invalid(String),
    /// Written in another `format_version`.
    #[error(
        "saved plan format_version {0} is not supported by this netloom (it reads version {FORMAT_VERSION}); make the plan again"
    )]
    Version(u64),
}

/// Reads a saved plan; refuses other format versions before looking at
/// anything else.
pub fn parse(text: &str) -> Result<SavedPlan, ParseError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ParseError::Invalid(e.to_string()))?;
    match v.get("format_version").and_then(Value::as_u64) {
        Some(n) if n == u64::from(FORMAT_VERSION) => {}
        Some(n) => return Err(ParseError::Version(n)),
        None => return Err(ParseError::Invalid("no format_version".into())),
    }
    serde_json::from_value(v).map_err(|e| ParseError::Invalid(e.to_string()))
}

/// Whether `saved` was made on another host than `now`.
pub fn other_host(saved: &SavedPlan, now: &SavedPlan) -> bool {
    saved.host_sha256 != now.host_sha256
}

/// Why `saved` is stale compared with `now` (the same document computed
/// from the live host), one line each; empty when nothing moved.
pub fn stale_reasons(saved: &SavedPlan, now: &SavedPlan) -> Vec<String> {
    let mut out = Vec::new();
    if other_host(saved, now) {
        out.push("it was made on another host".to_string());
    }
    if saved.config.sha256 != now.config.sha256 || saved.config.path != now.config.path {
        out.push(format!(
            "the file {} changed since the plan was made",
            saved.config.path
        ));
    }
    if saved.state_sha256 != now.state_sha256 {
        out.push(
            "netloom's state dir changed since the plan was made (another apply or the agent ran)"
                .to_string(),
        );
    }
    if saved.observed_sha256 != now.observed_sha256 {
        // What differs between the two observations, by plan address.
        let moved = plan::diff(&saved.observed, &now.observed, None);
        let addrs: Vec<&str> = moved.changes.iter().map(|c| c.address.as_str()).collect();
        if addrs.is_empty() {
            out.push("the host changed since the plan was made".to_string());
        }
        for a in addrs {
            out.push(format!("{a} changed on the host since the plan was made"));
        }
    }
    if out.is_empty() && saved.plan != now.plan {
        out.push("the plan computed now differs from the saved one".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Bridge;
    use std::collections::BTreeSet;

    fn observed() -> State {
        let mut s = State::default();
        s.bridges.insert(
            "bridge".into(),
            Bridge {
                name: "docker0".into(),
                addrs: BTreeSet::from(["172.17.0.1/16".to_string()]),
                mtu: 1500,
                mac: "02:42:ac:11:00:01".into(),
                up: true,
            },
        );
        s
    }

    fn saved(config: &[u8], host: &str, state: &str, obs: &State) -> SavedPlan {
        let inputs = Inputs {
            config_path: "/etc/netloom.toml",
            config_bytes: config,
            host_identity: host,
            state_json: state,
            observed: obs,
        };
        build(&inputs, &plan::diff(&State::default(), obs, None))
    }

    #[test]
    fn round_trips_and_is_fresh_against_itself() {
        let a = saved(b"x = 1\n", "h1", "{}", &observed());
        let back = parse(&to_text(&a)).expect("parses");
        assert_eq!(back, a);
        assert!(stale_reasons(&a, &a).is_empty());
        assert_eq!(a.format_version, FORMAT_VERSION);
        assert_eq!(a.plan["format_version"], "1");
    }

    #[test]
    fn each_input_that_moved_is_named() {
        let a = saved(b"x = 1\n", "h1", "{}", &observed());
        let b = saved(b"x = 2\n", "h1", "{}", &observed());
        assert_eq!(
            stale_reasons(&a, &b),
            ["the file /etc/netloom.toml changed since the plan was made"]
        );
        let c = saved(b"x = 1\n", "h1", "{\"v\":1}", &observed());
        assert!(stale_reasons(&a, &c)[0].contains("state dir changed"));
        let mut obs = observed();
        obs.bridges.get_mut("bridge").expect("bridge").mtu = 9000;
        let d = saved(b"x = 1\n", "h1", "{}", &obs);
        assert_eq!(
            stale_reasons(&a, &d),
            ["network.bridge changed on the host since the plan was made"]
        );
        let e = saved(b"x = 1\n", "h2", "{}", &observed());
        assert!(other_host(&a, &e));
        assert_eq!(stale_reasons(&a, &e), ["it was made on another host"]);
    }

    #[test]
    fn other_versions_and_garbage_are_refused() {
        let a = saved(b"", "h", "{}", &State::default());
        let mut v: Value = serde_json::from_str(&to_text(&a)).expect("json");
        v["format_version"] = 2.into();
        assert_eq!(parse(&v.to_string()), Err(ParseError::Version(2)));
        assert!(matches!(parse("{}"), Err(ParseError::Invalid(_))));
        assert!(matches!(parse("not json"), Err(ParseError::Invalid(_))));
    }
}
