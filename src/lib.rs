//! netloom: declarative container networking for Linux.
//!
//! The file ([`config`], validated into a [`spec::Spec`]) is resolved into a
//! desired [`model::State`] with no I/O; [`observe`] reads the live host
//! into the same type; [`plan::diff`] computes the ordered changes;
//! [`apply`] makes them through netlink, one nft transaction and atomic file
//! writes. See ENGINEERING.md in the project's shared docs for the shape.

pub mod agent;
pub mod apply;
pub mod cli;
pub mod config;
pub mod diag;
pub mod dns;
pub mod engine;
pub mod events;
pub mod firewall;
pub mod hash;
pub mod ipam;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod observe;
pub mod plan;
pub mod portprobe;
pub mod ports;
pub mod render;
pub mod sdnotify;
pub mod spec;
pub mod state;
pub mod status;
