//! Kernel change notifications (`ip monitor`): link, address and route
//! events of the host namespace, for the agent's drift healing.

use anyhow::{Context, Result};
use futures::StreamExt;
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use std::net::IpAddr;

use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use tokio::sync::mpsc;

/// One notification, reduced to what decides whether it is netloom's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A link appeared, changed or went away.
    Link {
        index: u32,
        name: Option<String>,
        removed: bool,
        /// Administratively up (IFF_UP).
        up: bool,
        /// The bridge it is enslaved to.
        master: Option<u32>,
    },
    /// An address was added to or removed from a link.
    Address {
        index: u32,
        removed: bool,
        /// IPv6 link-local addresses come and go with the kernel's own
        /// address configuration; they are never netloom's.
        link_local: bool,
    },
    /// A route changed (host namespace routes are not netloom's, but a
    /// flushed route table is worth a look).
    Route,
}

/// Subscribes to link/address/route events in the caller's namespace; the
/// receiver yields events until the socket fails.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<KernelEvent>> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
    ])
    .context("subscribe to rtnetlink events")?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Keep the handle alive with the connection it belongs to.
        let _handle = _handle;
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let ev = match m {
                RouteNetlinkMessage::NewLink(l) => link_event(&l, false),
                RouteNetlinkMessage::DelLink(l) => link_event(&l, true),
                RouteNetlinkMessage::NewAddress(a) => address_event(&a, false),
                RouteNetlinkMessage::DelAddress(a) => address_event(&a, true),
                RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                    KernelEvent::Route
                }
                _ => continue,
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn link_event(l: &LinkMessage, removed: bool) -> KernelEvent {
    let mut name = None;
    let mut master = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(m) => master = Some(*m),
            _ => {}
        }
    }
    KernelEvent::Link {
        index: l.header.index,
        name,
        removed,
        up: l.header.flags.contains(LinkFlags::Up),
        master,
    }
}

fn address_event(a: &AddressMessage, removed: bool) -> KernelEvent {
    let link_local = a.attributes.iter().any(|x| match x {
        AddressAttribute::Address(IpAddr::V6(v6)) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        _ => false,
    });
    KernelEvent::Address {
        index: a.header.index,
        removed,
        link_local,
    }
}
