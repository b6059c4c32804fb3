//! The imperative shell: the only code that touches the machine.
//!
//! It reads the live host into the core's types ([`observe`]), carries a
//! plan out ([`apply`]) through netlink ([`netlink`], [`netns`]), one nft
//! transaction ([`nft`]) and file writes, and runs the agent's long-lived
//! parts: kernel events ([`events`]) and the embedded DNS server ([`dns`]).
//! It imports the core, never the commands.

pub mod agentlock;
pub mod agentsock;
pub mod apply;
pub mod checkpoint;
pub mod cluster;
pub mod dns;
pub mod etcd;
pub mod events;
pub mod fault;
pub mod guard;
pub mod identity;
pub mod inplace;
pub mod interrupt;
pub mod marks;
pub mod memory;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod observe;
pub mod portprobe;
pub mod sdnotify;
pub mod state;
pub mod stats;
pub mod sysctl;
