//! The decision for one question: a local answer or forwarding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::index::{Index, View};
use super::name::parse_reverse;

/// The record types the server answers itself; everything else is
/// [`QType::Other`] (NODATA for a member's name, forwarded otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Reverse lookup.
    Ptr,
    /// `ANY`: every record we hold for the name.
    Any,
    /// Any other type.
    Other,
}

impl QType {
    /// From the numeric type of the wire format (RFC 1035, 3596).
    pub fn from_code(code: u16) -> QType {
        match code {
            1 => QType::A,
            28 => QType::Aaaa,
            12 => QType::Ptr,
            255 => QType::Any,
            _ => QType::Other,
        }
    }
}

/// One question, its name in lookup form ([`super::lookup_key`]).
#[derive(Clone, Copy, Debug)]
pub struct Question<'a> {
    /// Lower-case labels joined by dots, no trailing dot.
    pub name: &'a str,
    /// The asked type.
    pub qtype: QType,
    /// Whether the class is IN (members exist only there).
    pub class_in: bool,
}

/// The response code of a local answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (answers may still be empty: NODATA).
    NoError,
    /// The name does not exist.
    NxDomain,
}

/// The data of one answer record; its owner is the question's name and its
/// TTL 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'i> {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An absolute name (`web.`).
    Ptr(&'i str),
}

/// What to do with one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<'i> {
    /// Answer here (authoritative, TTL 0).
    Local {
        /// NOERROR or NXDOMAIN.
        rcode: Rcode,
        /// The records, in order.
        records: Vec<Data<'i>>,
    },
    /// Not ours: ask the upstream servers.
    Forward,
}

impl Index {
    /// The answer to `q` for an asker who sees `view`.
    pub fn answer<'i>(&'i self, view: &View<'_>, q: &Question<'_>) -> Answer<'i> {
        // Members only exist in class IN; anything else (CHAOS
        // version.bind...) is the upstream's business.
        if !q.class_in {
            return Answer::Forward;
        }
        let a = matches!(q.qtype, QType::A | QType::Any);
        let aaaa = matches!(q.qtype, QType::Aaaa | QType::Any);

        // The asker's own `extra_hosts` come first, like the hosts file.
        if let Some(ips) = view.own.and_then(|o| o.hosts.get(q.name)) {
            let records = ips
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) if a => Some(Data::A(*v4)),
                    IpAddr::V6(v6) if aaaa => Some(Data::Aaaa(*v6)),
                    _ => None,
                })
                .collect();
            return Answer::Local {
                rcode: Rcode::NoError,
                records,
            };
        }

        // The first of the asker's networks that knows the name answers.
        for n in view.nets() {
            let net = &self.nets[n];
            let Some(idxs) = net.names.get(q.name) else {
                continue;
            };
            let mut records = Vec::new();
            if a {
                for &i in idxs.iter() {
                    push_unique(&mut records, Data::A(net.addrs[i as usize].0));
                }
            }
            if aaaa {
                for &i in idxs.iter() {
                    if let Some(v6) = net.addrs[i as usize].1 {
                        push_unique(&mut records, Data::Aaaa(v6));
                    }
                }
            }
            return Answer::Local {
                rcode: Rcode::NoError,
                records,
            };
        }

        if let Some(addr) = parse_reverse(q.name) {
            for n in view.nets() {
                let net = &self.nets[n];
                let targets = match addr {
                    IpAddr::V4(a) => net.ptr4.get(&a),
                    IpAddr::V6(a) => net.ptr6.get(&a),
                };
                if let Some(targets) = targets {
                    let records = if matches!(q.qtype, QType::Ptr | QType::Any) {
                        targets.iter().map(|t| Data::Ptr(t)).collect()
                    } else {
                        Vec::new()
                    };
                    return Answer::Local {
                        rcode: Rcode::NoError,
                        records,
                    };
                }
            }
            let ours = match addr {
                IpAddr::V4(a) => view.nets().any(|n| self.nets[n].subnet.contains(a)),
                IpAddr::V6(a) => view
                    .nets()
                    .any(|n| self.nets[n].subnet6.is_some_and(|s| s.contains(a))),
            };
            return if ours { nxdomain() } else { Answer::Forward };
        }

        if !q.name.is_empty() && !q.name.contains('.') {
            return nxdomain();
        }
        Answer::Forward
    }
}

