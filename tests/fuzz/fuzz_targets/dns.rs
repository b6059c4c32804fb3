//! Any bytes as a DNS packet to a listener, from a member, from a stranger:
//! an answer or a drop, never a panic; nobody outside the network gets a
//! reply.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use netloom::core::dns::{Index, Member, Zone};
use netloom::host::dns::PacketHandler;

fn handler() -> &'static PacketHandler {
    static HANDLER: OnceLock<PacketHandler> = OnceLock::new();
    HANDLER
        .get_or_init(|| {
            let member = |name: &str, last: u8, aliases: &[&str]| Member {
                name: name.into(),
                aliases: aliases.iter().map(|a| a.to_string()).collect(),
                ipv4: Ipv4Addr::new(10, 7, 0, last),
                ipv6: Some(Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, u16::from(last))),
            };
            let zone = Zone {
                network: "net".into(),
                gateway: Ipv4Addr::new(10, 7, 0, 1),
                subnet: "10.7.0.0/24".parse().expect("constant subnet"),
                gateway6: Some(Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, 1)),
                subnet6: Some("fd00:7::/64".parse().expect("constant subnet")),
                members: vec![
                    member("web", 2, &["www", "app.example"]),
                    member("db", 3, &[]),
                ],
            };
            PacketHandler::new(Index::build(&[zone]).expect("a valid zone"))
        })
}

fuzz_target!(|data: &[u8]| {
    let gateway = std::net::IpAddr::V4(Ipv4Addr::new(10, 7, 0, 1));
    let member = SocketAddr::from((Ipv4Addr::new(10, 7, 0, 2), 40000));
    let stranger = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 9), 40000));
    for udp in [true, false] {
        if let Some(reply) =
            handler().handle(gateway, member, data, udp)
        {
            if udp {
                assert!(reply.len() <= 65535);
            }
        }
        assert!(
            handler().handle(gateway, stranger, data, udp).is_none(),
            "a stranger got a reply"
        );
    }
});
