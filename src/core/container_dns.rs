//! Docker's per-container name options (`--add-host`, `--dns`,
//! `--dns-search`, `--dns-opt`, `--domainname`) as the container table's
//! `extra_hosts`, `dns`, `dns_search`, `dns_options` and `domainname`:
//! their validation, with each error at the value's position, and what
//! they make of a resolv.conf.
//!
//! Where they show: `extra_hosts` and `domainname` in the hosts file;
//! `dns`, `dns_search` and `dns_options` in resolv.conf. With an agent,
//! the embedded DNS stays the container's first nameserver (as Docker
//! keeps 127.0.0.11) and answers `extra_hosts` for that container; names
//! it does not know are forwarded to the container's `dns` servers instead
//! of the host's upstream servers, so a private zone behind them resolves.

use std::net::IpAddr;
use std::ops::Range;

use toml::Spanned;

use crate::core::config::ContainerConfig;

/// A container's name options, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsOptions {
    /// `domainname`.
    pub domainname: Option<String>,
    /// `extra_hosts`, in file order.
    pub extra_hosts: Vec<ExtraHost>,
    /// `dns`: the container's own nameservers (empty: the host's).
    pub servers: Vec<IpAddr>,
    /// `dns_search`.
    pub search: Vec<String>,
    /// `dns_options`, as written.
    pub options: Vec<String>,
}

/// One `extra_hosts` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraHost {
    /// The name it adds.
    pub name: String,
    /// Where the name points.
    pub addr: ExtraAddr,
}

/// The address of an `extra_hosts` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraAddr {
    /// A literal address.
    Ip(IpAddr),
    /// Docker's `host-gateway`: the gateway of the container's first
    /// network (the host as the container reaches it).
    HostGateway,
}

/// The resolver options glibc's resolv.conf(5) knows; those that take a
/// number take it after a colon.
const NUMERIC_OPTIONS: &[&str] = &["ndots", "timeout", "attempts"];
const FLAG_OPTIONS: &[&str] = &[
    "debug",
    "rotate",
    "no-check-names",
    "inet6",
    "edns0",
    "single-request",
    "single-request-reopen",
    "no-tld-query",
    "use-vc",
    "no-reload",
    "trust-ad",
    "no-aaaa",
];

/// netloom's resolver options: lookups of names no server answers must
/// not hang (one second, two attempts), and `ndots:0` sends a dotted name
/// as it is first.
pub const DEFAULT_OPTIONS: &[&str] = &["ndots:0", "timeout:1", "attempts:2"];

/// Validates the options of one container; `err` receives each problem
/// with the span of its value. `valid_name` is the file's host name rule.
pub fn check(
    cfg: &ContainerConfig,
    valid_name: &dyn Fn(&str) -> bool,
    err: &mut dyn FnMut(Range<usize>, String),
) -> DnsOptions {
    let mut out = DnsOptions::default();
    if let Some(d) = &cfg.domainname {
        if valid_name(d.get_ref()) {
            out.domainname = Some(d.get_ref().clone());
        } else {
            err(d.span(), format!("invalid domainname `{}`", d.get_ref()));
        }
    }
    for e in &cfg.extra_hosts {
        match parse_extra_host(e.get_ref(), valid_name) {
            Ok(h) => out.extra_hosts.push(h),
            Err(m) => err(e.span(), m),
        }
    }
    for s in &cfg.dns {
        match s.get_ref().parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => out.servers.push(ip),
            _ => err(
                s.span(),
                format!(
                    "`{}` is not a DNS server address (an IPv4 or IPv6 address; resolv.conf has no ports)",
                    s.get_ref()
                ),
            ),
        }
    }
    for d in &cfg.dns_search {
        let v = d.get_ref().trim_end_matches('.');
        if valid_name(v) {
            out.search.push(v.to_string());
        } else {
            err(d.span(), format!("invalid search domain `{}`", d.get_ref()));
        }
    }
    for o in &cfg.dns_options {
        match check_option(o) {
            Ok(()) => out.options.push(o.get_ref().clone()),
            Err(m) => err(o.span(), m),
        }
    }
    out
}

