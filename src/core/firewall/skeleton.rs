//! The skeleton: chains and rules, which never depend on the
//! configuration, as nft text and as nft's JSON listing.

use super::*;

pub(super) struct ChainDef {
    pub(super) family: Family,
    pub(super) name: &'static str,
    pub(super) kind: &'static str,
    pub(super) hook: &'static str,
    pub(super) prio: i32,
    /// How the priority is written in the rendered text.
    pub(super) prio_text: &'static str,
}

pub(super) const CHAINS: [ChainDef; 10] = [
    ChainDef {
        family: Family::Inet,
        name: "prerouting_filter",
        kind: "filter",
        hook: "prerouting",
        prio: -110,
        prio_text: "dstnat - 10",
    },
    ChainDef {
        family: Family::Inet,
        name: "prerouting_nat",
        kind: "nat",
        hook: "prerouting",
        prio: -100,
        prio_text: "dstnat",
    },
    ChainDef {
        family: Family::Inet,
        name: "prerouting_mark",
        kind: "filter",
        hook: "prerouting",
        prio: -90,
        prio_text: "dstnat + 10",
    },
    ChainDef {
        family: Family::Inet,
        name: "output_filter",
        kind: "filter",
        hook: "output",
        prio: -110,
        prio_text: "-110",
    },
    ChainDef {
        family: Family::Inet,
        name: "output_nat",
        kind: "nat",
        hook: "output",
        prio: -100,
        prio_text: "-100",
    },
    ChainDef {
        family: Family::Inet,
        name: "forward_filter",
        kind: "filter",
        hook: "forward",
        prio: 0,
        prio_text: "filter",
    },
    ChainDef {
        family: Family::Inet,
        name: "postrouting_nat",
        kind: "nat",
        hook: "postrouting",
        prio: 100,
        prio_text: "srcnat",
    },
    ChainDef {
        family: Family::Bridge,
        name: "forward",
        kind: "filter",
        hook: "forward",
        prio: -200,
        prio_text: "filter",
    },
    ChainDef {
        family: Family::Bridge,
        name: "prerouting",
        kind: "filter",
        hook: "prerouting",
        prio: -200,
        prio_text: "filter",
    },
    // Postrouting sees every frame a port sends: bridged ones and those
    // the host itself sends through the bridge (output alone would miss
    // the first, forward the second).
    ChainDef {
        family: Family::Bridge,
        name: "postrouting",
        kind: "filter",
        hook: "postrouting",
        prio: -200,
        prio_text: "filter",
    },
];

impl ChainDef {
    pub(super) fn expected_json(&self) -> Value {
        json!({
            "family": self.family.name(),
            "table": TABLE,
            "name": self.name,
            "type": self.kind,
            "hook": self.hook,
            "prio": self.prio,
            "policy": "accept",
        })
    }
}

pub(super) struct RuleDef {
    pub(super) family: Family,
    pub(super) chain: &'static str,
    pub(super) text: &'static str,
    pub(super) comment: &'static str,
    /// The rule's `expr` as nft 1.0.6 lists it in JSON.
    pub(super) expr: Value,
}

pub(super) fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}
pub(super) fn payload(proto: &str, field: &str) -> Value {
    json!({"payload": {"protocol": proto, "field": field}})
}
pub(super) fn ct(key: &str) -> Value {
    json!({"ct": {"key": key}})
}
pub(super) fn cmp(op: &str, left: Value, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}
pub(super) fn fib_local() -> Value {
    cmp(
        "==",
        json!({"fib": {"result": "type", "flags": ["daddr"]}}),
        json!("local"),
    )
}
pub(super) fn loopback_net() -> Value {
    json!({"prefix": {"addr": "127.0.0.0", "len": 8}})
}
pub(super) fn verdict(v: &str) -> Value {
    json!({ v: null })
}
/// `meta nfproto ipv4|ipv6`: the "any address" maps are keyed by port
/// only, so their rules must say which family they serve.
pub(super) fn nfproto(family: &str) -> Value {
    cmp("==", meta("nfproto"), json!(family))
}
pub(super) fn key_hostip(l3: &str) -> Value {
    json!({"concat": [payload(l3, "daddr"), meta("l4proto"), payload("th", "dport")]})
}
pub(super) fn key_any() -> Value {
    json!({"concat": [meta("l4proto"), payload("th", "dport")]})
}
pub(super) fn dnat_map(family: &str, key: Value, map: &str) -> Value {
    json!({"dnat": {"family": family, "addr": {"map": {"key": key, "data": format!("@{map}")}}}})
}
pub(super) fn count_hostip(l3: &str, map: &str) -> Value {
    json!([
        cmp("==", ct("direction"), json!("original")),
        cmp("in", ct("status"), json!("dnat")),
        cmp("==", key_hostip(l3), json!(format!("@{map}"))),
    ])
}
pub(super) fn count_any(nfp: &str, map: &str) -> Value {
    json!([
        nfproto(nfp),
        cmp("==", ct("direction"), json!("original")),
        cmp("in", ct("status"), json!("dnat")),
        fib_local(),
        cmp("==", key_any(), json!(format!("@{map}"))),
    ])
}
pub(super) fn dnat_hostip(l3: &str, map: &str) -> Value {
    json!([dnat_map(l3, key_hostip(l3), map)])
}
pub(super) fn dnat_any(nfp: &str, l3: &str, map: &str) -> Value {
    json!([nfproto(nfp), fib_local(), dnat_map(l3, key_any(), map)])
}

