//! rtnetlink access for netloom: full dumps of links, addresses and routes of
//! one network namespace, and the handful of writes the reconciler needs
//! (bridges, veth pairs, link settings, addresses, routes). Sysctls are
//! [`crate::host::sysctl`].
//!
//! Design notes:
//! * One [`Netlink`] talks to one namespace. A netlink socket is bound for its
//!   whole life to the namespace it was *created* in, so [`open_in`] creates
//!   the socket on a short-lived std thread that has setns'ed (see
//!   [`crate::host::netns::run_in`]) and only then hands the fd to tokio. No tokio
//!   worker thread ever changes namespace.
//! * Observation is by dump only: one request per kind ([`Netlink::links`],
//!   [`Netlink::addresses`], [`Netlink::routes`]) regardless of how many
//!   objects exist, never one request per object. [`Counters`] counts every
//!   request sent so callers (and tests) can check that budget.
//! * Every write is a single request with `NLM_F_ACK`, so failures surface
//!   with the kernel's errno; the errno is kept in the error chain as a
//!   [`KernelError`] (test it with [`is_errno`]) under a context naming the
//!   object, e.g. `create bridge docker0: File exists`.
//! * Messages are built from `netlink-packet-route` types and sent through
//!   `rtnetlink::Handle::request` directly instead of rtnetlink's request
//!   builders: that lets us count requests, set `NLM_F_ECHO`, detect
//!   interrupted dumps and read extended-ACK messages, none of which the
//!   builders expose.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_APPEND, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};

use crate::core::model;
use crate::host::netns;

mod blocking;
mod error;
mod msg;
pub mod sync;

use error::ext_ack_message;
pub use error::{KernelError, is_errno};
use msg::*;

/// Number of netlink requests sent through a [`Netlink`] (and its clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Dump requests (`NLM_F_DUMP`), plus single-object lookups.
    pub dumps: u64,
    /// Requests that change kernel state.
    pub writes: u64,
}

#[derive(Debug, Default)]
struct SharedCounters {
    dumps: AtomicU64,
    writes: AtomicU64,
}

/// A link as seen in an `RTM_GETLINK` dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", ...; `None` for e.g. `lo`, physical NICs.
    pub kind: Option<String>,
    /// `IFLA_MASTER`: ifindex of the bridge this link is enslaved to.
    pub master: Option<u32>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Administrative state (`IFF_UP`), not carrier.
    pub up: bool,
    /// `IFLA_IFALIAS`; netloom uses it to mark links it owns.
    pub alias: Option<String>,
    /// veth only: ifindex of the peer (`IFLA_LINK`), in the namespace given by
    /// `link_netnsid` if that is set, else in this one.
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: nsid (relative to this namespace) of the
    /// namespace holding the peer.
    pub link_netnsid: Option<i32>,
    /// Bridge ports only: `IFLA_BRPORT_MODE` (hairpin), from the port data.
    pub hairpin: Option<bool>,
    /// VXLAN devices only: what was fixed at creation.
    pub vxlan: Option<VxlanInfo>,
}

/// The creation attributes of a VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
    /// ARP/ND proxy (`IFLA_VXLAN_PROXY`).
    pub proxy: bool,
}

/// A permanent neighbour entry (`ip neigh ... nud permanent`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neigh {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// A static forwarding entry of a VXLAN device (`bridge fdb ... dst`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub index: u32,
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// An interface address (IPv6 link-local addresses are not reported).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Network address; `0.0.0.0` / `::` with prefix 0 for the default route.
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// `rtm_protocol`: kernel=2, boot=3 (`ip route add`), static=4 (netloom).
    pub protocol: u8,
}

/// Protocol number netloom's own routes carry ([`Netlink::add_route`]).
pub const RTPROT_STATIC: u8 = 4;

/// How many times a dump interrupted by a concurrent change is sent again.
const DUMP_ATTEMPTS: u32 = 16;

/// The pause before sending an interrupted dump again (`attempt` counts
/// from 0): 1 ms, doubling, at most 100 ms: 0.93 s over all attempts.
/// Changes come in bursts: right after a large apply, IPv6
/// autoconfiguration adds and settles a link-local address on every new
/// interface for a second or two, and a dump of a thousand addresses sent
/// again at once was interrupted five times in a row (a benchmark's apply
/// right after a cold apply of 1,000 containers failed so).
fn dump_backoff(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((1u64 << attempt.min(7)).min(100))
}

/// An object kind observation reads by one dump: the request that dumps
/// it and how to read one reply (`None` for replies it does not report).
pub(crate) trait Dumped: Sized {
    /// What the dump reads, for errors ("dump links: ...").
    const WHAT: &'static str;
    fn request() -> RouteNetlinkMessage;
    fn parse(msg: &RouteNetlinkMessage) -> Option<Self>;
}

impl Dumped for Link {
    const WHAT: &'static str = "links";
    // Without the counters (nothing here reads them): less for the kernel
    // to write and for us to parse, per link. Kernels that do not know
    // the flag ignore it.
    fn request() -> RouteNetlinkMessage {
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        RouteNetlinkMessage::GetLink(m)
    }
    fn parse(msg: &RouteNetlinkMessage) -> Option<Link> {
        match msg {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        }
    }
}

impl Dumped for Addr {
    const WHAT: &'static str = "addresses";
    // AF_UNSPEC in the request dumps every family in one go.
    fn request() -> RouteNetlinkMessage {
        RouteNetlinkMessage::GetAddress(AddressMessage::default())
    }
    fn parse(msg: &RouteNetlinkMessage) -> Option<Addr> {
        match msg {
            RouteNetlinkMessage::NewAddress(a) => parse_addr(a),
            _ => None,
        }
    }
}

impl Dumped for Route {
    const WHAT: &'static str = "routes";
    // AF_UNSPEC dumps all families; without NETLINK_GET_STRICT_CHK the
    // kernel ignores header filters, so table and type are filtered in
    // `parse_route`.
    fn request() -> RouteNetlinkMessage {
        RouteNetlinkMessage::GetRoute(RouteMessage::default())
    }
    fn parse(msg: &RouteNetlinkMessage) -> Option<Route> {
        match msg {
            RouteNetlinkMessage::NewRoute(r) => parse_route(r),
            _ => None,
        }
    }
}

/// A route of the IPv4 family, dumped alone: on a host with many
/// interfaces the IPv6 routes (a link-local, a multicast and a local one
/// per interface) outnumber the IPv4 ones a hundredfold.
struct Route4(Route);

impl Dumped for Route4 {
    const WHAT: &'static str = "IPv4 routes";
    // A family in the request dumps that family only: the kernel hands a
    // dump to the family's own handler.
    fn request() -> RouteNetlinkMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        RouteNetlinkMessage::GetRoute(m)
    }
    fn parse(msg: &RouteNetlinkMessage) -> Option<Route4> {
        match msg {
            RouteNetlinkMessage::NewRoute(r) => parse_route(r).map(Route4),
            _ => None,
        }
    }
}

