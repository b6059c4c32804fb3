//! The functional core: from the file to a plan, with no I/O.
//!
//! Nothing here touches the machine: no tokio, nix, rtnetlink, notify or
//! hickory, no processes, files or sockets (a structural test in
//! `tests/structure.rs` fails on such an import). Every function is a
//! function of its arguments, so the behaviour of netloom is tested here
//! without root.

pub mod checkpoint;
#[warn(missing_docs)]
pub mod cluster;
#[warn(missing_docs)]
pub mod config;
#[warn(missing_docs)]
pub mod diag;
pub mod dns;
#[warn(missing_docs)]
pub mod firewall;
#[warn(missing_docs)]
pub mod hash;
#[warn(missing_docs)]
pub mod ipam;
pub mod model;
pub mod plan;
#[warn(missing_docs)]
pub mod ports;
#[warn(missing_docs)]
pub mod render;
pub mod saved_plan;
#[warn(missing_docs)]
pub mod share;
pub mod spec;
pub mod store;