/// Packet mark bit set on DNATed packets so the bridge table can tell a
/// published-port flow from direct traffic between containers. The text
/// rules spell it as 0x10000000.
pub const DNAT_MARK: u32 = 0x1000_0000;

pub(super) const COUNT_COMMENT: &str =
    "count later packets of published-port flows (nat sees only the first)";
pub(super) const COUNT_HOSTIP: &str =
    "ct direction original ct status dnat ip daddr . meta l4proto . th dport @dnat_hostip";
pub(super) const COUNT_ANY: &str = "meta nfproto ipv4 ct direction original ct status dnat fib daddr type local meta l4proto . th dport @dnat_any";
pub(super) const DNAT_HOSTIP: &str =
    "dnat ip to ip daddr . meta l4proto . th dport map @dnat_hostip";
pub(super) const DNAT_ANY: &str =
    "meta nfproto ipv4 fib daddr type local dnat ip to meta l4proto . th dport map @dnat_any";
pub(super) const COUNT6_HOSTIP: &str =
    "ct direction original ct status dnat ip6 daddr . meta l4proto . th dport @dnat6_hostip";
pub(super) const COUNT6_ANY: &str = "meta nfproto ipv6 ct direction original ct status dnat fib daddr type local meta l4proto . th dport @dnat6_any";
pub(super) const DNAT6_HOSTIP: &str =
    "dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6_hostip";
pub(super) const DNAT6_ANY: &str =
    "meta nfproto ipv6 fib daddr type local dnat ip6 to meta l4proto . th dport map @dnat6_any";

/// `IFNAME . ether saddr|daddr @vxlan_gateway_macs drop` and
/// `IFNAME . arp daddr ip @vxlan_gateway_ips drop` for one direction of
/// the VXLAN port (`iifname`: from other hosts, `oifname`: to them).
fn vxlan_gateway_rules(chain: &'static str, ifname: &str) -> Vec<RuleDef> {
    let (text_s, text_d, text_a, comment_s, comment_d, comment_a) = if ifname == "iifname" {
        (
            "iifname . ether saddr @vxlan_gateway_macs drop",
            "iifname . ether daddr @vxlan_gateway_macs drop",
            "iifname . arp daddr ip @vxlan_gateway_ips drop",
            "cluster: another host's gateway (same MAC on every host) does not come in",
            "cluster: frames for the gateway come from this host only",
            "cluster: ARP for the gateway from another host is not answered here",
        )
    } else {
        (
            "oifname . ether saddr @vxlan_gateway_macs drop",
            "oifname . ether daddr @vxlan_gateway_macs drop",
            "oifname . arp daddr ip @vxlan_gateway_ips drop",
            "cluster: the gateway (same MAC on every host) never sends to another host",
            "cluster: frames for the gateway never go to another host",
            "cluster: ARP for the gateway stays on its host",
        )
    };
    let by = |proto: &str, field: &str, set: &str| {
        json!([
            cmp(
                "==",
                json!({"concat": [meta(ifname), payload(proto, field)]}),
                json!(format!("@{set}"))
            ),
            verdict("drop"),
        ])
    };
    let r = |text, comment, expr| RuleDef {
        family: Family::Bridge,
        chain,
        text,
        comment,
        expr,
    };
    vec![
        r(
            text_s,
            comment_s,
            by("ether", "saddr", "vxlan_gateway_macs"),
        ),
        r(
            text_d,
            comment_d,
            by("ether", "daddr", "vxlan_gateway_macs"),
        ),
        r(
            text_a,
            comment_a,
            by("arp", "daddr ip", "vxlan_gateway_ips"),
        ),
    ]
}

