#![warn(missing_docs)]

//! The functional core: from the file to a plan, with no I/O.
//!
//! Nothing here touches the machine: no tokio, nix, rtnetlink, notify or
//! hickory, no processes, files or sockets (a structural test in
//! `tests/structure.rs` fails on such an import). Every function is a
//! function of its arguments, so the behaviour of netloom is tested here
//! without root.

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod container_dns;
pub mod diag;
pub mod dns;
pub mod firewall;
pub mod hash;
pub mod hosts;
pub mod ipam;
pub mod model;
pub mod oci;
pub mod plan;
pub mod ports;
pub mod record;
pub mod render;
pub mod saved_plan;
pub mod schema_rules;
pub mod shape;
pub mod share;
pub mod spec;
pub mod store;
pub mod text;
