//! Process-wide counts of what a command asked of the kernel, for the
//! benchmarks (`NETLOOM_STATS=1` prints them): they do not depend on
//! machine noise, so a change in cost shows even where times are noisy.

use std::sync::atomic::{AtomicU64, Ordering};

static NETLINK_REQUESTS: AtomicU64 = AtomicU64::new(0);
static NFT_LISTINGS: AtomicU64 = AtomicU64::new(0);
static NFT_ELEMENTS_READ: AtomicU64 = AtomicU64::new(0);
static NFT_TRANSACTIONS: AtomicU64 = AtomicU64::new(0);
static NFT_ELEMENTS_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// The counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// rtnetlink requests sent (dumps, lookups, writes), every namespace.
    pub netlink_requests: u64,
    /// Listings of netloom's nft tables.
    pub nft_listings: u64,
    /// Set and map elements those listings returned.
    pub nft_elements_read: u64,
    pub nft_transactions: u64,
    /// Elements added or deleted by those transactions.
    pub nft_elements_written: u64,
}

pub fn get() -> Stats {
    Stats {
        netlink_requests: NETLINK_REQUESTS.load(Ordering::Relaxed),
        nft_listings: NFT_LISTINGS.load(Ordering::Relaxed),
        nft_elements_read: NFT_ELEMENTS_READ.load(Ordering::Relaxed),
        nft_transactions: NFT_TRANSACTIONS.load(Ordering::Relaxed),
        nft_elements_written: NFT_ELEMENTS_WRITTEN.load(Ordering::Relaxed),
    }
}

pub(crate) fn netlink_request() {
    NETLINK_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn nft_listing(elements: usize) {
    NFT_LISTINGS.fetch_add(1, Ordering::Relaxed);
    NFT_ELEMENTS_READ.fetch_add(elements as u64, Ordering::Relaxed);
}

pub(crate) fn nft_transaction(elements: usize) {
    NFT_TRANSACTIONS.fetch_add(1, Ordering::Relaxed);
    NFT_ELEMENTS_WRITTEN.fetch_add(elements as u64, Ordering::Relaxed);
}