/// Changes applied by [`Netlink::set_link`]; `None` fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub up: Option<bool>,
    /// Enslave to this ifindex; `Some(0)` releases the link from its master.
    pub master: Option<u32>,
    pub name: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// `Some("")` removes the alias.
    pub alias: Option<String>,
    /// Bridge ports: let frames leave by the port they came in by.
    pub hairpin: Option<bool>,
}

/// A connection to rtnetlink in one network namespace. Cheap to clone;
/// clones share the connection and the [`Counters`].
#[derive(Clone, Debug)]
pub struct Netlink {
    transport: Transport,
    counters: Arc<SharedCounters>,
}

/// How requests reach the kernel.
#[derive(Clone, Debug)]
enum Transport {
    /// rtnetlink's connection, driven by the tokio runtime.
    Async(rtnetlink::Handle),
    /// A plain socket; each request blocks the caller for its round trip
    /// (see [`blocking`]).
    Blocking(Arc<blocking::Blocking>),
}

/// Open rtnetlink in the calling thread's current network namespace. Must be
/// called from within a tokio runtime, which will drive the connection; the
/// runtime must have I/O enabled (tokio panics otherwise).
pub fn open_host() -> Result<Netlink> {
    let rt = current_runtime()?;
    Netlink::from_socket(&rt, new_socket()?)
}

/// Open rtnetlink in the network namespace at `ns` (e.g. `/run/netns/NAME`,
/// `/proc/PID/ns/net`). The socket is created on a helper thread inside `ns`
/// (this blocks the caller for the duration of one thread spawn); the
/// connection is then driven by the calling tokio runtime.
pub fn open_in(ns: &Path) -> Result<Netlink> {
    let rt = current_runtime()?;
    let socket = netns::run_in(ns, new_socket)
        .with_context(|| format!("open netlink in {}", ns.display()))?;
    Netlink::from_socket(&rt, socket)
}

/// Like [`open_host`], but each request blocks the calling thread for its
/// round trip instead of going through the runtime (see `netlink::blocking`):
/// for a caller that waits for every answer before its next request
/// anyway, like `apply`.
pub fn open_host_blocking() -> Result<Netlink> {
    Ok(Netlink::from_blocking(new_socket()?))
}

/// Like [`open_in`], with a blocking socket (see [`open_host_blocking`]).
pub fn open_in_blocking(ns: &Path) -> Result<Netlink> {
    let socket = netns::run_in(ns, new_socket)
        .with_context(|| format!("open netlink in {}", ns.display()))?;
    Ok(Netlink::from_blocking(socket))
}

fn current_runtime() -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().context("open netlink: not inside a tokio runtime")
}

/// A plain (blocking, unregistered) rtnetlink socket in the calling thread's
/// namespace.
fn new_socket() -> Result<Socket> {
    let socket = Socket::new(NETLINK_ROUTE).context("create netlink socket")?;
    // Ask for textual error explanations (extended ACK) and for error replies
    // that do not echo our whole request back. Both are optional, so old
    // kernels that refuse them are fine.
    let _ = socket.set_ext_ack(true);
    let _ = socket.set_cap_ack(true);
    Ok(socket)
}

impl Netlink {
    fn from_socket(rt: &tokio::runtime::Handle, socket: Socket) -> Result<Netlink> {
        let _enter = rt.enter();
        socket
            .set_non_blocking(true)
            .context("set netlink socket non-blocking")?;
        // SAFETY: `into_raw_fd` hands over sole ownership of a valid, open
        // netlink socket fd, which TokioSocket takes over. (Like every tokio
        // I/O type it panics if the runtime was built without I/O enabled.)
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (mut conn, handle, _unsolicited) = rtnetlink::from_socket(socket);
        // Forward NLMSG_DONE so dumps can see NLM_F_DUMP_INTR on it.
        conn.set_forward_done(true);
        // The task ends when the last clone of `handle` is dropped.
        rt.spawn(conn);
        Ok(Netlink {
            transport: Transport::Async(handle),
            counters: Arc::default(),
        })
    }

    fn from_blocking(socket: Socket) -> Netlink {
        Netlink {
            transport: Transport::Blocking(Arc::new(blocking::Blocking::new(socket))),
            counters: Arc::default(),
        }
    }

    /// Requests sent so far by this connection and all its clones.
    pub fn counters(&self) -> Counters {
        Counters {
            dumps: self.counters.dumps.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// Send one request and collect every reply message up to the end of the
    /// exchange (ACK or NLMSG_DONE). A kernel error becomes a [`KernelError`].
    async fn exchange(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        crate::host::stats::netlink_request();
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = match &self.transport {
            Transport::Async(handle) => handle.clone(),
            Transport::Blocking(socket) => return socket.exchange(req),
        };
        let mut replies = handle.request(req)?;
        let mut out = Vec::new();
        while let Some(reply) = replies.next().await {
            match &reply.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(KernelError {
                        errno: e.raw_code().abs(),
                        message: ext_ack_message(reply.header.flags, &e.header),
                    }
                    .into());
                }
                NetlinkPayload::Overrun(_) => bail!("netlink receive buffer overrun"),
                _ => out.push(reply),
            }
        }
        Ok(out)
    }

