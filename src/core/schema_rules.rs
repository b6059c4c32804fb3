//! Constraints of the JSON Schema beyond the shape serde gives it: name
//! and address patterns, the `-p` syntax, closed sets and ranges, so that
//! an editor flags in place what `netloom validate` would refuse.
//!
//! The patterns follow the checks in [`crate::core::spec`] and
//! [`crate::core::ports`]; they are never stricter (every example file
//! must pass them), and what needs the whole file (overlaps, references)
//! stays with `validate`. They use no look-around, so both ECMAScript
//! and Rust regex engines accept them.

use serde_json::{Value, json};

/// A network or container name (see [`crate::core::spec::valid_name`]).
pub const NAME: &str = "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}";
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const H: &str = "[0-9A-Fa-f]{1,4}";
/// A port 1-65535 (leading zeros allowed, as the parser allows them).
const PORT: &str =
    "0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})";
const HOSTNAME: &str = "[A-Za-z0-9_][A-Za-z0-9_-]{0,62}(\\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*";

fn ipv4() -> String {
    format!("{OCTET}(\\.{OCTET}){{3}}")
}

/// Every textual form of an IPv6 address: full, `::`-compressed at any
/// place, and both with an IPv4 tail.
fn ipv6() -> String {
    let v4 = ipv4();
    let groups = |n: usize| match n {
        0 => String::new(),
        n => format!("({H}:){{{}}}{H}", n - 1),
    };
    let mut alts = vec![format!("({H}:){{7}}{H}"), format!("({H}:){{6}}{v4}")];
    // `::` after i groups, then up to 7 - i (or 5 - i before an IPv4
    // tail) groups.
    for i in 0..=7 {
        let after = 7 - i;
        let right = match after {
            0 => String::new(),
            n => format!("(({H}:){{0,{}}}{H})?", n - 1),
        };
        alts.push(format!("{}::{right}", groups(i)));
        if i <= 5 {
            alts.push(format!("{}::({H}:){{0,{}}}{v4}", groups(i), 5 - i));
        }
    }
    format!("({})", alts.join("|"))
}

fn anchored(p: &str) -> Value {
    Value::String(format!("^{p}$"))
}

/// The rules: a JSON pointer into the generated schema and the keywords
/// to add there.
fn rules() -> Vec<(&'static str, Value)> {
    let v4 = ipv4();
    let v6 = ipv6();
    let range = format!("{PORT}(-{PORT})?");
    let publish = format!(
        "(({v4}|\\[{v6}\\]):({range})?:|{range}:)?{range}(/([Tt][Cc][Pp]|[Uu][Dd][Pp]|[Ss][Cc][Tt][Pp]))?"
    );
    let name = json!({ "pattern": anchored(NAME) });
    let ip4 = json!({ "pattern": anchored(&v4), "format": "ipv4" });
    let ip6 = json!({ "pattern": anchored(&v6), "format": "ipv6" });
    let absolute = json!({ "pattern": "^/" });
    vec![
        ("/properties/networks", json!({ "propertyNames": name })),
        ("/properties/containers", json!({ "propertyNames": name })),
        ("/$defs/Settings/properties/state_dir", absolute.clone()),
        (
            "/$defs/Settings/properties/port_range",
            json!({ "pattern": anchored(&format!("{PORT}-{PORT}")) }),
        ),
        (
            "/$defs/Settings/properties/upstream_dns/items",
            json!({ "pattern": anchored(&format!("{v4}(:[0-9]{{1,5}})?|{v6}|\\[{v6}\\]:[0-9]{{1,5}}")) }),
        ),
        (
            "/$defs/NetworkConfig/properties/bridge",
            // ASCII graphic characters but `/` and `:`, at most 15 bytes.
            json!({ "pattern": "^[!-.0-9;-~]{1,15}$", "not": { "enum": [".", ".."] } }),
        ),
        (
            "/$defs/NetworkConfig/properties/subnet",
            json!({ "pattern": anchored(&format!("{v4}/(3[0-2]|[12]?[0-9])")) }),
        ),
        (
            "/$defs/NetworkConfig/properties/subnet6",
            json!({ "pattern": anchored(&format!("{v6}/(12[0-8]|1[01][0-9]|[1-9]?[0-9])")) }),
        ),
        ("/$defs/NetworkConfig/properties/gateway", ip4.clone()),
        (
            "/$defs/NetworkConfig/properties/mtu",
            json!({ "minimum": 68, "maximum": 65535 }),
        ),
        (
            "/$defs/NetworkConfig/properties/vni",
            json!({ "minimum": 1, "maximum": 16_777_215 }),
        ),
        (
            "/$defs/NetworkConfig/properties/scope",
            json!({ "enum": ["local", "cluster"] }),
        ),
        (
            "/$defs/ContainerConfig/properties/ports/items",
            json!({ "pattern": anchored(&publish) }),
        ),
        (
            "/$defs/ContainerConfig/properties/network_mode",
            json!({ "anyOf": [
                { "type": "string", "enum": ["bridge", "none", "host"] },
                { "type": "string", "pattern": anchored(&format!("container:{NAME}")) },
            ] }),
        ),
        (
            "/$defs/ContainerConfig/properties/links/items",
            json!({ "pattern": anchored(&format!("{NAME}(:{HOSTNAME})?")) }),
        ),
        ("/$defs/ContainerConfig/properties/netns", name.clone()),
        (
            "/$defs/ContainerConfig/properties/netns_path",
            absolute.clone(),
        ),
        (
            "/$defs/ContainerConfig/properties/hostname",
            json!({ "pattern": anchored(HOSTNAME), "maxLength": 253 }),
        ),
        ("/$defs/NetworksSchema/anyOf/0/items", name.clone()),
        (
            "/$defs/NetworksSchema/anyOf/1",
            json!({ "propertyNames": name }),
        ),
        ("/$defs/EndpointConfig/properties/ip", ip4.clone()),
        ("/$defs/EndpointConfig/properties/ip6", ip6),
        (
            "/$defs/EndpointConfig/properties/aliases/items",
            json!({ "pattern": anchored(HOSTNAME), "maxLength": 253 }),
        ),
        (
            "/$defs/EndpointConfig/properties/mac",
            json!({ "pattern": "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$" }),
        ),
        ("/$defs/HostConfig/properties/address", ip4),
        ("/$defs/ClusterConfig/properties/ca_file", absolute.clone()),
        (
            "/$defs/ClusterConfig/properties/cert_file",
            absolute.clone(),
        ),
        ("/$defs/ClusterConfig/properties/key_file", absolute),
    ]
}

/// Adds the constraints to `schema` (as generated from the config types);
/// returns the pointers that matched nothing (a renamed key).
pub fn refine(schema: &mut Value) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (pointer, add) in rules() {
        match (schema.pointer_mut(pointer), add) {
            (Some(Value::Object(node)), Value::Object(add)) => node.extend(add),
            _ => missing.push(pointer),
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_finds_its_key() {
        let mut s = schemars::schema_for!(crate::core::config::ConfigFile).to_value();
        assert_eq!(refine(&mut s), Vec::<&str>::new());
    }
}
