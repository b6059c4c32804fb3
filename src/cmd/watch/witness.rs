//! Whether the host namespace is still as the agent's view read it: the
//! host's event watch marks it changed, but leaves out what the view does
//! not hold and what says nothing new.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::host::events::{KernelEvent, PortNotice};
use crate::host::netlink::Link;

/// Shared by the host namespace's event watch, which takes every event,
/// and the agent, which reads the host and asks whether that reading
/// still holds.
pub(super) struct HostWitness {
    /// An event since the host was read may have changed it (or it was
    /// never read).
    changed: AtomicBool,
    /// The hairpin mode of each bridge port, by index, as the view holds
    /// it; `None` while a reading is under way (its values are not known
    /// yet, so every port notice counts).
    ports: Mutex<Option<HashMap<u32, bool>>>,
}

impl HostWitness {
    pub(super) fn new() -> Self {
        HostWitness {
            changed: AtomicBool::new(true),
            ports: Mutex::new(None),
        }
    }

    /// Whether the host may have changed since it was read.
    pub(super) fn changed(&self) -> bool {
        self.changed.load(Ordering::SeqCst)
    }

    /// A reading of the host starts: events from here on are news to it.
    pub(super) fn reading(&self) {
        if let Ok(mut p) = self.ports.lock() {
            *p = None;
        }
        self.changed.store(false, Ordering::SeqCst);
    }

    /// The view holds `links` as the host's: a later notice about a port
    /// is judged against them.
    pub(super) fn holds(&self, links: &[Link]) {
        let ports = links
            .iter()
            .filter_map(|l| Some((l.index, l.hairpin?)))
            .collect();
        if let Ok(mut p) = self.ports.lock() {
            *p = Some(ports);
        }
    }

    /// Takes one event of the host namespace.
    pub(super) fn see(&self, ev: &KernelEvent) {
        if !self.news(ev) {
            return;
        }
        self.changed.store(true, Ordering::SeqCst);
    }

    /// Whether `ev` may change what the view holds of the host.
    fn news(&self, ev: &KernelEvent) -> bool {
        match ev {
            // Not part of the view: the host's routes (every plan dumps
            // them afresh) and link-local addresses (IPv6
            // autoconfiguration adds them to every new veth for seconds;
            // no bridge or container address can be one, validation
            // refuses link-local subnets, so only the hint about a
            // link-local `host_ip` may lag).
            KernelEvent::Route { .. }
            | KernelEvent::Address {
                link_local: true, ..
            } => false,
            // A bridge's notice about a port whose hairpin mode is the one
            // the view holds: all else it says comes in the link's own
            // notices when it changes. A thousand of them arrive some
            // seconds after a thousand ports joined.
            KernelEvent::Link {
                index,
                removed: false,
                bridge_port:
                    Some(PortNotice {
                        hairpin: Some(hairpin),
                    }),
                ..
            } => {
                self.ports
                    .lock()
                    .ok()
                    .and_then(|p| p.as_ref()?.get(index).copied())
                    != Some(*hairpin)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(index: u32, hairpin: Option<bool>, own: bool) -> KernelEvent {
        KernelEvent::Link {
            index,
            name: None,
            removed: false,
            up: true,
            master: Some(3),
            mac: None,
            mtu: Some(1500),
            bridge_port: (!own).then_some(PortNotice { hairpin }),
        }
    }

    fn link(index: u32, hairpin: Option<bool>) -> Link {
        Link {
            index,
            name: format!("veth{index}"),
            kind: Some("veth".into()),
            master: hairpin.map(|_| 3),
            mtu: 1500,
            mac: None,
            up: true,
            alias: None,
            peer_index: None,
            link_netnsid: None,
            hairpin,
            vxlan: None,
        }
    }

    fn links() -> Vec<Link> {
        vec![link(7, Some(true)), link(8, Some(false)), link(9, None)]
    }

    #[test]
    fn a_port_notice_that_says_what_the_view_holds_is_no_change() {
        let w = HostWitness::new();
        assert!(w.changed(), "never read");
        w.reading();
        // During the reading, any notice counts: its values are not known.
        w.see(&port(7, Some(true), false));
        assert!(w.changed());
        w.reading();
        w.holds(&links());
        w.see(&port(7, Some(true), false));
        w.see(&port(8, Some(false), false));
        w.see(&KernelEvent::Route { removed: false });
        assert!(!w.changed());
        // Another hairpin mode, a port the view does not hold, a notice
        // without the mode, and the link's own notice all count.
        for ev in [
            port(8, Some(true), false),
            port(9, Some(false), false),
            port(7, None, false),
            port(7, Some(true), true),
        ] {
            w.reading();
            w.holds(&links());
            w.see(&ev);
            assert!(w.changed(), "{ev:?}");
        }
    }
}