/// `NAME:IP` or `NAME=IP` (the first separator splits: IPv6 addresses
/// keep their colons).
fn parse_extra_host(s: &str, valid_name: &dyn Fn(&str) -> bool) -> Result<ExtraHost, String> {
    let Some(i) = s.find([':', '=']) else {
        return Err(format!(
            "extra host `{s}` must be NAME:IP (e.g. `db.example:10.0.0.5`)"
        ));
    };
    let (name, addr) = (&s[..i], &s[i + 1..]);
    if !valid_name(name) {
        return Err(format!("invalid host name `{name}` in extra host `{s}`"));
    }
    // Docker accepts an IPv6 address in brackets too.
    let bare = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    let addr = if addr == "host-gateway" {
        ExtraAddr::HostGateway
    } else {
        match bare.parse::<IpAddr>() {
            Ok(ip) => ExtraAddr::Ip(ip),
            Err(_) => {
                return Err(format!(
                    "`{addr}` in extra host `{s}` is not an IP address (or `host-gateway`)"
                ));
            }
        }
    };
    Ok(ExtraHost {
        name: name.to_string(),
        addr,
    })
}

fn check_option(o: &Spanned<String>) -> Result<(), String> {
    let s = o.get_ref();
    let (name, value) = match s.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (s.as_str(), None),
    };
    if NUMERIC_OPTIONS.contains(&name) {
        return match value.map(str::parse::<u8>) {
            Some(Ok(_)) => Ok(()),
            _ => Err(format!(
                "resolver option `{name}` takes a number: `{name}:N`"
            )),
        };
    }
    if FLAG_OPTIONS.contains(&name) {
        return match value {
            None => Ok(()),
            Some(_) => Err(format!("resolver option `{name}` takes no value")),
        };
    }
    let known: Vec<&str> = NUMERIC_OPTIONS
        .iter()
        .chain(FLAG_OPTIONS)
        .copied()
        .collect();
    let hint = crate::core::diag::suggest(name, known.iter().copied())
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(format!(
        "unknown resolver option `{s}` (resolv.conf(5) options){hint}"
    ))
}

/// The `options` of a resolv.conf: netloom's defaults, each replaced by a
/// container option of the same name, then the container's others.
pub fn options_line(own: &[String]) -> String {
    let name = |o: &str| o.split(':').next().unwrap_or(o).to_string();
    let mut out: Vec<String> = DEFAULT_OPTIONS
        .iter()
        .map(|d| {
            own.iter()
                .find(|o| name(o) == name(d))
                .cloned()
                .unwrap_or_else(|| d.to_string())
        })
        .collect();
    for o in own {
        if !out.iter().any(|x| name(x) == name(o)) {
            out.push(o.clone());
        }
    }
    format!("options {}\n", out.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(s: &str) -> bool {
        !s.is_empty()
            && s.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
    }

    #[test]
    fn extra_hosts_take_both_separators_ipv6_and_host_gateway() {
        let p = |s| parse_extra_host(s, &valid);
        assert_eq!(
            p("db:10.0.0.5").map(|h| h.addr),
            Ok(ExtraAddr::Ip("10.0.0.5".parse().unwrap()))
        );
        assert_eq!(p("db=10.0.0.5").map(|h| h.name), Ok("db".into()));
        assert_eq!(
            p("v6:fd00::1").map(|h| h.addr),
            Ok(ExtraAddr::Ip("fd00::1".parse().unwrap()))
        );
        assert_eq!(
            p("v6:[fd00::1]").map(|h| h.addr),
            Ok(ExtraAddr::Ip("fd00::1".parse().unwrap()))
        );
        assert_eq!(
            p("gw:host-gateway").map(|h| h.addr),
            Ok(ExtraAddr::HostGateway)
        );
        assert!(p("nocolon").unwrap_err().contains("NAME:IP"));
        assert!(p("db:10.0.0").unwrap_err().contains("not an IP address"));
        assert!(
            p("bad name:10.0.0.1")
                .unwrap_err()
                .contains("invalid host name")
        );
    }

    #[test]
    fn options_override_the_defaults_by_name() {
        assert_eq!(options_line(&[]), "options ndots:0 timeout:1 attempts:2\n");
        assert_eq!(
            options_line(&["ndots:3".into(), "rotate".into()]),
            "options ndots:3 timeout:1 attempts:2 rotate\n"
        );
    }

    #[test]
    fn options_are_checked_against_resolv_conf() {
        let o = |s: &str| check_option(&Spanned::new(0..0, s.to_string()));
        assert!(o("ndots:2").is_ok());
        assert!(o("rotate").is_ok());
        assert!(o("ndots").unwrap_err().contains("takes a number"));
        assert!(o("rotate:1").unwrap_err().contains("takes no value"));
        assert!(o("rotat").unwrap_err().contains("did you mean `rotate`"));
    }
}
