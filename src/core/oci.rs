//! The fragment of an OCI runtime bundle's `config.json` (runc, crun)
//! that runs a container in a netloom namespace: `netloom oci-spec NAME`.
//!
//! It holds the network namespace to join, the bind mounts of the
//! container's hosts and resolv.conf (which netloom rewrites in place, so
//! a running container sees every change) and the host name. A user merges
//! it into the `config.json` made by `runc spec`, replacing the `network`
//! entry of `linux.namespaces`; no path is typed by hand.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::core::model::{HostInfo, file_path, named_path};
use crate::core::spec::{ContainerSpec, Mode, NetnsSpec, Spec, resolve_shared};

/// The fragment for container `name`, or why there is none.
pub fn fragment(spec: &Spec, host: &HostInfo, name: &str) -> Result<Value, String> {
    let by_name: HashMap<&str, &ContainerSpec> = spec
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let Some(c) = by_name.get(name).copied() else {
        let known: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "unknown container `{name}` (declared: {})",
            known.join(", ")
        ));
    };
    // `container:X` shares X's namespace and names.
    let owner = resolve_shared(c, &by_name);
    let netns = match (&owner.mode, &owner.netns) {
        (Mode::Host, _) | (_, None) => {
            return Err(format!(
                "container `{name}` uses the host's network namespace (network_mode = \"host\"): there is no namespace to join; leave the runtime's network namespace out of config.json instead"
            ));
        }
        (_, Some(NetnsSpec::Named(n))) => named_path(n).display().to_string(),
        (_, Some(NetnsSpec::Path(p))) => p.display().to_string(),
    };
    let file = |f: &str| file_path(host, owner, f).unwrap_or_default();
    let mount = |dest: &str, source: String| {
        json!({
            "destination": dest,
            "type": "bind",
            "source": source,
            "options": ["rbind", "ro"],
        })
    };
    let mut out = json!({
        "hostname": c.hostname,
        "mounts": [
            mount("/etc/hosts", file("hosts")),
            mount("/etc/resolv.conf", file("resolv.conf")),
        ],
        "linux": {
            "namespaces": [{ "type": "network", "path": netns }],
        },
    });
    if let (Some(d), Some(obj)) = (&c.dns.domainname, out.as_object_mut()) {
        obj.insert("domainname".into(), Value::String(d.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Spec {
        crate::core::spec::load_bytes("t.toml", text.as_bytes()).expect("valid")
    }

    #[test]
    fn names_the_namespace_the_files_and_the_hostname() {
        let s = spec(
            "[networks.n]\nsubnet = \"10.1.0.0/24\"\n\
             [containers.web]\nnetworks = [\"n\"]\nhostname = \"www\"\nnetns = \"webns\"\n\
             [containers.side]\nnetwork_mode = \"container:web\"\n",
        );
        let host = HostInfo::default();
        let f = fragment(&s, &host, "web").expect("fragment");
        assert_eq!(f["hostname"], "www");
        assert_eq!(f["linux"]["namespaces"][0]["path"], "/run/netns/webns");
        assert_eq!(f["mounts"][0]["source"], "/etc/netns/webns/hosts");
        assert_eq!(f["mounts"][0]["destination"], "/etc/hosts");
        assert_eq!(f["mounts"][1]["source"], "/etc/netns/webns/resolv.conf");
        // A container sharing web's namespace joins it and reads its files.
        let side = fragment(&s, &host, "side").expect("fragment");
        assert_eq!(side["linux"]["namespaces"][0]["path"], "/run/netns/webns");
        assert_eq!(side["hostname"], "side");
    }

    #[test]
    fn host_mode_and_unknown_names_are_refused() {
        let s = spec("[containers.h]\nnetwork_mode = \"host\"\n");
        let host = HostInfo::default();
        assert!(
            fragment(&s, &host, "h")
                .unwrap_err()
                .contains("host's network namespace")
        );
        assert!(
            fragment(&s, &host, "nope")
                .unwrap_err()
                .contains("unknown container `nope`")
        );
    }
}