pub(super) fn rules() -> Vec<RuleDef> {
    use Family::{Bridge, Inet};
    let r = |family, chain, text, comment, expr| RuleDef {
        family,
        chain,
        text,
        comment,
        expr,
    };
    vec![
        r(
            Inet,
            "prerouting_filter",
            "iifname @bridges ip daddr 127.0.0.0/8 drop",
            "route_localnet is on for bridges: containers must not reach the host's loopback",
            json!([
                cmp("==", meta("iifname"), json!("@bridges")),
                cmp("==", payload("ip", "daddr"), loopback_net()),
                verdict("drop"),
            ]),
        ),
        r(
            Inet,
            "prerouting_filter",
            COUNT_HOSTIP,
            COUNT_COMMENT,
            count_hostip("ip", "dnat_hostip"),
        ),
        r(
            Inet,
            "prerouting_filter",
            COUNT_ANY,
            COUNT_COMMENT,
            count_any("ipv4", "dnat_any"),
        ),
        r(
            Inet,
            "prerouting_filter",
            COUNT6_HOSTIP,
            COUNT_COMMENT,
            count_hostip("ip6", "dnat6_hostip"),
        ),
        r(
            Inet,
            "prerouting_filter",
            COUNT6_ANY,
            COUNT_COMMENT,
            count_any("ipv6", "dnat6_any"),
        ),
        r(
            Inet,
            "prerouting_mark",
            "ct status dnat meta mark set meta mark | 0x10000000",
            "tag DNATed packets for table bridge netloom (no conntrack in the bridge family)",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                json!({"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), DNAT_MARK]}}}),
            ]),
        ),
        r(
            Inet,
            "prerouting_nat",
            "ip daddr 127.0.0.0/8 return",
            "127.0.0.1 is translated in output only: no access to loopback ports from the LAN",
            json!([
                cmp("==", payload("ip", "daddr"), loopback_net()),
                verdict("return")
            ]),
        ),
        r(
            Inet,
            "prerouting_nat",
            DNAT_HOSTIP,
            "ports published on one host address",
            dnat_hostip("ip", "dnat_hostip"),
        ),
        r(
            Inet,
            "prerouting_nat",
            DNAT_ANY,
            "ports published on every host address",
            dnat_any("ipv4", "ip", "dnat_any"),
        ),
        r(
            Inet,
            "prerouting_nat",
            DNAT6_HOSTIP,
            "ports published on one IPv6 host address",
            dnat_hostip("ip6", "dnat6_hostip"),
        ),
        r(
            Inet,
            "prerouting_nat",
            DNAT6_ANY,
            "ports published on every IPv6 host address",
            dnat_any("ipv6", "ip6", "dnat6_any"),
        ),
        r(
            Inet,
            "output_filter",
            COUNT_HOSTIP,
            COUNT_COMMENT,
            count_hostip("ip", "dnat_hostip"),
        ),
        r(
            Inet,
            "output_filter",
            COUNT_ANY,
            COUNT_COMMENT,
            count_any("ipv4", "dnat_any"),
        ),
        r(
            Inet,
            "output_filter",
            COUNT6_HOSTIP,
            COUNT_COMMENT,
            count_hostip("ip6", "dnat6_hostip"),
        ),
        r(
            Inet,
            "output_filter",
            COUNT6_ANY,
            COUNT_COMMENT,
            count_any("ipv6", "dnat6_any"),
        ),
        r(
            Inet,
            "output_nat",
            DNAT_HOSTIP,
            "the host itself to a port published on one address",
            dnat_hostip("ip", "dnat_hostip"),
        ),
        r(
            Inet,
            "output_nat",
            "ip6 daddr ::1 return",
            "no route_localnet for IPv6: [::1] is not a published address",
            json!([
                cmp("==", payload("ip6", "daddr"), json!("::1")),
                verdict("return")
            ]),
        ),
        r(
            Inet,
            "output_nat",
            DNAT_ANY,
            "the host itself to a published port, 127.0.0.1 included",
            dnat_any("ipv4", "ip", "dnat_any"),
        ),
        r(
            Inet,
            "output_nat",
            DNAT6_HOSTIP,
            "the host itself to a port published on one IPv6 address",
            dnat_hostip("ip6", "dnat6_hostip"),
        ),
        r(
            Inet,
            "output_nat",
            DNAT6_ANY,
            "the host itself to a port published on every IPv6 address",
            dnat_any("ipv6", "ip6", "dnat6_any"),
        ),
        r(
            Inet,
            "forward_filter",
            "iifname . oifname @intra_bridge accept",
            "within one network (seen here when br_netfilter is loaded); icc=false is table bridge netloom's job",
            json!([
                cmp(
                    "==",
                    json!({"concat": [meta("iifname"), meta("oifname")]}),
                    json!("@intra_bridge")
                ),
                verdict("accept"),
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "iifname @internal_bridges drop",
            "internal network: nothing leaves",
            json!([
                cmp("==", meta("iifname"), json!("@internal_bridges")),
                verdict("drop")
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "oifname @internal_bridges drop",
            "internal network: nothing enters",
            json!([
                cmp("==", meta("oifname"), json!("@internal_bridges")),
                verdict("drop")
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "ct state established,related accept",
            "replies of allowed flows",
            json!([
                cmp("in", ct("state"), json!(["established", "related"])),
                verdict("accept"),
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "oifname @bridges ct status dnat accept",
            "published ports",
            json!([
                cmp("==", meta("oifname"), json!("@bridges")),
                cmp("in", ct("status"), json!("dnat")),
                verdict("accept"),
            ]),
        ),
        r(
            Inet,
            "forward_filter",
            "oifname @bridges drop",
            "isolation: other hosts and other networks reach containers only through published ports",
            json!([
                cmp("==", meta("oifname"), json!("@bridges")),
                verdict("drop")
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "ct status dnat ip saddr 127.0.0.0/8 masquerade",
            "host to 127.0.0.1:port: give the container a source address it can answer",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                cmp("==", payload("ip", "saddr"), loopback_net()),
                verdict("masquerade"),
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "ct status dnat oifname @bridges ip saddr @subnets masquerade",
            "hairpin: a container to a published port via a host address",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                cmp("==", meta("oifname"), json!("@bridges")),
                cmp("==", payload("ip", "saddr"), json!("@subnets")),
                verdict("masquerade"),
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "oifname != @bridges ip saddr @masq_subnets masquerade",
            "outbound: containers leave with the host's address",
            json!([
                cmp("!=", meta("oifname"), json!("@bridges")),
                cmp("==", payload("ip", "saddr"), json!("@masq_subnets")),
                verdict("masquerade"),
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "ct status dnat oifname @bridges ip6 saddr @subnets6 masquerade",
            "hairpin over IPv6: a container to a published port via a host address",
            json!([
                cmp("in", ct("status"), json!("dnat")),
                cmp("==", meta("oifname"), json!("@bridges")),
                cmp("==", payload("ip6", "saddr"), json!("@subnets6")),
                verdict("masquerade"),
            ]),
        ),
        r(
            Inet,
            "postrouting_nat",
            "oifname != @bridges ip6 saddr @masq_subnets6 masquerade",
            "outbound IPv6: containers leave with the host's address",
            json!([
                cmp("!=", meta("oifname"), json!("@bridges")),
                cmp("==", payload("ip6", "saddr"), json!("@masq_subnets6")),
                verdict("masquerade"),
            ]),
        ),
        r(
            Bridge,
            "forward",
            "meta mark & 0x10000000 == 0x10000000 accept",
            "published ports stay reachable: br_netfilter bridges a DNATed flow to a neighbour",
            json!([
                cmp(
                    "==",
                    json!({"&": [meta("mark"), DNAT_MARK]}),
                    json!(DNAT_MARK)
                ),
                verdict("accept"),
            ]),
        ),
        r(
            Bridge,
            "forward",
            "ip saddr @isolated_subnets ip daddr @isolated_subnets drop",
            "icc=false: members of one network cannot reach each other",
            json!([
                cmp("==", payload("ip", "saddr"), json!("@isolated_subnets")),
                cmp("==", payload("ip", "daddr"), json!("@isolated_subnets")),
                verdict("drop"),
            ]),
        ),
        r(
            Bridge,
            "forward",
            "ip6 saddr @isolated_subnets6 ip6 daddr @isolated_subnets6 drop",
            "icc=false over IPv6",
            json!([
                cmp("==", payload("ip6", "saddr"), json!("@isolated_subnets6")),
                cmp("==", payload("ip6", "daddr"), json!("@isolated_subnets6")),
                verdict("drop"),
            ]),
        ),
    ]
    .into_iter()
    .chain(vxlan_gateway_rules("prerouting", "iifname"))
    .chain(vxlan_gateway_rules("postrouting", "oifname"))
    .collect()
}

impl RuleDef {
    pub(super) fn expected_json(&self) -> Value {
        json!({
            "family": self.family.name(),
            "table": TABLE,
            "chain": self.chain,
            "comment": self.comment,
            "expr": self.expr,
        })
    }
}
