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

use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, LinkProtoInfoBridge};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
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
        /// A bridge's notice about one of its ports (`AF_BRIDGE`), not the
        /// link's own: the bridge sends one whenever a port's bridge
        /// settings or state move (a new port's, some seconds after it
        /// joined). Its other attributes come in the link's own notices
        /// too; the port's hairpin mode only here.
        bridge_port: Option<PortNotice>,
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
    /// The kernel dropped notifications (the socket's buffer overflowed):
    /// anything may have changed.
    Lost,
}

/// What a bridge's notice about one of its ports says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortNotice {
    /// `IFLA_BRPORT_MODE`, when the notice carries it.
    pub hairpin: Option<bool>,
}

/// Subscribes to link/address/route events in the caller's namespace; the
/// receiver yields events until the socket fails.
pub fn subscribe() -> Result<Subscription> {
    let socket = multicast_socket().context("subscribe to rtnetlink events")?;
    deepen(&socket);
    forward(socket)
}

/// The receive buffer of a host namespace's subscription. The host sees
/// a notification or two for every container's veth at once: making or
/// removing a thousand containers, and the bridge's own notices about its
/// ports some seconds later, are bursts of thousands of messages, which
/// overflow the default buffer (about 200 KiB; seen at 1,000 containers).
/// An overflow costs a full reading of the host, so the buffer is made
/// large enough for them; its memory is taken only while messages queue.
/// Beyond `net.core.rmem_max`, which root may exceed (`SO_RCVBUFFORCE`);
/// without that right the default stays, and an overflow is still seen.
const HOST_EVENT_BUFFER: libc::c_int = 16 << 20;

fn deepen(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let size = HOST_EVENT_BUFFER;
    // SAFETY: a valid socket fd, and a pointer to an int of the size given.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Events of the namespace at `ns`, handed to `sink` as they are read,
/// with a way to prove that none is still unread ([`Watched::quiet`]).
/// `sink` returns false once nobody listens any more.
///
/// Unlike [`subscribe`] there is no queue between the socket and
/// `sink`: a datagram leaves the socket and reaches `sink` under one lock,
/// so an empty socket queue seen under that lock means that every event
/// sent before was handed over. It also keeps no buffer per namespace
/// while idle (an agent watches thousands of them).
pub fn watch_in(
    ns: &Path,
    sink: impl Fn(KernelEvent) -> bool + Send + Sync + 'static,
) -> Result<Watched> {
    let socket = crate::host::netns::run_in(ns, multicast_socket)
        .with_context(|| format!("subscribe to rtnetlink events in {}", ns.display()))?;
    watch_socket(socket, false, sink)
}

/// [`watch_in`] for the caller's own namespace, for proving that nothing
/// changed there: a notification this reader cannot name reaches `sink`
/// as [`KernelEvent::Lost`] instead of being skipped.
pub fn watch_here(sink: impl Fn(KernelEvent) -> bool + Send + Sync + 'static) -> Result<Watched> {
    let socket = multicast_socket().context("subscribe to rtnetlink events")?;
    deepen(&socket);
    watch_socket(socket, true, sink)
}

fn watch_socket(
    socket: Socket,
    unknown_is_lost: bool,
    sink: impl Fn(KernelEvent) -> bool + Send + Sync + 'static,
) -> Result<Watched> {
    let gate = Arc::new(Gate {
        socket,
        lock: Mutex::new(()),
        open: AtomicBool::new(true),
        unknown_is_lost,
    });
    // SAFETY: the gate owns the socket, and the AsyncFd holds the gate
    // (an Arc) for its whole life: the fd stays open and the same.
    let fd = unsafe { AsyncFd::register_with_interest(Arc::clone(&gate), Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("register the event socket with the runtime: {e}"))?;
    let g = Arc::clone(&gate);
    let task = tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable().await else {
                break;
            };
            match g.read_one(&sink) {
                Read::Handed => {}
                Read::Empty => ready.clear_ready(),
                Read::Closed => break,
            }
        }
        g.open.store(false, Ordering::SeqCst);
    });
    Ok(Watched { gate, task })
}

/// A watched namespace's socket, shared by its reader and [`Watched::quiet`].
struct Gate {
    socket: Socket,
    /// Held while a datagram moves from the socket to the sink.
    lock: Mutex<()>,
    /// False once the reader stopped (the socket failed, the sink closed).
    open: AtomicBool,
    /// Hand a datagram without a known event over as [`KernelEvent::Lost`].
    unknown_is_lost: bool,
}

enum Read {
    Handed,
    Empty,
    Closed,
}

impl std::os::fd::AsRawFd for Gate {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl Gate {
    /// Moves one datagram from the socket to `sink`, under the lock.
    fn read_one(&self, sink: &impl Fn(KernelEvent) -> bool) -> Read {
        let Ok(_held) = self.lock.lock() else {
            return Read::Closed;
        };
        let mut buf: Vec<u8> = Vec::with_capacity(32 * 1024);
        match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {
                let events = events_of(&buf);
                // A notification this reader cannot name still says that
                // something changed: it must not pass unseen.
                if events.is_empty() && self.unknown_is_lost && !sink(KernelEvent::Lost) {
                    return Read::Closed;
                }
                for ev in events {
                    if !sink(ev) {
                        return Read::Closed;
                    }
                }
                Read::Handed
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Read::Empty,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Read::Handed,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                if sink(KernelEvent::Lost) {
                    Read::Handed
                } else {
                    Read::Closed
                }
            }
            Err(_) => {
                // No more events will come: say so, so that nothing is
                // trusted from here on.
                let _ = sink(KernelEvent::Lost);
                Read::Closed
            }
        }
    }
}