    /// Dump request; retried (and counted again) if the kernel reports that
    /// the dump was interrupted by a concurrent change, so callers always get
    /// a consistent snapshot (after a pause: [`dump_backoff`]).
    async fn dump(&self, msg: RouteNetlinkMessage, what: &str) -> Result<Vec<RouteNetlinkMessage>> {
        for attempt in 0..DUMP_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(dump_backoff(attempt - 1)).await;
            }
            self.counters.dumps.fetch_add(1, Ordering::Relaxed);
            let replies = self
                .exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)
                .await
                .with_context(|| format!("dump {what}"))?;
            if replies
                .iter()
                .any(|m| m.header.flags & NLM_F_DUMP_INTR != 0)
            {
                continue;
            }
            return Ok(inner_messages(replies));
        }
        bail!("dump {what}: interrupted by concurrent changes {DUMP_ATTEMPTS} times in a row")
    }

    /// Write request with ACK; returns any messages echoed back (`NLM_F_ECHO`).
    async fn write(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let replies = self
            .exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .await
            .with_context(what)?;
        Ok(inner_messages(replies))
    }

    /// Every object of kind `T` in the namespace (one dump).
    async fn dump_of<T: Dumped>(&self) -> Result<Vec<T>> {
        let msgs = self.dump(T::request(), T::WHAT).await?;
        Ok(msgs.iter().filter_map(T::parse).collect())
    }

    /// All links of the namespace (one dump).
    pub async fn links(&self) -> Result<Vec<Link>> {
        self.dump_of().await
    }

    /// All IPv4 and IPv6 addresses except IPv6 link-local (one dump).
    pub async fn addresses(&self) -> Result<Vec<Addr>> {
        self.dump_of().await
    }

    /// Unicast routes of the main table, IPv4 and IPv6 (one dump). IPv6
    /// link-local prefix routes (`fe80::/64`, added by the kernel on every
    /// interface) are not reported.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        self.dump_of().await
    }

    /// The IPv4 routes of the main table, without the IPv6 ones (one dump).
    pub async fn routes_v4(&self) -> Result<Vec<Route>> {
        Ok(self
            .dump_of::<Route4>()
            .await?
            .into_iter()
            .map(|r| r.0)
            .collect())
    }

    /// Create bridge `name` (admin down) and return its ifindex. `alias`
    /// (if not empty) becomes its `IFLA_IFALIAS`: netloom's mark.
    ///
    /// A marked bridge costs two writes (see `Netlink::create_marked`),
    /// an unmarked one a single write. `NLM_F_ECHO` makes the kernel send
    /// the new link back, which gives the ifindex without a lookup (older
    /// kernels that do not echo cost one extra lookup, counted as a dump).
    pub async fn create_bridge(&self, name: &str, mtu: Option<u32>, alias: &str) -> Result<u32> {
        let mut msg = LinkMessage::default();
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        let created = self
            .create_marked(msg, name, alias, &|| format!("create bridge {name}"))
            .await?;
        Ok(created.index)
    }

    /// Creates the link `msg` describes (everything but its name) as
    /// `name`, marked with `alias` when that is not empty.
    ///
    /// The kernel ignores `IFLA_IFALIAS` when it creates a link (checked
    /// on 6.18), so a mark takes a second request. Created under `name`,
    /// the link would be an unmarked interface between the two, and a
    /// crash there would leave what every later run must call a user's. So
    /// a marked link is born under netloom's temporary name
    /// ([`model::temp_link_name`], reserved: a file cannot use it) and the
    /// second request renames it to `name` and sets its alias together
    /// (one `RTM_NEWLINK`, carried out whole under the kernel's lock). At
    /// any instant the link is netloom's by its name or by its mark; a
    /// crash between the two (a fault point) leaves the temporary name,
    /// which the next `apply` or `down` deletes. The same two writes as
    /// create-then-alias cost.
    async fn create_marked(
        &self,
        mut msg: LinkMessage,
        name: &str,
        alias: &str,
        what: &dyn Fn() -> String,
    ) -> Result<Link> {
        let born = if alias.is_empty() {
            name.to_string()
        } else {
            model::temp_link_name(name)
        };
        msg.attributes
            .insert(0, LinkAttribute::IfName(born.clone()));
        let echoed = self
            .write(
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
                what,
            )
            .await?;
        let created = self
            .echoed_or_looked_up(echoed, &born)
            .await
            .with_context(what)?;
        if alias.is_empty() {
            return Ok(created);
        }
        // Created, not yet named or marked: a crash here must be survivable.
        crate::host::fault::point();
        let naming = LinkChange {
            name: Some(name.to_string()),
            alias: Some(alias.to_string()),
            ..LinkChange::default()
        };
        if let Err(e) = self.set_link(created.index, &naming).await {
            // E.g. a user made `name` meanwhile: take the temporary link
            // away now rather than leave it to the next run.
            let _ = self.delete_link(created.index).await;
            return Err(e).with_context(|| format!("{}: name it and mark it", what()));
        }
        Ok(Link {
            name: name.to_string(),
            alias: Some(alias.to_string()),
            ..created
        })
    }

    /// Create a VXLAN device (admin down, no learning, no multicast group:
    /// forwarding comes from static entries) and return its ifindex. Like
    /// [`Netlink::create_bridge`], a mark costs a second write.
    pub async fn create_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mtu: u32,
        alias: &str,
    ) -> Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(vni),
                InfoVxlan::Local(local),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
                // Neighbour requests are answered from the device's own
                // entries and never sent to other hosts.
                InfoVxlan::Proxy(true),
            ])),
        ]));
        let created = self
            .create_marked(msg, name, alias, &|| format!("create vxlan {name}"))
            .await?;
        Ok(created.index)
    }

    /// Static forwarding entries with a remote destination of every device
    /// (one dump of the bridge family).
    pub async fn fdb(&self) -> Result<Vec<Fdb>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let msgs = self
            .dump(RouteNetlinkMessage::GetNeighbour(req), "forwarding entries")
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => {
                    let mut mac = None;
                    let mut dst = None;
                    for a in &n.attributes {
                        match a {
                            NeighbourAttribute::LinkLayerAddress(l) => {
                                mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                                dst = Some(*ip)
                            }
                            // In the bridge family the address comes raw.
                            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                            }
                            _ => {}
                        }
                    }
                    Some(Fdb {
                        index: n.header.ifindex,
                        mac: mac?,
                        dst: dst?,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn fdb_message(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        m
    }

    /// Add a static forwarding entry to the VXLAN device `index`. Appended,
    /// as `bridge fdb append` does: one MAC (the all-zero one) may point at
    /// several hosts.
    pub async fn add_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        self.write(
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, mac, dst)),
            NLM_F_CREATE | NLM_F_APPEND,
            || format!("add forwarding entry {} dst {dst}", fmt_mac(&mac)),
        )
        .await?;
        Ok(())
    }

    /// Remove one static forwarding entry (that MAC to that destination).
    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        self.write(
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, mac, dst)),
            0,
            || format!("delete forwarding entry {} dst {dst}", fmt_mac(&mac)),
        )
        .await?;
        Ok(())
    }

    /// Permanent IPv4 and IPv6 neighbour entries of every device (one dump
    /// per family); entries the kernel learnt are left out.
    pub async fn neighbours(&self) -> Result<Vec<Neigh>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = NeighbourMessage::default();
            req.header.family = family;
            let msgs = self
                .dump(RouteNetlinkMessage::GetNeighbour(req), "neighbour entries")
                .await?;
            out.extend(msgs.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.state == NeighbourState::Permanent =>
                {
                    let mut mac = None;
                    let mut ip = None;
                    for a in &n.attributes {
                        match a {
                            NeighbourAttribute::LinkLayerAddress(l) => {
                                mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                                ip = Some(IpAddr::V4(*v))
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                                ip = Some(IpAddr::V6(*v))
                            }
                            _ => {}
                        }
                    }
                    Some(Neigh {
                        index: n.header.ifindex,
                        ip: ip?,
                        mac: mac?,
                    })
                }
                _ => None,
            }));
        }
        Ok(out)
    }

    fn neigh_message(index: u32, ip: IpAddr, mac: Option<[u8; 6]>) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(v) => NeighbourAddress::Inet(v),
            IpAddr::V6(v) => NeighbourAddress::Inet6(v),
        }));
        if let Some(mac) = mac {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        }
        m
    }

    /// Add or replace the permanent neighbour entry `ip` -> `mac` on
    /// device `index` (`ip neigh replace ... nud permanent`).
    pub async fn replace_neigh(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.write(
            RouteNetlinkMessage::NewNeighbour(Self::neigh_message(index, ip, Some(mac))),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add neighbour entry {ip} lladdr {}", fmt_mac(&mac)),
        )
        .await?;
        Ok(())
    }

    /// Remove the neighbour entry for `ip` on device `index`.
    pub async fn delete_neigh(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.write(
            RouteNetlinkMessage::DelNeighbour(Self::neigh_message(index, ip, None)),
            0,
            || format!("delete neighbour entry {ip}"),
        )
        .await?;
        Ok(())
    }

    /// Create a veth pair: `host_name` in this namespace, `peer_name` born
    /// directly inside the namespace `peer_ns` (so it never appears here and
    /// needs no rename or move), with `peer_mac` if given. `mtu` applies to
    /// both ends; `alias` (if not empty) marks the host end, which takes a
    /// second write (see `Netlink::create_marked`). Both ends start admin
    /// down. Returns the host end's ifindex and, when the kernel said
    /// (`IFLA_LINK` of the echo or lookup, with the peer in another
    /// namespace), the peer's ifindex in `peer_ns`.
    ///
    /// The peer needs no mark of its own: the kernel creates and destroys
    /// the two ends together, so it exists exactly as long as the host end,
    /// which is netloom's by its temporary name and then by its mark.
    /// Deleting a half-made host end takes the peer with it, which frees
    /// the peer's name in the container's namespace for the next attempt.
    pub async fn create_veth(
        &self,
        host_name: &str,
        peer_name: &str,
        peer_ns: BorrowedFd<'_>,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
        alias: &str,
    ) -> Result<(u32, Option<u32>)> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        // The fd only needs to stay open until the kernel has processed the
        // request, which the borrow guarantees (we await the ACK below).
        peer.attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        if let Some(mac) = peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }

        let mut msg = LinkMessage::default();
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let created = self
            .create_marked(msg, host_name, alias, &|| {
                format!("create veth {host_name} (peer {peer_name})")
            })
            .await?;
        // Without a netns id the index would name a link of this
        // namespace, not the peer.
        let peer_index = created.link_netnsid.and(created.peer_index);
        Ok((created.index, peer_index))
    }

    /// Look one link up by name (one request, counted as a dump).
    /// The link `name` from the echo of its creation or, on kernels that
    /// do not echo RTM_NEWLINK (before 6.3), from a lookup (one dump).
    async fn echoed_or_looked_up(
        &self,
        echoed: Vec<RouteNetlinkMessage>,
        name: &str,
    ) -> Result<Link> {
        match echoed_link(echoed, name) {
            Some(link) => Ok(link),
            None => self.link_by_name(name).await,
        }
    }

    async fn link_by_name(&self, name: &str) -> Result<Link> {
        let missing = KernelError {
            errno: libc::ENODEV,
            message: None,
        };
        self.link(name)
            .await?
            .ok_or_else(|| anyhow::Error::new(missing).context(format!("get link {name}")))
    }

    /// The link called `name`, `None` when there is none: one request
    /// (counted as a dump) that costs the same whatever the number of
    /// links, where a dump costs in proportion to it.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let link = self.get_link(msg, &|| format!("get link {name}")).await?;
        match link {
            Some(l) if l.name != name => bail!("get link {name}: the kernel answered {}", l.name),
            other => Ok(other),
        }
    }

    /// The link with ifindex `index`, `None` when there is none (one
    /// request, counted as a dump).
    pub async fn link_at(&self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let link = self.get_link(msg, &|| format!("get link {index}")).await?;
        match link {
            Some(l) if l.index != index => {
                bail!("get link {index}: the kernel answered link {}", l.index)
            }
            other => Ok(other),
        }
    }

    /// One `RTM_GETLINK` (not a dump) for the link `msg` names; the
    /// kernel's "no such device" is `None`.
    async fn get_link(
        &self,
        mut msg: LinkMessage,
        what: &dyn Fn() -> String,
    ) -> Result<Option<Link>> {
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.counters.dumps.fetch_add(1, Ordering::Relaxed);
        let replies = match self
            .exchange(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)
            .await
        {
            Ok(r) => r,
            Err(e) if is_errno(&e, libc::ENODEV) => return Ok(None),
            Err(e) => return Err(e.context(what())),
        };
        let link = inner_messages(replies).into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
            _ => None,
        });
        link.map(Some)
            .ok_or_else(|| anyhow!("{}: no answer from the kernel", what()))
    }

    /// Apply all set fields of `change` to link `index` in one request
    /// (`RTM_NEWLINK` without `NLM_F_CREATE`, like `ip link set`). The kernel
    /// applies a rename before the up/down change, so renaming a down link
    /// and setting it up in one call works even on kernels that refuse to
    /// rename a link that is up (EBUSY; recent kernels allow it). An empty
    /// change sends nothing.
    pub async fn set_link(&self, index: u32, change: &LinkChange) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = change.up {
            msg.header.change_mask |= LinkFlags::Up;
            if up {
                msg.header.flags |= LinkFlags::Up;
            }
        }
        if let Some(name) = &change.name {
            msg.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(mac) = change.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = change.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(alias) = &change.alias {
            msg.attributes.push(LinkAttribute::IfAlias(alias.clone()));
        }
        if let Some(master) = change.master {
            msg.attributes.push(LinkAttribute::Controller(master));
        }
        if let Some(on) = change.hairpin {
            // Bridge-port options travel as the port's slave data.
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    on,
                )])),
            ]));
        }
        if change.up.is_none() && msg.attributes.is_empty() {
            return Ok(());
        }
        self.write(RouteNetlinkMessage::NewLink(msg), 0, || {
            format!("set link {index}")
        })
        .await
        .map(drop)
    }

    /// Delete link `index` (for a veth, the peer goes too).
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.write(RouteNetlinkMessage::DelLink(msg), 0, || {
            format!("delete link {index}")
        })
        .await
        .map(drop)
    }

    /// Add `ip/prefix` to link `index`; IPv4 addresses get the broadcast
    /// address derived from the prefix (like `ip addr add ... brd +`).
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let msg = address_message(index, ip, prefix, true)?;
        self.write(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add address {ip}/{prefix} to link {index}"),
        )
        .await
        .map(drop)
    }

    /// Remove `ip/prefix` from link `index`.
    pub async fn delete_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let msg = address_message(index, ip, prefix, false)?;
        self.write(RouteNetlinkMessage::DelAddress(msg), 0, || {
            format!("delete address {ip}/{prefix} from link {index}")
        })
        .await
        .map(drop)
    }

    /// Add a unicast route to the main table with protocol static (4). With
    /// no gateway an IPv4 route gets link scope, like `ip route add ... dev`.
    /// A gateway without `oif` lets the kernel pick the interface.
    pub async fn add_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<()> {
        let what = || format!("add route {}", describe_route(dst, prefix, gateway, oif));
        let mut msg = route_message(dst, prefix, gateway, oif).with_context(what)?;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_none() && dst.is_ipv4() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        self.write(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            what,
        )
        .await
        .map(drop)
    }

    /// Delete the main-table route `r` as returned by [`Netlink::routes`];
    /// gateway, oif and protocol must match too.
    pub async fn delete_route(&self, r: &Route) -> Result<()> {
        let what = || {
            format!(
                "delete route {}",
                describe_route(r.dst, r.prefix, r.gateway, r.oif)
            )
        };
        let mut msg = route_message(r.dst, r.prefix, r.gateway, r.oif).with_context(what)?;
        msg.header.protocol = RouteProtocol::from(r.protocol);
        // Like `ip route del`: any scope and type, the rest must match.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        self.write(RouteNetlinkMessage::DelRoute(msg), 0, what)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod backoff_tests {
    #[test]
    fn interrupted_dumps_wait_longer_each_time_up_to_a_bound() {
        let waits: Vec<u64> = (0..super::DUMP_ATTEMPTS - 1)
            .map(|a| super::dump_backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(&waits[..8], &[1, 2, 4, 8, 16, 32, 64, 100]);
        assert!(waits.iter().all(|w| *w <= 100));
        let total: u64 = waits.iter().sum();
        assert_eq!(total, 927);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::netns::sandbox::{self, ip};
    use crate::host::sysctl::{read_sysctl, write_sysctl};
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use std::process::Command;

    const CTR_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x1e, 0x00, 0x02];

    /// Run an async test body on a current-thread runtime inside a sandbox
    /// (fresh network + mount namespace, tmpfs on /run).
    fn sandboxed<F>(body: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = Result<()>>,
    {
        sandbox::run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(body())
        });
    }

    /// Whether the running kernel echoes RTM_NEWLINK on NLM_F_ECHO (Linux
    /// 6.3 and later), read from its release string.
    fn kernel_echoes_new_links() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .expect("read /proc/sys/kernel/osrelease");
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        version >= (6, 3)
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("test literal"))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().expect("test literal"))
    }

    fn by_name<'a>(links: &'a [Link], name: &str) -> Result<&'a Link> {
        links
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| anyhow!("no link {name} in {links:#?}"))
    }

    fn host_links(kind: &str) -> String {
        ip(&["-o", "link", "show", "type", kind]).unwrap_or_default()
    }

    #[test]
    fn ext_ack_parsing() {
        // Capped error: 16-byte request header, then one NLMSGERR_ATTR_MSG.
        let mut payload = vec![0u8; 16];
        let text = b"Unknown device type\0";
        let len = (4 + text.len()) as u16;
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(text);
        let flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
        assert_eq!(
            ext_ack_message(flags, &payload).as_deref(),
            Some("Unknown device type")
        );
        assert_eq!(ext_ack_message(NLM_F_CAPPED, &payload), None);
        assert_eq!(ext_ack_message(flags, &payload[..10]), None);
    }

    #[test]
    fn open_outside_runtime_is_an_error() {
        assert!(open_host().is_err());
        assert!(open_in(Path::new(netns::THREAD_SELF_NET)).is_err());
    }

    /// Runs `body` in a throwaway host, and checks afterwards that the
    /// machine's own namespace has not gained a bridge, veth or namespace.
    fn in_sandbox<F>(body: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let before = (
            host_links("bridge"),
            host_links("veth"),
            netns::list_named().ok(),
        );
        sandboxed(body);
        let after = (
            host_links("bridge"),
            host_links("veth"),
            netns::list_named().ok(),
        );
        assert_eq!(before, after, "the machine's own namespace was touched");
    }

    /// One container wired the Docker way, where the cases below start: a
    /// bridge `nl-br0` (MTU 1400, alias `netloom:net1`), a namespace
    /// `nl-ctr1` and a veth pair `vethnl0` with its peer born inside as
    /// `eth0` (MAC [`CTR_MAC`]).
    struct Wired {
        host: Netlink,
        br: u32,
        veth: Link,
        ctr_path: PathBuf,
        _ctr_fd: std::os::fd::OwnedFd,
    }

    async fn wire() -> Result<Wired> {
        let host = open_host()?;
        let br = host
            .create_bridge("nl-br0", Some(1400), "netloom:net1")
            .await?;
        netns::create_named("nl-ctr1")?;
        let ctr_path = netns::named_path("nl-ctr1");
        let ctr_fd = netns::open(&ctr_path)?;
        host.create_veth(
            "vethnl0",
            "eth0",
            ctr_fd.as_fd(),
            Some(1400),
            Some(CTR_MAC),
            "netloom:ctr1",
        )
        .await?;
        let veth = by_name(&host.links().await?, "vethnl0")?.clone();
        Ok(Wired {
            host,
            br,
            veth,
            ctr_path,
            _ctr_fd: ctr_fd,
        })
    }

    /// Enslaves and raises the veth, raises the bridge and gives it its
    /// addresses: the state of a wired container's host side.
    async fn attach(w: &Wired) -> Result<()> {
        let up = LinkChange {
            up: Some(true),
            ..LinkChange::default()
        };
        w.host
            .set_link(
                w.veth.index,
                &LinkChange {
                    up: Some(true),
                    master: Some(w.br),
                    ..LinkChange::default()
                },
            )
            .await?;
        w.host.set_link(w.br, &up).await?;
        w.host.add_address(w.br, v4("172.30.0.1"), 16).await?;
        w.host.add_address(w.br, v6("fd00:30::1"), 64).await?;
        Ok(())
    }

    /// Bridges: the requests each creation costs (with and without an echo from
    /// the kernel), and errors that name the link and keep the errno.
    #[test]
    fn bridges_count_requests_and_name_errors() {
        in_sandbox(|| async {
            let host = open_host()?;
            let counting = host.clone();
            assert_eq!(host.counters(), Counters::default());

            // Bridge: one write when the kernel echoes the link; the alias
            // needs a second one (the kernel ignores IFLA_IFALIAS on create).
            let br = host
                .create_bridge("nl-br0", Some(1400), "netloom:net1")
                .await?;
            let after_bridge = host.counters();
            // Kernels before 6.3 do not echo: one lookup per bridge more.
            let lookups = if kernel_echoes_new_links() { 0 } else { 1 };
            assert_eq!(
                after_bridge,
                Counters {
                    dumps: lookups,
                    writes: 2
                }
            );
            // Without an alias it is a single request.
            let br_plain = host.create_bridge("nl-br1", None, "").await?;
            assert_eq!(
                host.counters(),
                Counters {
                    dumps: 2 * lookups,
                    writes: 3
                }
            );
            // The path for kernels that do not echo, whatever this one does:
            // no echo means one lookup, which finds the link.
            let looked_up = host.echoed_or_looked_up(Vec::new(), "nl-br0").await?;
            assert_eq!((looked_up.index, looked_up.name.as_str()), (br, "nl-br0"));
            assert_eq!(
                host.counters(),
                Counters {
                    dumps: 2 * lookups + 1,
                    writes: 3
                }
            );
            let err = host
                .echoed_or_looked_up(Vec::new(), "nl-nosuch")
                .await
                .expect_err("lookup of a missing link succeeded");
            assert!(is_errno(&err, libc::ENODEV), "{err:#}");
            host.delete_link(br_plain).await?;
            let err = host
                .create_bridge("nl-br0", None, "")
                .await
                .expect_err("duplicate bridge accepted");
            assert!(is_errno(&err, libc::EEXIST), "{err:#}");
            assert_eq!(format!("{err:#}"), "create bridge nl-br0: File exists");

            // Clones count together.
            assert_eq!(counting.counters(), host.counters());
            Ok(())
        });
    }

    /// A veth pair whose peer is created inside the container namespace,
    /// with its final name, MAC and MTU: nothing of it appears in the host.
    #[test]
    fn veth_peer_is_born_in_the_container() {
        in_sandbox(|| async {
            let host = open_host()?;
            let br = host
                .create_bridge("nl-br0", Some(1400), "netloom:net1")
                .await?;
            // Container namespace and veth, the peer born inside as eth0.
            netns::create_named("nl-ctr1")?;
            let ctr_path = netns::named_path("nl-ctr1");
            let ctr_fd = netns::open(&ctr_path)?;
            let w0 = host.counters().writes;
            let (host_index, peer_index) = host
                .create_veth(
                    "vethnl0",
                    "eth0",
                    ctr_fd.as_fd(),
                    Some(1400),
                    Some(CTR_MAC),
                    "netloom:ctr1",
                )
                .await?;
            assert_eq!(host.counters().writes - w0, 2);
            let err = host
                .create_veth("vethnl0", "eth1", ctr_fd.as_fd(), None, None, "")
                .await
                .expect_err("duplicate veth accepted");
            assert!(is_errno(&err, libc::EEXIST), "{err:#}");
            assert!(format!("{err:#}").starts_with("create veth vethnl0 (peer eth1): "));
            // Marked, the duplicate is born under the temporary name and
            // fails to take its own: nothing of it is left, in the host
            // (the temporary end) or in the container (its peer).
            let err = host
                .create_veth("vethnl0", "eth1", ctr_fd.as_fd(), None, None, "netloom:x")
                .await
                .expect_err("duplicate marked veth accepted");
            assert!(is_errno(&err, libc::EEXIST), "{err:#}");
            let host_links = host.links().await?;
            assert!(
                !host_links.iter().any(|l| model::is_temp_link(&l.name)),
                "{host_links:?}"
            );
            let inside = open_in(&ctr_path)?.links().await?;
            assert!(!inside.iter().any(|l| l.name == "eth1"), "{inside:?}");
            // The indexes returned are those of the two ends.
            assert_eq!(peer_index, Some(by_name(&inside, "eth0")?.index));
            assert_eq!(host_index, by_name(&host.links().await?, "vethnl0")?.index);
            // One link looked up, by name or by index, is what the dump says.
            let dumped = by_name(&host.links().await?, "vethnl0")?.clone();
            assert_eq!(host.link("vethnl0").await?, Some(dumped.clone()));
            assert_eq!(host.link_at(host_index).await?, Some(dumped));
            assert_eq!(host.link("nl-nosuch").await?, None);

            let links = host.links().await?;
            let bridge = by_name(&links, "nl-br0")?;
            assert_eq!(bridge.index, br);
            assert_eq!(bridge.kind.as_deref(), Some("bridge"));
            assert_eq!(bridge.mtu, 1400);
            assert_eq!(bridge.alias.as_deref(), Some("netloom:net1"));
            assert!(!bridge.up);
            let veth = by_name(&links, "vethnl0")?.clone();
            assert_eq!(veth.kind.as_deref(), Some("veth"));
            assert_eq!(veth.alias.as_deref(), Some("netloom:ctr1"));
            assert_eq!(veth.mtu, 1400);
            assert_eq!(veth.master, None);
            assert!(
                veth.peer_index.is_some() && veth.link_netnsid.is_some(),
                "{veth:?}"
            );
            assert!(
                links.iter().all(|l| l.name != "eth0"),
                "peer leaked into host ns"
            );

            drop(ctr_fd);
            Ok(())
        });
    }

    /// Enslaving, raising, addresses and routes on both sides, checked through
    /// our dumps and through iproute2, and the container pings its gateway.
    #[test]
    fn addresses_routes_and_reachability() {
        in_sandbox(|| async {
            let w = wire().await?;
            let (host, br, ctr_path) = (w.host.clone(), w.br, w.ctr_path.clone());
            let veth = w.veth.clone();
            // Enslave + up in one request each.
            let d0 = host.counters();
            host.set_link(
                veth.index,
                &LinkChange {
                    up: Some(true),
                    master: Some(br),
                    ..LinkChange::default()
                },
            )
            .await?;
            host.set_link(
                br,
                &LinkChange {
                    up: Some(true),
                    ..LinkChange::default()
                },
            )
            .await?;
            host.set_link(br, &LinkChange::default()).await?; // no-op: no request
            host.add_address(br, v4("172.30.0.1"), 16).await?;
            host.add_address(br, v6("fd00:30::1"), 64).await?;
            let d1 = host.counters();
            assert_eq!(d1.writes - d0.writes, 4);
            assert_eq!(d1.dumps, d0.dumps);
            let err = host
                .add_address(br, v4("172.30.0.1"), 16)
                .await
                .expect_err("duplicate address accepted");
            assert!(is_errno(&err, libc::EEXIST), "{err:#}");
            assert_eq!(
                format!("{err:#}"),
                format!(
                    "add address 172.30.0.1/16 to link {br}: \
                     File exists (ipv4: Address already assigned)"
                )
            );

            let links: Vec<Link> = host.links().await?;
            let veth = by_name(&links, "vethnl0")?;
            assert_eq!(veth.master, Some(br));
            assert!(veth.up);
            assert!(by_name(&links, "nl-br0")?.up);
            let addrs = host.addresses().await?;
            assert!(addrs.contains(&Addr {
                index: br,
                ip: v4("172.30.0.1"),
                prefix: 16
            }));
            assert!(addrs.contains(&Addr {
                index: br,
                ip: v6("fd00:30::1"),
                prefix: 64
            }));
            let routes = host.routes().await?;
            assert!(
                routes.contains(&Route {
                    dst: v4("172.30.0.0"),
                    prefix: 16,
                    gateway: None,
                    oif: Some(br),
                    protocol: 2,
                }),
                "{routes:#?}"
            );

            // Same facts through iproute2.
            let shown = ip(&["-o", "link", "show", "vethnl0"])?;
            assert!(shown.contains("master nl-br0"), "{shown}");
            let shown = ip(&["-d", "link", "show", "nl-br0"])?;
            assert!(shown.contains("alias netloom:net1"), "{shown}");
            let shown = ip(&["-o", "-4", "addr", "show", "dev", "nl-br0"])?;
            assert!(
                shown.contains("inet 172.30.0.1/16 brd 172.30.255.255"),
                "{shown}"
            );

            // Inside the container namespace, through open_in.
            let ctr = open_in(&ctr_path)?;
            let links = ctr.links().await?;
            assert_eq!(links.len(), 2, "{links:#?}");
            let eth0 = by_name(&links, "eth0")?.clone();
            let lo = by_name(&links, "lo")?.clone();
            assert_eq!(eth0.mac, Some(CTR_MAC));
            assert_eq!(eth0.mtu, 1400);
            assert_eq!(eth0.kind.as_deref(), Some("veth"));
            assert!(eth0.link_netnsid.is_some());
            assert_eq!(eth0.peer_index, Some(veth.index));
            assert_eq!(eth0.alias, None);
            assert!(!eth0.up);

            ctr.set_link(
                lo.index,
                &LinkChange {
                    up: Some(true),
                    ..LinkChange::default()
                },
            )
            .await?;
            ctr.set_link(
                eth0.index,
                &LinkChange {
                    up: Some(true),
                    ..LinkChange::default()
                },
            )
            .await?;
            ctr.add_address(eth0.index, v4("172.30.0.2"), 16).await?;
            ctr.add_address(eth0.index, v6("fd00:30::2"), 64).await?;
            ctr.add_route(v4("0.0.0.0"), 0, Some(v4("172.30.0.1")), None)
                .await?;
            ctr.add_route(v6("::"), 0, Some(v6("fd00:30::1")), Some(eth0.index))
                .await?;
            ctr.add_route(v4("10.99.0.0"), 24, None, Some(eth0.index))
                .await?;
            assert_eq!(
                ctr.counters(),
                Counters {
                    dumps: 1,
                    writes: 7
                }
            );

            let addrs = ctr.addresses().await?;
            let mut expected = vec![
                Addr {
                    index: lo.index,
                    ip: v4("127.0.0.1"),
                    prefix: 8,
                },
                Addr {
                    index: lo.index,
                    ip: v6("::1"),
                    prefix: 128,
                },
                Addr {
                    index: eth0.index,
                    ip: v4("172.30.0.2"),
                    prefix: 16,
                },
                Addr {
                    index: eth0.index,
                    ip: v6("fd00:30::2"),
                    prefix: 64,
                },
            ];
            let mut got = addrs.clone();
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "link-local must be filtered");

            let routes = ctr.routes().await?;
            let default4 = Route {
                dst: v4("0.0.0.0"),
                prefix: 0,
                gateway: Some(v4("172.30.0.1")),
                oif: Some(eth0.index),
                protocol: RTPROT_STATIC,
            };
            let default6 = Route {
                dst: v6("::"),
                prefix: 0,
                gateway: Some(v6("fd00:30::1")),
                oif: Some(eth0.index),
                protocol: RTPROT_STATIC,
            };
            let onlink = Route {
                dst: v4("10.99.0.0"),
                prefix: 24,
                gateway: None,
                oif: Some(eth0.index),
                protocol: RTPROT_STATIC,
            };
            for r in [&default4, &default6, &onlink] {
                assert!(routes.contains(r), "{r:?} missing from {routes:#?}");
            }
            assert!(routes.iter().all(|r| match r.dst {
                IpAddr::V6(v6) => !is_ipv6_link_local(&v6),
                IpAddr::V4(_) => true,
            }));
            assert_eq!(
                ctr.counters(),
                Counters {
                    dumps: 3,
                    writes: 7
                }
            );

            let shown = ip(&["-n", "nl-ctr1", "route", "show", "default"])?;
            assert!(
                shown.contains("default via 172.30.0.1 dev eth0 proto static"),
                "{shown}"
            );
            let shown = ip(&["-n", "nl-ctr1", "route", "show", "10.99.0.0/24"])?;
            assert!(
                shown.contains("dev eth0 proto static scope link"),
                "{shown}"
            );
            let shown = ip(&[
                "netns", "exec", "nl-ctr1", "ip", "-o", "addr", "show", "dev", "eth0",
            ])?;
            assert!(
                shown.contains("inet 172.30.0.2/16 brd 172.30.255.255"),
                "{shown}"
            );
            let shown = ip(&["-n", "nl-ctr1", "link", "show", "eth0"])?;
            assert!(shown.contains("link/ether 02:42:ac:1e:00:02"), "{shown}");

            // End to end: the container reaches the bridge over the veth.
            let ping = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    "nl-ctr1",
                    "ping",
                    "-c1",
                    "-W2",
                    "172.30.0.1",
                ])
                .output()?;
            assert!(
                ping.status.success(),
                "{}",
                String::from_utf8_lossy(&ping.stdout)
            );

            // IPv6 route deletion, matched by gateway/oif/protocol.
            ctr.delete_route(&default6).await?;
            let routes = ctr.routes().await?;
            assert!(!routes.contains(&default6) && routes.contains(&default4));
            Ok(())
        });
    }

    /// Sysctls are read and written in the namespace asked for.
    #[test]
    fn sysctls_are_per_namespace() {
        in_sandbox(|| async {
            let w = wire().await?;
            let ctr_path = w.ctr_path.clone();
            // Sysctls are per namespace.
            write_sysctl(Some(&ctr_path), "net.ipv4.conf.eth0.route_localnet", "1")?;
            assert_eq!(
                read_sysctl(Some(&ctr_path), "net.ipv4.conf.eth0.route_localnet")?,
                "1"
            );
            write_sysctl(None, "net.ipv4.ip_forward", "1")?;
            assert_eq!(read_sysctl(None, "net.ipv4.ip_forward")?, "1");
            assert_eq!(read_sysctl(Some(&ctr_path), "net.ipv4.ip_forward")?, "0");
            let err = read_sysctl(Some(&ctr_path), "net.ipv4.conf.nl-br0.forwarding")
                .expect_err("bridge is not in the container");
            assert!(is_errno(&err, libc::ENOENT), "{err:#}");
            Ok(())
        });
    }

    /// The blocking transport answers like the async one: echoes, errors
    /// with the kernel's errno under the object's name, dumps; a request
    /// after a failed one gets its own answer; a namespace's maker hands
    /// out a socket that works inside it and lo's index there.
    #[test]
    fn blocking_sockets_answer_like_async_ones() {
        in_sandbox(|| async {
            let host = open_host_blocking()?;
            let br = host
                .create_bridge("nl-br0", Some(1400), "netloom:n")
                .await?;
            let err = host
                .create_bridge("nl-br0", None, "")
                .await
                .expect_err("duplicate bridge accepted");
            assert!(is_errno(&err, libc::EEXIST), "{err:#}");
            assert_eq!(format!("{err:#}"), "create bridge nl-br0: File exists");
            let links = host.links().await?;
            let b = by_name(&links, "nl-br0")?;
            assert_eq!((b.index, b.mtu), (br, 1400));
            assert_eq!(b.alias.as_deref(), Some("netloom:n"));
            assert_eq!(
                host.counters(),
                Counters {
                    dumps: 1,
                    writes: 3
                }
            );

            let (ctr, lo) = netns::create_named_with("nl-ctr1", || {
                Ok((open_host_blocking()?, nix::net::if_::if_nametoindex("lo")?))
            })?;
            let up = LinkChange {
                up: Some(true),
                ..LinkChange::default()
            };
            ctr.set_link(lo, &up).await?;
            // Seen from another socket in the namespace: lo, up, with its
            // address; nothing of the host.
            let other = open_in_blocking(&netns::named_path("nl-ctr1"))?;
            let inside = other.links().await?;
            assert_eq!(inside.len(), 1, "{inside:?}");
            assert!(inside[0].name == "lo" && inside[0].index == lo && inside[0].up);
            assert!(
                other
                    .addresses()
                    .await?
                    .iter()
                    .any(|a| a.ip == v4("127.0.0.1"))
            );
            let err = ctr.set_link(999, &up).await.expect_err("link 999 found");
            assert!(is_errno(&err, libc::ENODEV), "{err:#}");
            assert!(ctr.routes().await?.iter().all(|r| r.oif == Some(lo)));
            Ok(())
        });
    }

    /// One request changes name, MAC, MTU and alias; deletes name what they
    /// could not find; deleting the host end of a veth removes its peer.
    #[test]
    fn link_changes_and_deletes() {
        in_sandbox(|| async {
            let w = wire().await?;
            attach(&w).await?;
            let (host, br, veth) = (w.host.clone(), w.br, w.veth.clone());
            let ctr = open_in(&w.ctr_path)?;
            let eth0 = by_name(&ctr.links().await?, "eth0")?.clone();
            ctr.set_link(
                eth0.index,
                &LinkChange {
                    up: Some(true),
                    ..LinkChange::default()
                },
            )
            .await?;
            ctr.add_address(eth0.index, v4("172.30.0.2"), 16).await?;
            ctr.add_route(v4("0.0.0.0"), 0, Some(v4("172.30.0.1")), None)
                .await?;
            let default4 = Route {
                dst: v4("0.0.0.0"),
                prefix: 0,
                gateway: Some(v4("172.30.0.1")),
                oif: Some(eth0.index),
                protocol: RTPROT_STATIC,
            };
            assert!(ctr.routes().await?.contains(&default4));
            // Renames/MAC/MTU/alias in one request; errors name the link.
            let w = ctr.counters().writes;
            ctr.set_link(
                eth0.index,
                &LinkChange {
                    up: Some(false),
                    name: Some("eth9".into()),
                    mac: Some([0x02, 0, 0, 0, 0, 9]),
                    mtu: Some(1300),
                    alias: Some("renamed".into()),
                    master: None,
                    hairpin: None,
                },
            )
            .await?;
            assert_eq!(ctr.counters().writes, w + 1);
            let links = ctr.links().await?;
            let eth9 = by_name(&links, "eth9")?;
            assert_eq!(
                (
                    eth9.index,
                    eth9.mac,
                    eth9.mtu,
                    eth9.alias.as_deref(),
                    eth9.up
                ),
                (
                    eth0.index,
                    Some([0x02, 0, 0, 0, 0, 9]),
                    1300,
                    Some("renamed"),
                    false
                )
            );

            // Deletes. The down link took its routes with it; delete the
            // rest explicitly.
            let routes = ctr.routes().await?;
            assert!(!routes.contains(&default4), "{routes:#?}");
            host.delete_address(br, v6("fd00:30::1"), 64).await?;
            let err = host
                .delete_address(br, v6("fd00:30::1"), 64)
                .await
                .expect_err("double delete accepted");
            assert!(is_errno(&err, libc::EADDRNOTAVAIL), "{err:#}");
            let host_route = Route {
                dst: v4("172.30.0.0"),
                prefix: 16,
                gateway: None,
                oif: Some(br),
                protocol: 2,
            };
            host.delete_route(&host_route).await?;
            assert!(!host.routes().await?.contains(&host_route));
            let err = host
                .delete_route(&host_route)
                .await
                .expect_err("double delete");
            assert!(is_errno(&err, libc::ESRCH), "{err:#}");
            assert!(format!("{err:#}").starts_with("delete route 172.30.0.0/16 dev #"));

            // Deleting the host end removes the peer in the container.
            host.delete_link(veth.index).await?;
            let left: Vec<String> = ctr.links().await?.into_iter().map(|l| l.name).collect();
            assert_eq!(left, vec!["lo".to_string()]);
            host.delete_link(br).await?;
            let err = host.delete_link(br).await.expect_err("double delete");
            assert!(is_errno(&err, libc::ENODEV), "{err:#}");
            assert_eq!(
                format!("{err:#}"),
                format!("delete link {br}: No such device")
            );
            let left: Vec<String> = host.links().await?.into_iter().map(|l| l.name).collect();
            assert_eq!(left, vec!["lo".to_string()]);
            Ok(())
        });
    }

    /// `open_in` from a multi-threaded runtime: the worker threads must stay
    /// in their namespace while the socket lives in the other one.
    #[test]
    fn open_in_from_multi_thread_runtime() {
        sandbox::run(|| {
            let own = std::fs::metadata(netns::THREAD_SELF_NET)?.ino();
            netns::create_named("nl-mt")?;
            let path = netns::named_path("nl-mt");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = rt.block_on(async move {
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let path = path.clone();
                        tokio::spawn(async move {
                            let nl = open_in(&path)?;
                            let links = nl.links().await?;
                            let worker = std::fs::metadata(netns::THREAD_SELF_NET)?.ino();
                            Ok::<_, anyhow::Error>((links, worker))
                        })
                    })
                    .collect();
                for task in tasks {
                    let (links, worker) = task.await??;
                    let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
                    assert_eq!(names, ["lo"]);
                    assert_eq!(worker, own, "a tokio worker changed namespace");
                }
                // The host handle sees the sandbox, not nl-mt.
                let host = open_host()?;
                assert!(host.links().await?.iter().all(|l| l.name == "lo"));
                Ok::<_, anyhow::Error>(())
            });
            drop(rt);
            netns::delete_named("nl-mt")?;
            result
        });
    }
}
