//! A small, stable hash for derived names (veth and bridge names), and
//! SHA-256 for the digests of saved plans.
//!
//! Names derived from it end up in the kernel and in the state dir, so the
//! function must never change between versions: FNV-1a, 64 bit.

const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit.
pub fn fnv64(data: &[u8]) -> u64 {
    fnv64_on(FNV_BASIS, data)
}

/// FNV-1a of `data` continued from the state `h`.
fn fnv64_on(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// [`fnv64`] of each of `data`, in order. The same values, computed
/// several at a time: each FNV step waits for the multiplication before
/// it, so one input leaves the multiplier idle most of the time, and four
/// interleaved inputs keep it busy (a plan checks the digests of thousands
/// of files).
pub fn fnv64_many(data: &[&[u8]]) -> Vec<u64> {
    const LANES: usize = 4;
    let mut out = vec![0; data.len()];
    // Inputs of similar length side by side: the interleaved part is the
    // shortest one of each group.
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_unstable_by_key(|&i| data[i].len());
    let mut groups = order.chunks_exact(LANES);
    for g in &mut groups {
        let [a, b, c, d] = [data[g[0]], data[g[1]], data[g[2]], data[g[3]]];
        let n = a.len();
        let mut h = [FNV_BASIS; LANES];
        for (((x, y), z), w) in a.iter().zip(&b[..n]).zip(&c[..n]).zip(&d[..n]) {
            h[0] = (h[0] ^ u64::from(*x)).wrapping_mul(FNV_PRIME);
            h[1] = (h[1] ^ u64::from(*y)).wrapping_mul(FNV_PRIME);
            h[2] = (h[2] ^ u64::from(*z)).wrapping_mul(FNV_PRIME);
            h[3] = (h[3] ^ u64::from(*w)).wrapping_mul(FNV_PRIME);
        }
        for (lane, input) in [a, b, c, d].into_iter().enumerate() {
            out[g[lane]] = fnv64_on(h[lane], &input[n..]);
        }
    }
    for &i in groups.remainder() {
        out[i] = fnv64(data[i]);
    }
    out
}

/// SHA-256 of `data` as lowercase hex: the digests of saved plans, which
/// must not collide by accident or on purpose.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // Reference values of FNV-1a 64.
        assert_eq!(super::fnv64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn many_at_once_are_each_alone() {
        let texts: Vec<Vec<u8>> = (0..23u8)
            .map(|i| {
                (0..(i as usize * 37) % 101)
                    .map(|j| (j as u8) ^ i)
                    .collect()
            })
            .collect();
        for k in 0..texts.len() {
            let some: Vec<&[u8]> = texts[..k].iter().map(Vec::as_slice).collect();
            let alone: Vec<u64> = some.iter().map(|t| super::fnv64(t)).collect();
            assert_eq!(super::fnv64_many(&some), alone);
        }
    }

    #[test]
    fn sha256_reference() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
