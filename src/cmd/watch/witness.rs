//! Whether the host namespace is still as the agent's view read it, and
//! if not, what to read again: the host's event watch marks the links the
//! kernel reported, but leaves out what the view does not hold and what
//! says nothing new.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::host::events::{KernelEvent, PortNotice};
use crate::host::netlink::Link;

/// What the host's events since its last reading named: the links to look
/// up again, one request each, instead of dumping every link of the host
/// (a dump costs what all containers hold: ~30 ms at 1,000 containers, for
/// the few links a container's coming or going changes).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Touched {
    /// Read the host again whole: events were lost (or it was never read).
    pub all: bool,
    /// Links an event reported, by index (a new link is not in the view
    /// yet, a gone one no longer has a name to look up).
    pub links: BTreeSet<u32>,
    /// An address of the host changed: dump the addresses again.
    pub addrs: bool,
}

/// Shared by the host namespace's event watch, which takes every event,
/// and the agent, which reads the host and asks whether that reading
/// still holds.
pub(super) struct HostWitness {
    /// What the events since the host was read name: nothing when the
    /// host is as it was read (every event that is news names something).
    touched: Mutex<Touched>,
    /// The hairpin mode of each bridge port, by index, as the view holds
    /// it; `None` while a reading is under way (its values are not known
    /// yet, so every port notice counts).
    ports: Mutex<Option<HashMap<u32, bool>>>,
}

impl HostWitness {
    pub(super) fn new() -> Self {
        HostWitness {
            touched: Mutex::new(Touched {
                all: true,
                ..Touched::default()
            }),
            ports: Mutex::new(None),
        }
    }

    /// Whether the host may have changed since it was read.
    pub(super) fn changed(&self) -> bool {
        self.touched
            .lock()
            .map_or(true, |t| *t != Touched::default())
    }

    /// A reading of the host starts: events from here on are news to it.
    /// Returns what the events before it named, which the reading must
    /// read again (an event still on its way is news to the next one).
    pub(super) fn reading(&self) -> Touched {
        if let Ok(mut p) = self.ports.lock() {
            *p = None;
        }
        match self.touched.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            // Never poisoned (nothing panics under it); if it were, read
            // everything.
            Err(_) => Touched {
                all: true,
                ..Touched::default()
            },
        }
    }

    /// A reading that took `t` failed: the next reading reads it again.
    pub(super) fn unread(&self, t: Touched) {
        if let Ok(mut mine) = self.touched.lock() {
            mine.all |= t.all;
            mine.links.extend(t.links);
            mine.addrs |= t.addrs;
        }
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
        if let Ok(mut t) = self.touched.lock() {
            match ev {
                KernelEvent::Link { index, .. } => {
                    t.links.insert(*index);
                }
                KernelEvent::Address { .. } => t.addrs = true,
                // Lost events may have said anything (routes are never
                // news, see `news`).
                KernelEvent::Route { .. } | KernelEvent::Lost => t.all = true,
            }
        }
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

    fn addr(index: u32, link_local: bool) -> KernelEvent {
        KernelEvent::Address {
            index,
            removed: false,
            link_local,
            addr: None,
            label: None,
        }
    }

    #[test]
    fn a_reading_takes_the_links_and_addresses_the_events_named() {
        let w = HostWitness::new();
        assert!(w.reading().all, "never read: everything");
        assert_eq!(w.reading(), Touched::default(), "nothing since");
        w.holds(&links());
        // A new link, a link's own notice, a port notice that says
        // something new, an address; and what is no news (a port notice
        // that says what the view holds, a link-local address, a route).
        w.see(&port(20, None, true));
        w.see(&port(9, None, true));
        w.see(&port(8, Some(true), false));
        w.see(&port(7, Some(true), false));
        w.see(&addr(7, false));
        w.see(&addr(10, true));
        w.see(&KernelEvent::Route { removed: true });
        assert!(w.changed());
        let t = w.reading();
        assert!(!w.changed());
        assert_eq!(
            t,
            Touched {
                all: false,
                links: [8, 9, 20].into(),
                addrs: true,
            }
        );
        assert_eq!(w.reading(), Touched::default(), "taken by the reading");
        // A link-local address alone names nothing.
        w.see(&addr(9, true));
        assert_eq!(w.reading(), Touched::default());
        // Lost events: everything, until the next reading.
        w.see(&port(7, Some(false), true));
        w.see(&KernelEvent::Lost);
        assert!(w.reading().all);
        assert!(!w.reading().all);
        // A reading that failed gives back what it took, with what came
        // since.
        w.see(&port(7, Some(false), true));
        let t = w.reading();
        w.see(&addr(8, false));
        w.unread(t);
        assert!(w.changed());
        assert_eq!(
            w.reading(),
            Touched {
                all: false,
                links: [7].into(),
                addrs: true,
            }
        );
    }
}
