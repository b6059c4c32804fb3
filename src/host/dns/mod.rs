//! Embedded DNS for user-defined networks (the equivalent of Docker's
//! `127.0.0.11`, served instead on each network's gateway address by the
//! `netloom watch` agent).
//!
//! What is answered, and what is forwarded, is decided by the core
//! ([`crate::core::dns`]), from plain types and with its own tests. This
//! module is the shell around it:
//!
//! * `codec`: DNS messages (hickory) to the core's questions and back;
//!   replies fitted to the transport (TC over UDP when too big).
//! * `listen`: the UDP and TCP listeners on each gateway, bound to that
//!   address only, with `IP_FREEBIND`.
//! * `server`: the state the listeners share, and the synchronous path of
//!   a packet: source check, parse, local answer.
//! * `forward`: the upstream servers, with a total budget of
//!   [`FORWARD_TIMEOUT`] and SERVFAIL when none helps.
//!
//! # Robustness
//!
//! Malformed packets, and packets that are responses rather than queries,
//! are dropped without a reply, as are packets from sources outside the
//! listener's subnet (a reply would make the gateway usable as a
//! reflector). Queries that must go upstream take a permit from a
//! semaphore of [`MAX_IN_FLIGHT`] shared by all listeners, and are dropped
//! when none is free.
//!
//! # Updates
//!
//! [`DnsServer::update`] swaps all records at once (one pointer swap under a
//! lock). Listeners are keyed by gateway address: a gateway present before
//! and after an update keeps its sockets and open TCP connections, a new one
//! gets listeners, a removed one has its listeners (and their connections
//! and forwarded queries) closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::core::dns::{Client, Index, Zone};
use listen::Listener;
use server::Shared;

mod cache;
mod codec;
mod forward;
mod listen;
mod server;
#[cfg(test)]
mod tests;
mod wire;

/// The port clients use; [`DnsServer::with_port`] overrides it for tests.
pub const DEFAULT_PORT: u16 = 53;
/// Total time a forwarded query may take, across all upstreams and both
/// transports, before the client gets SERVFAIL. Resolvers in containers
/// typically time out after 5 s, so 2 s leaves them room to retry.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once (all listeners together); beyond
/// this, new queries needing an upstream are dropped. Bounds the sockets and
/// tasks a flood of queries for unknown names can create.
pub const MAX_IN_FLIGHT: usize = 256;
/// Forwarded queries in flight at once from one network: half of
/// [`MAX_IN_FLIGHT`], so that one busy network cannot starve the others'
/// forwarding. (A quarter proved too tight: a client keeping 64 lookups in
/// flight hit the limit whenever a reply reached it before the permit of
/// the query it answered was released, and lost queries.)
pub const MAX_IN_FLIGHT_PER_NETWORK: usize = MAX_IN_FLIGHT / 2;
/// TCP connections open at once per listener; newer ones are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP connection with no complete query for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters since the server was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Replies produced locally (answers, NODATA, NXDOMAIN, FORMERR, NOTIMP).
    pub answered: u64,
    /// Replies relayed from an upstream server.
    pub forwarded: u64,
    /// Replies served from the cache of forwarded replies.
    pub cached: u64,
    /// SERVFAIL sent because no upstream gave a usable reply in time.
    pub failed: u64,
    /// Packets dropped without a reply: malformed, not a query, source
    /// outside the zone's subnet, no zone for the address, or over the
    /// in-flight / connection limits.
    pub dropped: u64,
}

/// The synchronous path of the server, without sockets: what it does
/// with one packet that reached the listener on a gateway. Every received
/// packet takes this path first; public so that it can be fuzzed and
/// measured on its own.
pub struct PacketHandler {
    shared: Shared,
}

impl PacketHandler {
    /// A handler answering for `index`, with no upstream servers.
    pub fn new(index: Index) -> Self {
        let shared = Shared::new(DEFAULT_PORT, Vec::new(), MAX_IN_FLIGHT);
        shared.swap(index);
        PacketHandler { shared }
    }

    /// `Some(reply)` for a local answer, `None` when the packet is dropped
    /// or would be forwarded upstream.
    pub fn handle(
        &self,
        gateway: IpAddr,
        src: SocketAddr,
        packet: &[u8],
        udp: bool,
    ) -> Option<Vec<u8>> {
        let mut scratch = self.shared.scratch();
        match self.shared.prepare(&mut scratch, gateway, src, packet, udp) {
            server::Step::Reply => Some(scratch.out),
            server::Step::Forward(..) | server::Step::Drop => None,
        }
    }
}

/// The embedded DNS server of all networks on this host.
pub struct DnsServer {
    shared: Arc<Shared>,
    /// Listeners by gateway. The async mutex also serialises `update`s.
    listeners: Mutex<HashMap<IpAddr, Listener>>,
}

