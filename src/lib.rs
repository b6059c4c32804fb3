//! netloom: declarative container networking for Linux.
//!
//! Three layers, each a folder (the README's "Architecture" section draws
//! the pipeline and says what may import what):
//!
//! - [`core`]: the functional core. The file is parsed and validated
//!   ([`core::config`], [`core::spec`]), resolved into a desired
//!   [`core::model::State`] with no I/O, and diffed against an observed
//!   state of the same type into an ordered [`core::plan::Plan`].
//! - [`host`]: the imperative shell, the only code that touches the
//!   machine: netlink, nftables, namespaces, files, sockets, the DNS server.
//! - [`cmd`]: the commands, the only code that prints.
//!
//! Imports point one way: `cmd` → `host` → `core`.

pub mod cmd;
pub mod core;
pub mod host;
