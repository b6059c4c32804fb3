//! Sockets: one UDP and one TCP listener per gateway address, bound to
//! that one address only (never an open resolver on `0.0.0.0`), with
//! `IP_FREEBIND` so that a listener can exist before the bridge holds its
//! address, or while the bridge is being recreated.
//!
//! Local answers are computed inline in the receive loop (no task per
//! packet), into buffers the loop reuses; queries that must go upstream
//! take two permits (the network's and the server's) and run in a task
//! owned by the listener. TCP serves length-prefixed messages, several per
//! connection, closes a connection idle for [`TCP_IDLE_TIMEOUT`] and
//! accepts at most [`MAX_TCP_CONNECTIONS`] per listener.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, bind, listen, setsockopt,
    socket, sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use super::server::{Shared, Step};
use super::{MAX_IN_FLIGHT_PER_NETWORK, MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT};

/// Largest query we read over UDP. Queries are a few dozen bytes; a longer
/// datagram is cut to this by the kernel and then fails to parse.
const UDP_QUERY_BUF: usize = 4096;

/// The UDP and TCP tasks serving one gateway address. Dropping the handles
/// does not stop them; [`Listener::abort`] does, and with them every
/// connection and forwarded query they own (those live in `JoinSet`s inside
/// the tasks).
pub(super) struct Listener {
    udp: JoinHandle<()>,
    tcp: JoinHandle<()>,
}

/// What one listener's tasks share: the server, its address, and the
/// network's own share of forwarded queries.
struct Net {
    shared: Arc<Shared>,
    gateway: IpAddr,
    /// Forwarded queries in flight from this network: at most
    /// [`MAX_IN_FLIGHT_PER_NETWORK`], so one busy network cannot take all
    /// of the server's [`super::MAX_IN_FLIGHT`].
    in_flight: Arc<Semaphore>,
}

/// Both permits of a forwarded query: the network's and the server's.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl Net {
    fn take_permits(&self, src: SocketAddr) -> Option<Permits> {
        let net = self.in_flight.clone().try_acquire_owned().ok();
        let all = net
            .as_ref()
            .and_then(|_| self.shared.in_flight.clone().try_acquire_owned().ok());
        match (net, all) {
            (Some(net), Some(all)) => Some((net, all)),
            _ => {
                self.shared.drop_packet("too many queries in flight", src);
                None
            }
        }
    }
}

impl Listener {
    pub(super) async fn open(shared: &Arc<Shared>, gateway: IpAddr) -> io::Result<Self> {
        let addr = SocketAddr::new(gateway, shared.port);
        let udp = bind_udp(addr)?;
        let tcp = bind_tcp(addr)?;
        let net = Arc::new(Net {
            shared: shared.clone(),
            gateway,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_NETWORK)),
        });
        Ok(Self {
            udp: tokio::spawn(udp_loop(net.clone(), Arc::new(udp))),
            tcp: tokio::spawn(tcp_loop(net, tcp)),
        })
    }

    pub(super) fn abort(&self) {
        self.udp.abort();
        self.tcp.abort();
    }

    /// Stop both tasks and wait until their sockets are closed, so the
    /// address can be bound again as soon as this returns.
    pub(super) async fn close(self) {
        self.abort();
        let _ = self.udp.await;
        let _ = self.tcp.await;
    }
}

/// A socket of `ty` bound to `addr` with IP_FREEBIND: the bind succeeds
/// even when no interface holds the address yet (bridge not created, or
/// being recreated, or an IPv6 address still in duplicate address
/// detection), and starts receiving as soon as one does. IPv6 sockets are
/// IPv6 only: the IPv4 gateway has its own.
fn bound_socket(addr: SocketAddr, ty: SockType) -> io::Result<std::os::fd::OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // IP_FREEBIND applies to IPv6 sockets too (Linux reads SOL_IP options
    // on them).
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if ty == SockType::Stream {
        // Rebinding right after a close must not fail because of old
        // connections in TIME_WAIT. (Not set on UDP, where it would let a
        // second server silently share the port.)
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    match addr {
        SocketAddr::V4(v4) => bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?,
        SocketAddr::V6(v6) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn6::from(v6))?;
        }
    }
    Ok(fd)
}

