//! Names in lookup form, and reverse-lookup names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a `.` inside a label (legal on the wire, never in a member's name)
/// becomes in lookup form, so that splitting a key on `.` gives back the
/// labels. Chosen to match no name.
const DOT_IN_LABEL: char = '\0';
/// What a byte outside ASCII becomes: no member name has one.
const NON_ASCII: char = '\u{fffd}';

/// Writes the lookup form of a name given as its labels into `key`
/// (cleared first): labels lower-cased and joined by dots, no trailing
/// dot; the root name is the empty key. The form every name of an
/// [`Index`](super::Index) is stored in; `key` is reused between queries so
/// that the lookup allocates nothing.
pub fn lookup_key<'a>(labels: impl IntoIterator<Item = &'a [u8]>, key: &mut String) {
    key.clear();
    for (i, label) in labels.into_iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        for &b in label {
            key.push(match b {
                b'.' => DOT_IN_LABEL,
                b if b.is_ascii() => char::from(b.to_ascii_lowercase()),
                _ => NON_ASCII,
            });
        }
    }
}

/// The lookup form of a configured name: lower-case, without trailing dot.
pub(super) fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The address named by a full reverse-lookup name in lookup form
/// (`4.3.2.1.in-addr.arpa`, 32 nibbles + `ip6.arpa`), if it is one.
pub fn parse_reverse(key: &str) -> Option<IpAddr> {
    let rest = key.strip_suffix(".arpa")?;
    if let Some(octets) = rest.strip_suffix(".in-addr") {
        let mut out = [0u8; 4];
        let mut labels = octets.split('.');
        for slot in (0..4).rev() {
            let text = labels.next()?;
            // Octets appear least significant first; reject "01" and the
            // like, which are not how any address is spelled.
            if text.is_empty()
                || text.len() > 3
                || (text.len() > 1 && text.starts_with('0'))
                || !text.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            out[slot] = text.parse().ok()?;
        }
        return labels
            .next()
            .is_none()
            .then_some(IpAddr::V4(Ipv4Addr::from(out)));
    }
    if let Some(nibbles) = rest.strip_suffix(".ip6") {
        let mut value: u128 = 0;
        let mut count = 0;
        // Least significant nibble first.
        for (i, label) in nibbles.split('.').enumerate() {
            let &[digit] = label.as_bytes() else {
                return None;
            };
            let nibble = char::from(digit).to_digit(16)?;
            if i >= 32 {
                return None;
            }
            value |= u128::from(nibble) << (4 * i);
            count += 1;
        }
        return (count == 32).then_some(IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// Whether `name` can be a PTR target: non-empty labels of at most 63
/// printable ASCII bytes, at most 253 bytes in all (RFC 1035's limits).
pub(super) fn valid_target(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_graphic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(labels: &[&[u8]]) -> String {
        let mut k = String::from("junk from the previous query");
        lookup_key(labels.iter().copied(), &mut k);
        k
    }

    #[test]
    fn lookup_keys() {
        assert_eq!(key(&[b"Web", b"GREEN"]), "web.green");
        assert_eq!(key(&[]), "");
        // A dot inside a label does not create a label.
        assert_eq!(key(&[b"a.b"]).split('.').count(), 1);
        assert_ne!(key(&[b"a.b"]), "a.b");
        assert_ne!(key(&[b"w\xc3\xa9b"]), "web");
    }

    #[test]
    fn reverse_names() {
        let v4 = |s: &str| parse_reverse(s);
        assert_eq!(
            v4("4.3.2.1.in-addr.arpa"),
            Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)))
        );
        assert_eq!(
            v4("0.0.0.10.in-addr.arpa"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)))
        );
        assert_eq!(v4("3.2.1.in-addr.arpa"), None);
        assert_eq!(v4("5.4.3.2.1.in-addr.arpa"), None);
        assert_eq!(v4("256.3.2.1.in-addr.arpa"), None);
        assert_eq!(v4("04.3.2.1.in-addr.arpa"), None);
        assert_eq!(v4("+4.3.2.1.in-addr.arpa"), None);
        assert_eq!(v4("x.3.2.1.in-addr.arpa"), None);
        assert_eq!(v4("4.3.2.1.example"), None);
        assert_eq!(v4("in-addr.arpa"), None);

        let addr: Ipv6Addr = "2001:db8::abcd".parse().expect("v6");
        let nibbles: Vec<String> = format!("{:032x}", u128::from(addr))
            .chars()
            .rev()
            .map(String::from)
            .collect();
        let name = format!("{}.ip6.arpa", nibbles.join("."));
        assert_eq!(parse_reverse(&name), Some(IpAddr::V6(addr)));
        assert_eq!(parse_reverse("b.a.ip6.arpa"), None);
        assert_eq!(parse_reverse(&format!("0.{name}")), None);
        assert_eq!(parse_reverse(&name.replacen('d', "dd", 1)), None);
    }

    #[test]
    fn ptr_targets() {
        assert!(valid_target("web"));
        assert!(valid_target("web.green."));
        assert!(!valid_target(""));
        assert!(!valid_target("a..b"));
        assert!(!valid_target("has space"));
        assert!(!valid_target(&"x".repeat(64)));
    }
}
