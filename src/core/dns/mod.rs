//! The embedded DNS server's records and answers, with no I/O.
//!
//! The model builds one [`Zone`] per DNS-enabled network. [`Index::build`]
//! turns the zones into lookup tables once per reconcile, and
//! [`Index::answer`] decides, for one question asked by one source address
//! on one listener, whether to answer locally (and with what) or to forward
//! upstream. The shell (`host::dns`) owns the wire format and the sockets:
//! it turns a DNS message into a [`Question`] and an [`Answer`] back into a
//! message.
//!
//! # What is answered
//!
//! * A client is identified by its source address. A container on several
//!   DNS-enabled networks sees the members of **every** network it is on,
//!   whichever of its gateways it asks; a client that is not a known member
//!   (but is inside the listener's subnet) sees that one network. Nobody
//!   sees a network it is not on.
//! * A container's own `extra_hosts` names, for that container only,
//!   before any member (as its hosts file lists them first); its unknown
//!   names are forwarded to its own `dns` servers when it has any.
//! * `A`/`AAAA` for a member's `name`, `name.<network>`, each alias and
//!   `alias.<network>`, case-insensitive, with or without the trailing
//!   dot. Several members sharing a name (an alias used as a service name)
//!   all answer, like Docker's network-scoped aliases. When the name exists
//!   on several of the asker's networks, the network of the listener that
//!   was asked wins, then the others in zone order (Docker also answers
//!   from the first of the container's networks that knows the name). A
//!   name with no record of the asked type gets NOERROR with no answer
//!   (NODATA).
//! * `PTR` for member addresses (`in-addr.arpa`, and `ip6.arpa` for members
//!   with IPv6), answering `name.` first, then each alias.
//! * Every local answer has TTL 0, so an address change is seen by the
//!   next query.
//!
//! # What is decided locally instead of forwarded
//!
//! * A **single-label name** (`db`, `localhost`) that is not a member gets
//!   NXDOMAIN locally: bare names are container names, and leaking them to
//!   the host's resolvers only leaks the application's topology (and breaks
//!   `ndots` search-list fallbacks with slow timeouts).
//! * A reverse (`in-addr.arpa`, `ip6.arpa`) name for an address inside one
//!   of the asker's subnets that is not a member's gets NXDOMAIN locally: the
//!   network is private to this host and nobody upstream can know better.
//! * `x.<network>` where `x` is not a member **is forwarded**, as Docker
//!   does: network names may coincide with real domains (`dev`, `app`,
//!   `internal`), and a network called `com` must not break `google.com`.
//! * Classes other than IN (`version.bind CH`) are the upstream's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::{Ipv4Network, Ipv6Network};

mod answer;
mod index;
mod name;
#[cfg(test)]
pub(crate) mod testing;

pub use answer::{Answer, Data, QType, Question, Rcode};
pub use index::{Index, IndexError, View};

pub use name::{lookup_key, parse_reverse};

/// One container attached to a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The container's name (unique on the host): the name it answers to.
    pub name: String,
    /// Its aliases on this network.
    pub aliases: Vec<String>,
    /// Its IPv4 address on this network.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address on this network, on dual-stack networks.
    pub ipv6: Option<Ipv6Addr>,
}

/// One container's own names and servers (`extra_hosts`, `dns`): only
/// this container sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Client {
    /// The container's name (as in [`Member::name`]).
    pub name: String,
    /// Its `extra_hosts`: name -> address, answered before any member.
    pub hosts: Vec<(String, IpAddr)>,
    /// Its `dns` servers: unknown names are forwarded there instead of to
    /// the host's upstreams.
    pub servers: Vec<SocketAddr>,
}

/// The records of one network, served on its gateway address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    /// The network's name (`name.<network>` answers too).
    pub network: String,
    /// Where its DNS server listens.
    pub gateway: Ipv4Addr,
    /// Only sources inside it are served.
    pub subnet: Ipv4Network,
    /// On dual-stack networks, the IPv6 gateway, where the server listens
    /// too.
    pub gateway6: Option<Ipv6Addr>,
    /// On dual-stack networks: IPv6 sources inside it are served.
    pub subnet6: Option<Ipv6Network>,
    /// The containers on it.
    pub members: Vec<Member>,
}
