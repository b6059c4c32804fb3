//! Host ports already in use by a process on the host.
//!
//! A DNAT rule would silently shadow a local listener (or the listener would
//! shadow the mapping for local clients), so a port that something on the
//! host listens on is a conflict. The probe binds the port: only the
//! kernel knows every listener, including ones in other processes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

use crate::core::firewall::Proto;
use crate::core::model::State;
use crate::core::plan::Failure;

/// Messages for every newly published port whose host port is taken.
pub fn conflicts(desired: &State, observed: &State) -> Vec<Failure> {
    let Some(fw) = desired.firewall.as_ref().map(|f| &f.fw) else {
        return Vec::new();
    };
    let live = observed.firewall.as_ref().map(|f| &f.fw.ports);
    let mut out = Vec::new();
    for (key, p) in fw.ports.iter() {
        // Ports netloom already publishes are its own, not a listener's.
        if live.is_some_and(|l| l.get(key) == Some(p)) {
            continue;
        }
        // Every family the port is published on; "every address" is
        // 0.0.0.0 and, for a container with IPv6, [::].
        let ips: Vec<IpAddr> = match p.host_ip {
            Some(ip) => vec![ip],
            None => std::iter::once(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                .chain(p.container_ip6.map(|_| IpAddr::V6(Ipv6Addr::UNSPECIFIED)))
                .collect(),
        };
        'probe: for ip in ips {
            for port in p.host_port..=p.host_port.saturating_add(p.count - 1) {
                if in_use(ip, port, p.proto) {
                    out.push(Failure::new(
                        format!("container.{}", p.container),
                        format!(
                            "port.{key}: host port {}/{} is already in use by a process on the host",
                            SocketAddr::new(ip, port),
                            p.proto
                        ),
                    ));
                    break 'probe;
                }
            }
        }
    }
    out
}

/// Whether binding `ip:port` fails because something holds it.
pub fn in_use(ip: IpAddr, port: u16, proto: Proto) -> bool {
    let addr = SocketAddr::new(ip, port);
    let err = match proto {
        Proto::Tcp => TcpListener::bind(addr).err(),
        Proto::Udp => UdpSocket::bind(addr).err(),
        // No portable SCTP bind in std; SCTP listeners are rare enough on
        // container hosts that netloom does not probe them.
        Proto::Sctp => None,
    };
    err.is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_port_is_in_use() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(in_use(Ipv4Addr::LOCALHOST.into(), port, Proto::Tcp));
        drop(l);
        assert!(!in_use(Ipv4Addr::LOCALHOST.into(), port, Proto::Tcp));
    }
}