pub(super) fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = bound_socket(addr, SockType::Datagram)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

pub(super) fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let fd = bound_socket(addr, SockType::Stream)?;
    listen(&fd, Backlog::new(128)?)?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// Pause after an error from accept/recv that is not about one packet
/// (EMFILE, ENOBUFS), so the loop does not spin on it.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

async fn udp_loop(net: Arc<Net>, sock: Arc<UdpSocket>) {
    let shared = &net.shared;
    let gateway = net.gateway;
    let mut scratch = shared.scratch();
    let mut forwards = JoinSet::new();
    let mut buf = vec![0u8; UDP_QUERY_BUF];
    loop {
        tokio::select! {
            received = sock.recv_from(&mut buf) => {
                let (n, src) = match received {
                    Ok(r) => r,
                    Err(err) => {
                        debug!(%gateway, %err, "udp receive failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                match shared.prepare(&mut scratch, gateway, src, &buf[..n], true) {
                    Step::Reply => {
                        if let Err(err) = sock.send_to(&scratch.out, src).await {
                            debug!(%src, %err, "udp send failed");
                        }
                    }
                    Step::Forward(req, own) => {
                        let Some(permits) = net.take_permits(src) else { continue };
                        let packet = buf[..n].to_vec();
                        let (shared, sock) = (shared.clone(), sock.clone());
                        forwards.spawn(async move {
                            let _permits = permits;
                            if let Some(reply) = shared.forward(&req, &packet, true, own.as_deref()).await
                                && let Err(err) = sock.send_to(&reply, src).await
                            {
                                debug!(%src, %err, "udp send failed");
                            }
                        });
                    }
                    Step::Drop => {}
                }
            }
            // Reap finished forwards so the set does not grow.
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

async fn tcp_loop(net: Arc<Net>, listener: TcpListener) {
    let (shared, gateway) = (&net.shared, net.gateway);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, src) = match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        debug!(%gateway, %err, "tcp accept failed");
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                };
                // Strangers must not hold one of the few connection slots
                // for the idle timeout: refuse them before reading anything.
                if !shared.allowed(gateway, src) {
                    shared.drop_packet("source outside the network", src);
                    continue;
                }
                if conns.len() >= MAX_TCP_CONNECTIONS {
                    shared.drop_packet("too many tcp connections", src);
                    continue;
                }
                conns.spawn(tcp_conn(net.clone(), stream, src));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn tcp_conn(net: Arc<Net>, mut stream: TcpStream, src: SocketAddr) {
    let (shared, gateway) = (&net.shared, net.gateway);
    let mut scratch = shared.scratch();
    loop {
        // The idle timeout covers the whole message, so a client trickling
        // bytes cannot hold the connection either.
        let read = async {
            let len = stream.read_u16().await?;
            let mut packet = vec![0u8; usize::from(len)];
            stream.read_exact(&mut packet).await?;
            io::Result::Ok(packet)
        };
        let packet = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => return,
        };
        let reply = match shared.prepare(&mut scratch, gateway, src, &packet, false) {
            Step::Reply => std::mem::take(&mut scratch.out),
            Step::Forward(req, own) => {
                let Some(_permits) = net.take_permits(src) else {
                    continue;
                };
                match shared.forward(&req, &packet, false, own.as_deref()).await {
                    Some(reply) => reply,
                    None => continue,
                }
            }
            // A stranger gets no more reads; junk on a good connection is
            // skipped like a junk datagram.
            Step::Drop if shared.allowed(gateway, src) => continue,
            Step::Drop => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}