fn nxdomain<'i>() -> Answer<'i> {
    Answer::Local {
        rcode: Rcode::NxDomain,
        records: Vec::new(),
    }
}

fn push_unique<'i>(records: &mut Vec<Data<'i>>, d: Data<'i>) {
    if !records.contains(&d) {
        records.push(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::dns::testing::{ip, member, zone};
    use crate::core::dns::{Client, IndexError, lookup_key};

    /// Asks `name` (dotted, as typed) of the listener on `gw` from `src`.
    fn ask<'i>(
        index: &'i Index,
        gw: &str,
        src: &str,
        name: &str,
        qtype: QType,
    ) -> Option<Answer<'i>> {
        let src: IpAddr = src.parse().expect("test address");
        let view = index.view(gw.parse().expect("test address"), src)?;
        let mut key = String::new();
        lookup_key(
            name.trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .map(str::as_bytes),
            &mut key,
        );
        Some(index.answer(
            &view,
            &Question {
                name: &key,
                qtype,
                class_in: true,
            },
        ))
    }

    fn local(records: Vec<Data<'_>>) -> Answer<'_> {
        Answer::Local {
            rcode: Rcode::NoError,
            records,
        }
    }

    fn green() -> Index {
        Index::build(&[zone(
            "green",
            "10.1.0.1",
            "10.1.0.0/24",
            vec![
                member("web", &["frontend"], "10.1.0.10", Some("fd00::10")),
                member("db", &["store"], "10.1.0.20", None),
                member("replica1", &["svc"], "10.1.0.31", None),
                member("replica2", &["svc"], "10.1.0.32", None),
            ],
        )])
        .expect("index")
    }

    #[test]
    fn a_containers_extra_hosts_and_servers_are_its_own() {
        let zones = [zone(
            "n",
            "10.0.0.1",
            "10.0.0.0/24",
            vec![
                member("web", &[], "10.0.0.2", None),
                member("db", &[], "10.0.0.3", None),
            ],
        )];
        let server: std::net::SocketAddr = "192.0.2.53:53".parse().expect("addr");
        let clients = [Client {
            name: "web".into(),
            hosts: vec![("Legacy.Example".into(), "192.0.2.7".parse().expect("ip"))],
            servers: vec![server],
        }];
        let index = Index::build_with(&zones, &clients).expect("index");
        let a = |src, name| ask(&index, "10.0.0.1", src, name, QType::A);
        assert_eq!(
            a("10.0.0.2", "legacy.example."),
            Some(Answer::Local {
                rcode: Rcode::NoError,
                records: vec![Data::A(ip("192.0.2.7"))],
            })
        );
        // Only for web: db asks the host's upstreams for it.
        assert_eq!(a("10.0.0.3", "legacy.example"), Some(Answer::Forward));
        let view = |src: &str| {
            index
                .view(ip("10.0.0.1").into(), src.parse().expect("ip"))
                .expect("view")
        };
        assert_eq!(
            index.servers(&view("10.0.0.2")).as_deref(),
            Some(&[server][..])
        );
        assert_eq!(index.servers(&view("10.0.0.3")), None);
        // Members still answer for web.
        assert_eq!(
            a("10.0.0.2", "db"),
            Some(Answer::Local {
                rcode: Rcode::NoError,
                records: vec![Data::A(ip("10.0.0.3"))],
            })
        );
    }

    #[test]
    fn names_aliases_and_network_names() {
        let idx = green();
        for name in [
            "web",
            "WEB.",
            "web.green",
            "Web.Green.",
            "frontend",
            "frontend.green.",
        ] {
            assert_eq!(
                ask(&idx, "10.1.0.1", "10.1.0.20", name, QType::A),
                Some(local(vec![Data::A(ip("10.1.0.10"))])),
                "{name}"
            );
        }
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.20", "web", QType::Aaaa),
            Some(local(vec![Data::Aaaa("fd00::10".parse().expect("v6"))]))
        );
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.20", "web", QType::Any),
            Some(local(vec![
                Data::A(ip("10.1.0.10")),
                Data::Aaaa("fd00::10".parse().expect("v6"))
            ]))
        );
        // The name exists without IPv6, or the type is not ours: NODATA.
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.20", "store", QType::Aaaa),
            Some(local(vec![]))
        );
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.20", "web", QType::Other),
            Some(local(vec![]))
        );
        // A shared alias answers with every member.
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.20", "svc", QType::A),
            Some(local(vec![
                Data::A(ip("10.1.0.31")),
                Data::A(ip("10.1.0.32"))
            ]))
        );
    }

    #[test]
    fn reverse_lookups() {
        let idx = green();
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.20",
                "10.0.1.10.in-addr.arpa",
                QType::Ptr
            ),
            Some(local(vec![Data::Ptr("web."), Data::Ptr("frontend.")]))
        );
        let v6: Ipv6Addr = "fd00::10".parse().expect("v6");
        let nibbles: Vec<String> = format!("{:032x}", u128::from(v6))
            .chars()
            .rev()
            .map(String::from)
            .collect();
        let v6_name = format!("{}.ip6.arpa", nibbles.join("."));
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.20", &v6_name, QType::Ptr),
            Some(local(vec![Data::Ptr("web."), Data::Ptr("frontend.")]))
        );
        // A member's reverse name asked for A: NODATA.
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.20",
                "10.0.1.10.in-addr.arpa",
                QType::A
            ),
            Some(local(vec![]))
        );
        // In the subnet but nobody's: ours to deny. Outside: upstream's.
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.20",
                "99.0.1.10.in-addr.arpa",
                QType::Ptr
            ),
            Some(Answer::Local {
                rcode: Rcode::NxDomain,
                records: vec![]
            })
        );
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.20",
                "8.8.8.8.in-addr.arpa",
                QType::Ptr
            ),
            Some(Answer::Forward)
        );
    }

    #[test]
    fn what_is_forwarded_and_what_is_denied_locally() {
        let idx = green();
        let nx = Some(Answer::Local {
            rcode: Rcode::NxDomain,
            records: vec![],
        });
        // Unknown bare names never leave the host.
        assert_eq!(ask(&idx, "10.1.0.1", "10.1.0.20", "nosuch", QType::A), nx);
        // x.<network> for a non-member, and real domains, go upstream.
        for name in ["nobody.green", "example.com", "."] {
            assert_eq!(
                ask(&idx, "10.1.0.1", "10.1.0.20", name, QType::A),
                Some(Answer::Forward),
                "{name}"
            );
        }
        // Other classes are the upstream's, even for member names.
        let view = idx.view(
            "10.1.0.1".parse().expect("ip"),
            "10.1.0.20".parse().expect("ip"),
        );
        let q = Question {
            name: "web",
            qtype: QType::A,
            class_in: false,
        };
        assert_eq!(idx.answer(&view.expect("view"), &q), Answer::Forward);
    }

    /// frontend: web, api; backend: api, db; other: lone. `api` is on
    /// frontend and backend.
    fn two_networks() -> Index {
        Index::build(&[
            zone(
                "frontend",
                "10.1.0.1",
                "10.1.0.0/24",
                vec![
                    member("web", &[], "10.1.0.10", None),
                    member("api", &["svc"], "10.1.0.11", None),
                ],
            ),
            zone(
                "backend",
                "10.2.0.1",
                "10.2.0.0/24",
                vec![
                    member("api", &["svc"], "10.2.0.11", None),
                    member("db", &[], "10.2.0.20", None),
                ],
            ),
            zone(
                "other",
                "10.3.0.1",
                "10.3.0.0/24",
                vec![member("lone", &[], "10.3.0.30", None)],
            ),
        ])
        .expect("index")
    }

    #[test]
    fn a_container_sees_every_network_it_is_on_and_only_those() {
        let idx = two_networks();
        let nx = Some(Answer::Local {
            rcode: Rcode::NxDomain,
            records: vec![],
        });
        // api asks frontend's gateway (its first network) from its
        // frontend address: backend's members answer too.
        for name in ["db", "db.backend"] {
            assert_eq!(
                ask(&idx, "10.1.0.1", "10.1.0.11", name, QType::A),
                Some(local(vec![Data::A(ip("10.2.0.20"))])),
                "{name}"
            );
        }
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.11",
                "20.0.2.10.in-addr.arpa",
                QType::Ptr
            ),
            Some(local(vec![Data::Ptr("db.")]))
        );
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.11", "web", QType::A),
            Some(local(vec![Data::A(ip("10.1.0.10"))]))
        );
        // Through backend's gateway, from its backend address: same view.
        assert_eq!(
            ask(&idx, "10.2.0.1", "10.2.0.11", "web", QType::A),
            Some(local(vec![Data::A(ip("10.1.0.10"))]))
        );
        // A name on both networks: the asked listener's network wins.
        assert_eq!(
            ask(&idx, "10.1.0.1", "10.1.0.11", "svc", QType::A),
            Some(local(vec![Data::A(ip("10.1.0.11"))]))
        );
        assert_eq!(
            ask(&idx, "10.2.0.1", "10.2.0.11", "svc", QType::A),
            Some(local(vec![Data::A(ip("10.2.0.11"))]))
        );
        // A network api is not on stays invisible, in every form.
        assert_eq!(ask(&idx, "10.1.0.1", "10.1.0.11", "lone", QType::A), nx);
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.11",
                "30.0.3.10.in-addr.arpa",
                QType::Ptr
            ),
            Some(Answer::Forward)
        );
        // web (frontend only) does not see db; db does not see web.
        assert_eq!(ask(&idx, "10.1.0.1", "10.1.0.10", "db", QType::A), nx);
        assert_eq!(ask(&idx, "10.2.0.1", "10.2.0.20", "web", QType::A), nx);
        // An unknown source inside the subnet sees that network only.
        assert_eq!(ask(&idx, "10.2.0.1", "10.2.0.99", "web", QType::A), nx);
        assert_eq!(
            ask(&idx, "10.2.0.1", "10.2.0.99", "db", QType::A),
            Some(local(vec![Data::A(ip("10.2.0.20"))]))
        );
    }

    #[test]
    fn strangers_get_no_view() {
        let idx = two_networks();
        let view = |gw: &str, src: &str| {
            idx.view(gw.parse().expect("ip"), src.parse().expect("ip"))
                .is_some()
        };
        // api's backend address asking frontend's gateway: outside the
        // subnet, whoever it is.
        assert!(!view("10.1.0.1", "10.2.0.11"));
        assert!(!view("10.1.0.1", "127.0.0.1"));
        assert!(!view("10.9.0.1", "10.9.0.5"));
        // An IPv4-mapped source is its IPv4 address.
        assert!(view("10.1.0.1", "::ffff:10.1.0.11"));
        // No IPv6 on these networks: no IPv6 source is inside.
        assert!(!view("10.1.0.1", "fd00::11"));
        let serves = |gw: &str| idx.serves(gw.parse().expect("ip"));
        assert!(serves("10.2.0.1") && !serves("10.2.0.2"));
        let mut listeners: Vec<_> = idx.listeners().collect();
        listeners.sort();
        assert_eq!(
            listeners,
            [
                ("10.1.0.1".parse().expect("ip"), "frontend"),
                ("10.2.0.1".parse().expect("ip"), "backend"),
                ("10.3.0.1".parse().expect("ip"), "other"),
            ]
        );
    }

    #[test]
    fn dual_stack_networks_answer_on_their_ipv6_gateway() {
        let mut z = zone(
            "v6net",
            "10.6.0.1",
            "10.6.0.0/24",
            vec![
                member("web", &[], "10.6.0.10", Some("fd00:6::10")),
                member("db", &[], "10.6.0.20", Some("fd00:6::20")),
            ],
        );
        z.gateway6 = Some("fd00:6::1".parse().expect("v6"));
        z.subnet6 = Some("fd00:6::/64".parse().expect("v6 subnet"));
        let idx = Index::build(&[z]).expect("index");
        let listeners: Vec<IpAddr> = idx.listeners().map(|(gw, _)| gw).collect();
        assert_eq!(listeners.len(), 2);
        assert!(idx.serves("fd00:6::1".parse().expect("v6")));
        // web asks over IPv6 from its IPv6 address.
        let v6 = "fd00:6::20".parse::<Ipv6Addr>().expect("v6");
        assert_eq!(
            ask(&idx, "fd00:6::1", "fd00:6::10", "db", QType::Aaaa),
            Some(local(vec![Data::Aaaa(v6)]))
        );
        assert_eq!(
            ask(&idx, "fd00:6::1", "fd00:6::10", "db", QType::A),
            Some(local(vec![Data::A(ip("10.6.0.20"))]))
        );
        let nibbles = |a: Ipv6Addr| -> String {
            let n: Vec<String> = format!("{:032x}", u128::from(a))
                .chars()
                .rev()
                .map(String::from)
                .collect();
            format!("{}.ip6.arpa", n.join("."))
        };
        assert_eq!(
            ask(&idx, "fd00:6::1", "fd00:6::10", &nibbles(v6), QType::Ptr),
            Some(local(vec![Data::Ptr("db.")]))
        );
        // In subnet6 but nobody's: ours to deny; outside: upstream's.
        let nobody = "fd00:6::99".parse().expect("v6");
        assert_eq!(
            ask(
                &idx,
                "fd00:6::1",
                "fd00:6::10",
                &nibbles(nobody),
                QType::Ptr
            ),
            Some(Answer::Local {
                rcode: Rcode::NxDomain,
                records: vec![]
            })
        );
        let outside = "2001:db8::1".parse().expect("v6");
        assert_eq!(
            ask(
                &idx,
                "fd00:6::1",
                "fd00:6::10",
                &nibbles(outside),
                QType::Ptr
            ),
            Some(Answer::Forward)
        );
        // IPv6 strangers get nothing; either listener of the network takes
        // the network's sources.
        assert!(ask(&idx, "fd00:6::1", "fd00:7::10", "db", QType::A).is_none());
        assert!(ask(&idx, "10.6.0.1", "fd00:6::10", "db", QType::A).is_some());
    }

    #[test]
    fn duplicate_gateways_and_bad_ptr_names() {
        let err = Index::build(&[
            zone("a", "10.1.0.1", "10.1.0.0/24", vec![]),
            zone("b", "10.1.0.1", "10.1.0.0/24", vec![]),
        ])
        .expect_err("same gateway");
        assert_eq!(
            err,
            IndexError::DuplicateGateway(IpAddr::V4(ip("10.1.0.1")))
        );
        let idx = Index::build(&[zone(
            "a",
            "10.1.0.1",
            "10.1.0.0/24",
            vec![member("web", &["bad alias"], "10.1.0.10", None)],
        )])
        .expect("index");
        assert_eq!(idx.skipped(), ["bad alias".to_string()]);
        assert_eq!(
            ask(
                &idx,
                "10.1.0.1",
                "10.1.0.10",
                "10.0.1.10.in-addr.arpa",
                QType::Ptr
            ),
            Some(local(vec![Data::Ptr("web.")]))
        );
    }
}
