//! Interfaces a run left half-made: created under netloom's temporary name
//! ([`model::temp_link_name`]) and cut short before the request that names
//! and marks them. Nothing wants them; they are deleted first (a veth's
//! other end, born in the container's namespace, goes with it), so that
//! the objects they were meant to become can be created afresh.

use super::*;

/// The plan address of a half-made interface.
pub(super) fn half_made_address(name: &str) -> String {
    format!("link.{name}")
}

pub(super) fn diff_half_made(d: &State, o: &State, out: &mut Vec<Change>) {
    for name in o.half_made.difference(&d.half_made) {
        out.push(change(
            half_made_address(name),
            Action::Delete,
            P_ENDPOINT,
            format!("interface {name}, half-made by an interrupted run"),
            vec![Op::DeleteLink {
                netns: None,
                name: name.clone(),
            }],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_made_links_are_deleted_before_anything_is_created() {
        let mut observed = State::default();
        observed
            .half_made
            .insert(model::temp_link_name("veth1234567"));
        let mut desired = State::default();
        desired
            .sysctls
            .insert("net.ipv4.ip_forward".into(), "1".into());
        let plan = diff(&desired, &observed, None);
        let first = &plan.changes[0];
        assert_eq!(first.action, Action::Delete);
        assert!(first.address.starts_with("link.nl~"), "{}", first.address);
        assert!(matches!(
            &first.ops[..],
            [Op::DeleteLink { netns: None, name }] if model::is_temp_link(name)
        ));
        assert_eq!(plan.summary().destroy, 1);
        // `down` (an empty desired state) removes them too.
        let down = diff(&State::default(), &observed, None);
        assert_eq!(down.changes.len(), 1);
    }

    #[test]
    fn temporary_names_fit_linux_and_are_recognised() {
        for n in ["docker0", "veth0123456", "br-0123456789ab", "a"] {
            let t = model::temp_link_name(n);
            assert_eq!(t.len(), 15, "{t}");
            assert!(model::is_temp_link(&t));
            assert!(!model::is_temp_link(n));
        }
        assert_ne!(
            model::temp_link_name("veth0000001"),
            model::temp_link_name("veth0000002")
        );
    }
}