impl DnsServer {
    /// A server with no zones yet, forwarding unknown names to `upstreams`
    /// (use [`parse_upstream`] for addresses given without a port).
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self::with_port(upstreams, DEFAULT_PORT)
    }

    /// Like [`DnsServer::new`], listening on `port` instead of 53 (tests,
    /// benchmarks, running unprivileged).
    pub fn with_port(upstreams: Vec<SocketAddr>, port: u16) -> Self {
        Self {
            shared: Arc::new(Shared::new(port, upstreams, MAX_IN_FLIGHT)),
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// Install a new set of zones. Listeners (UDP+TCP on gateway:port) are
    /// opened for new gateways, closed for removed ones, and left untouched
    /// (no gap, open TCP connections kept) for unchanged ones; records of
    /// all zones are swapped at once. Must be called on a tokio runtime.
    ///
    /// Two zones with the same gateway are an error and change nothing. A
    /// listener that cannot be opened (port taken) does not stop the others:
    /// the records are installed, the other listeners opened and closed,
    /// and the error names the failed gateways; the next `update` retries
    /// them.
    pub async fn update(&self, zones: Vec<Zone>) -> anyhow::Result<()> {
        self.update_with(zones, &[]).await
    }

    /// [`DnsServer::update`] with the containers' own names and servers
    /// (`extra_hosts`, `dns`).
    pub async fn update_with(&self, zones: Vec<Zone>, clients: &[Client]) -> anyhow::Result<()> {
        let index = Index::build_with(&zones, clients)?;
        for name in index.skipped() {
            warn!(%name, "not a valid DNS name; no PTR record");
        }
        // Every gateway address (IPv4, and IPv6 on dual-stack networks)
        // gets its listeners.
        let mut wanted: Vec<(IpAddr, String)> = index
            .listeners()
            .map(|(gw, network)| (gw, network.to_string()))
            .collect();
        wanted.sort();
        let mut listeners = self.listeners.lock().await;
        // Records first: new listeners answer from their first packet, and
        // removed gateways stop answering before their sockets go.
        self.shared.swap(index);

        let removed: Vec<IpAddr> = listeners
            .keys()
            .filter(|gw| !wanted.iter().any(|(w, _)| w == *gw))
            .copied()
            .collect();
        for gateway in removed {
            if let Some(listener) = listeners.remove(&gateway) {
                listener.close().await;
                info!(%gateway, "dns listener closed");
            }
        }

        let mut failed = Vec::new();
        for (gateway, network) in wanted {
            if listeners.contains_key(&gateway) {
                continue;
            }
            let addr = SocketAddr::new(gateway, self.shared.port);
            match Listener::open(&self.shared, gateway).await {
                Ok(listener) => {
                    info!(%gateway, %network, port = self.shared.port, "dns listener opened");
                    listeners.insert(gateway, listener);
                }
                Err(err) => {
                    warn!(%gateway, %err, "cannot open dns listener");
                    failed.push(format!("{addr} ({err})"));
                }
            }
        }
        if !failed.is_empty() {
            bail!("cannot listen for DNS on {}", failed.join(", "));
        }
        Ok(())
    }

    /// Replace the forwarders; queries already being forwarded finish with
    /// the old list.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self
            .shared
            .upstreams
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(upstreams);
    }

    /// The addresses being listened on (UDP and TCP each).
    pub async fn listening(&self) -> Vec<SocketAddr> {
        let listeners = self.listeners.lock().await;
        let mut addrs: Vec<SocketAddr> = listeners
            .keys()
            .map(|gw| SocketAddr::from((*gw, self.shared.port)))
            .collect();
        addrs.sort();
        addrs
    }

    /// Close every listener, connection and forwarded query, and wait until
    /// the sockets are closed.
    pub async fn shutdown(self) {
        let listeners = std::mem::take(&mut *self.listeners.lock().await);
        for (_, listener) in listeners {
            listener.close().await;
        }
    }

    /// Counters since the server was created.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            answered: c.answered.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            cached: c.cached.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for DnsServer {
    /// Dropping without `shutdown` still stops the tasks (they would
    /// otherwise keep serving with nobody able to update them); the sockets
    /// close as soon as the runtime gets to the cancelled tasks.
    fn drop(&mut self) {
        for listener in self.listeners.get_mut().values() {
            listener.abort();
        }
    }
}

/// An upstream as written in resolv.conf or a config file: `1.1.1.1`,
/// `1.1.1.1:5353`, `2606:4700::1111`, `[2606:4700::1111]:53`; port 53 when
/// none is given.
pub fn parse_upstream(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("not an address or address:port: {text:?}"))?;
    Ok(SocketAddr::new(ip, DEFAULT_PORT))
}

/// The `nameserver` lines of a resolv.conf, port 53. The agent runs in the
/// host's namespace, so a loopback stub such as systemd-resolved's
/// 127.0.0.53 is a usable upstream here (unlike inside a container).
/// IPv6 link-local addresses with a zone (`fe80::1%eth0`) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next())?
        })
        .filter_map(|word| word.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        .collect()
}
