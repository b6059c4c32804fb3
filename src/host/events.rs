//! Kernel change notifications (`ip monitor`): link, address and route
//! events of the host namespace and of container namespaces, for the
//! agent's drift healing.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use anyhow::{Context, Result};
use futures::StreamExt;
use rtnetlink::constants::{
    RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr, TokioSocket};
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
        /// Hardware address as `02:42:...`, when reported.
        mac: Option<String>,
        mtu: Option<u32>,
    },
    /// An address was added to or removed from a link.
    Address {
        index: u32,
        removed: bool,
        /// IPv6 link-local addresses come and go with the kernel's own
        /// address configuration; they are never netloom's.
        link_local: bool,
        /// `address/prefix`, as the model writes addresses.
        addr: Option<String>,
        /// The interface's name when the kernel says it (IPv4 labels).
        label: Option<String>,
    },
    /// A route was added or removed (netloom's routes are the default
    /// routes inside container namespaces).
    Route { removed: bool },
}

/// Subscribes to link/address/route events in the caller's namespace; the
/// receiver yields events until the socket fails.
pub fn subscribe() -> Result<Subscription> {
    let socket = multicast_socket().context("subscribe to rtnetlink events")?;
    forward(socket)
}

/// The same inside the namespace at `ns`: the socket is created on a thread
/// that joined it (a netlink socket reports the namespace it was born in),
/// then driven by the caller's tokio runtime.
pub fn subscribe_in(ns: &Path) -> Result<Subscription> {
    let socket = crate::host::netns::run_in(ns, multicast_socket)
        .with_context(|| format!("subscribe to rtnetlink events in {}", ns.display()))?;
    forward(socket)
}

/// A netlink socket bound to the groups of `ip monitor link address route`.
fn multicast_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("create netlink socket")?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_ROUTE;
    socket
        .bind(&SocketAddr::new(0, groups))
        .context("bind netlink socket to the link, address and route groups")?;
    socket
        .set_non_blocking(true)
        .context("set netlink socket non-blocking")?;
    Ok(socket)
}

/// Drives `socket` on the current runtime and turns its notifications into
/// [`KernelEvent`]s.
fn forward(socket: Socket) -> Result<Subscription> {
    tokio::runtime::Handle::try_current().context("subscribe: not inside a tokio runtime")?;
    // SAFETY: `into_raw_fd` hands over sole ownership of a valid, open
    // netlink socket fd, which TokioSocket takes over.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, mut messages) = rtnetlink::from_socket(socket);
    let conn = tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        // Keep the handle alive with the connection it belongs to.
        let _handle = handle;
        while let Some((msg, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(m) = msg.payload else {
                continue;
            };
            let ev = match m {
                RouteNetlinkMessage::NewLink(l) => link_event(&l, false),
                RouteNetlinkMessage::DelLink(l) => link_event(&l, true),
                RouteNetlinkMessage::NewAddress(a) => address_event(&a, false),
                RouteNetlinkMessage::DelAddress(a) => address_event(&a, true),
                RouteNetlinkMessage::NewRoute(_) => KernelEvent::Route { removed: false },
                RouteNetlinkMessage::DelRoute(_) => KernelEvent::Route { removed: true },
                _ => continue,
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    Ok(Subscription {
        rx,
        tasks: [conn, reader],
    })
}

/// Events of one namespace. Dropping it closes the socket at once, which
/// matters: an open netlink socket keeps its namespace alive.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<KernelEvent>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Subscription {
    /// The next event; `None` once the socket failed.
    pub async fn recv(&mut self) -> Option<KernelEvent> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn link_event(l: &LinkMessage, removed: bool) -> KernelEvent {
    let mut name = None;
    let mut master = None;
    let mut mac = None;
    let mut mtu = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(m) => master = Some(*m),
            LinkAttribute::Address(bytes) => {
                mac = <[u8; 6]>::try_from(bytes.as_slice())
                    .ok()
                    .map(|m| crate::core::model::mac_string(&m));
            }
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            _ => {}
        }
    }
    KernelEvent::Link {
        index: l.header.index,
        name,
        removed,
        up: l.header.flags.contains(LinkFlags::Up),
        master,
        mac,
        mtu,
    }
}

fn address_event(a: &AddressMessage, removed: bool) -> KernelEvent {
    let link_local = a.attributes.iter().any(|x| match x {
        AddressAttribute::Address(IpAddr::V6(v6)) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        _ => false,
    });
    // IPv4 reports the peer in Address and the local one in Local; for a
    // plain address both are the same.
    let ip = a
        .attributes
        .iter()
        .find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        });
    KernelEvent::Address {
        index: a.header.index,
        removed,
        link_local,
        addr: ip.map(|ip| format!("{ip}/{}", a.header.prefix_len)),
        label: a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Label(l) => Some(l.clone()),
            _ => None,
        }),
    }
}