/// One watched namespace. Dropping it closes the socket (an open netlink
/// socket keeps its namespace alive).
pub struct Watched {
    gate: Arc<Gate>,
    task: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// Whether every event the kernel queued for this namespace until now
    /// has been handed to the sink, and the watch still works: the reader
    /// is running and the socket's queue is empty.
    pub fn quiet(&self) -> bool {
        all_quiet(&[self])[0]
    }
}

/// [`Watched::quiet`] of each of `ws`, in order, with one `poll` for all
/// their sockets rather than one each (a call per namespace adds up at a
/// thousand of them). A failed `poll` finds none quiet.
pub fn all_quiet(ws: &[&Watched]) -> Vec<bool> {
    // Every reader's lock held across the poll: a datagram is then either
    // still queued (the poll sees it) or handed over whole (its events
    // marked what they touched), never half-way. A reader takes only its
    // own lock, so holding many cannot deadlock.
    let held: Vec<Option<std::sync::MutexGuard<'_, ()>>> =
        ws.iter().map(|w| w.gate.lock.lock().ok()).collect();
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(ws.len());
    let mut of: Vec<usize> = Vec::with_capacity(ws.len());
    for (i, (w, h)) in ws.iter().zip(&held).enumerate() {
        if h.is_none() || !w.gate.open.load(Ordering::SeqCst) || w.task.is_finished() {
            continue;
        }
        fds.push(libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&w.gate.socket),
            events: libc::POLLIN,
            revents: 0,
        });
        of.push(i);
    }
    let mut out = vec![false; ws.len()];
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds; a zero
    // timeout only reads the sockets' state.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if n >= 0 {
        for (fd, i) in fds.iter().zip(of) {
            out[i] = fd.revents == 0;
        }
    }
    drop(held);
    out
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The events in one datagram of rtnetlink messages.
fn events_of(mut buf: &[u8]) -> Vec<KernelEvent> {
    use rtnetlink::packet_core::{NetlinkBuffer, NetlinkMessage};
    let mut out = Vec::new();
    while let Ok(nb) = NetlinkBuffer::new_checked(buf) {
        let len = nb.length() as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len])
            && let NetlinkPayload::InnerMessage(m) = msg.payload
            && let Some(ev) = event_of(m)
        {
            out.push(ev);
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// The event of one message as the connection hands it over. An overrun
/// (the kernel found the socket's buffer full, `ENOBUFS`) stands for
/// notifications that were dropped: they must not pass unseen.
fn payload_event(p: NetlinkPayload<RouteNetlinkMessage>) -> Option<KernelEvent> {
    match p {
        NetlinkPayload::InnerMessage(m) => event_of(m),
        NetlinkPayload::Overrun(_) => Some(KernelEvent::Lost),
        _ => None,
    }
}

fn event_of(m: RouteNetlinkMessage) -> Option<KernelEvent> {
    Some(match m {
        RouteNetlinkMessage::NewLink(l) => link_event(&l, false),
        RouteNetlinkMessage::DelLink(l) => link_event(&l, true),
        RouteNetlinkMessage::NewAddress(a) => address_event(&a, false),
        RouteNetlinkMessage::DelAddress(a) => address_event(&a, true),
        RouteNetlinkMessage::NewRoute(_) => KernelEvent::Route { removed: false },
        RouteNetlinkMessage::DelRoute(_) => KernelEvent::Route { removed: true },
        _ => return None,
    })
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
            let Some(ev) = payload_event(msg.payload) else {
                continue;
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
    let mut hairpin = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::ProtoInfoBridge(port) => {
                hairpin = port.iter().find_map(|p| match p {
                    LinkProtoInfoBridge::Other(nla)
                        if nla.kind() == IFLA_BRPORT_MODE && nla.value_len() == 1 =>
                    {
                        let mut v = [0u8];
                        nla.emit_value(&mut v);
                        Some(v[0] != 0)
                    }
                    _ => None,
                });
            }
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
        bridge_port: (l.header.interface_family == AddressFamily::Bridge)
            .then_some(PortNotice { hairpin }),
    }
}

/// The port attribute of a bridge's notice that says hairpin mode
/// (`linux/if_link.h`).
const IFLA_BRPORT_MODE: u16 = 4;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overrun_stands_for_lost_events() {
        assert_eq!(
            payload_event(NetlinkPayload::Overrun(Vec::new())),
            Some(KernelEvent::Lost)
        );
        assert_eq!(payload_event(NetlinkPayload::Noop), None);
        let route = RouteNetlinkMessage::DelRoute(Default::default());
        assert_eq!(
            payload_event(NetlinkPayload::InnerMessage(route)),
            Some(KernelEvent::Route { removed: true })
        );
    }
}
