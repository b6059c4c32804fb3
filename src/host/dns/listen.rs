//! Sockets: one UDP and one TCP listener per gateway address, bound to
//! that one address only (never an open resolver on `0.0.0.0`), with
//! `IP_FREEBIND` so that a listener can exist before the bridge holds its
//! address, or while the bridge is being recreated.
//!
//! Local answers are computed inline in the receive loop (no task per
//! packet); queries that must go upstream take a permit and run in a task
//! owned by the listener. TCP serves length-prefixed messages, several per
//! connection, closes a connection idle for [`TCP_IDLE_TIMEOUT`] and
//! accepts at most [`MAX_TCP_CONNECTIONS`] per listener.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
    sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use super::server::{Shared, Step};
use super::{MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT};

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

impl Listener {
    pub(super) async fn open(shared: &Arc<Shared>, gateway: Ipv4Addr) -> io::Result<Self> {
        let addr = SocketAddrV4::new(gateway, shared.port);
        let udp = bind_udp(addr)?;
        let tcp = bind_tcp(addr)?;
        Ok(Self {
            udp: tokio::spawn(udp_loop(shared.clone(), gateway, Arc::new(udp))),
            tcp: tokio::spawn(tcp_loop(shared.clone(), gateway, tcp)),
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
/// being recreated), and starts receiving as soon as one does.
fn bound_socket(addr: SocketAddrV4, ty: SockType) -> io::Result<std::os::fd::OwnedFd> {
    let fd = socket(
        AddressFamily::Inet,
        ty,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if ty == SockType::Stream {
        // Rebinding right after a close must not fail because of old
        // connections in TIME_WAIT. (Not set on UDP, where it would let a
        // second server silently share the port.)
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr))?;
    Ok(fd)
}

pub(super) fn bind_udp(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let fd = bound_socket(addr, SockType::Datagram)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

pub(super) fn bind_tcp(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let fd = bound_socket(addr, SockType::Stream)?;
    listen(&fd, Backlog::new(128)?)?;
    TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// Pause after an error from accept/recv that is not about one packet
/// (EMFILE, ENOBUFS), so the loop does not spin on it.
const ERROR_BACKOFF: Duration = Duration::from_millis(20);

async fn udp_loop(shared: Arc<Shared>, gateway: Ipv4Addr, sock: Arc<UdpSocket>) {
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
                match shared.prepare(gateway, src, &buf[..n], true) {
                    Step::Reply(reply) => {
                        if let Err(err) = sock.send_to(&reply, src).await {
                            debug!(%src, %err, "udp send failed");
                        }
                    }
                    Step::Forward(req) => {
                        let Some(permit) = take_permit(&shared, src) else { continue };
                        let packet = buf[..n].to_vec();
                        let (shared, sock) = (shared.clone(), sock.clone());
                        forwards.spawn(async move {
                            let _permit = permit;
                            if let Some(reply) = shared.forward(&req, &packet, true).await
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

fn take_permit(shared: &Shared, src: SocketAddr) -> Option<OwnedSemaphorePermit> {
    match shared.in_flight.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => {
            shared.drop_packet("too many queries in flight", src);
            None
        }
    }
}

async fn tcp_loop(shared: Arc<Shared>, gateway: Ipv4Addr, listener: TcpListener) {
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
                conns.spawn(tcp_conn(shared.clone(), gateway, stream, src));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn tcp_conn(shared: Arc<Shared>, gateway: Ipv4Addr, mut stream: TcpStream, src: SocketAddr) {
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
        let reply = match shared.prepare(gateway, src, &packet, false) {
            Step::Reply(reply) => reply,
            Step::Forward(req) => {
                let Some(_permit) = take_permit(&shared, src) else {
                    continue;
                };
                match shared.forward(&req, &packet, false).await {
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
