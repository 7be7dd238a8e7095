//! `PrefixSet`: "is this address in any of these prefixes", compiled once.
//!
//! The prefixes of one family are merged into sorted, disjoint address ranges;
//! a lookup is one binary search (about 14 comparisons for 10,000 ranges, in
//! one contiguous allocation). Large IPv4 sets also get a /16 index, so the
//! search covers only the ranges of the address's /16. Membership is all the policy asks, so this
//! answers the same as a longest-prefix match over the set without a trie's
//! pointer chasing.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of IPv4 and IPv6 prefixes, compiled for membership lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSet {
    v4: Vec<(u32, u32)>,
    /// For large IPv4 sets: `v4_index[h]` is the first range starting at or
    /// after `h << 16`, so a lookup searches only the ranges of one /16.
    v4_index: Option<Box<[u32]>>,
    v6: Vec<(u128, u128)>,
    /// The prefixes as configured, for display.
    nets: Vec<IpNet>,
}

impl PrefixSet {
    /// Compiles a set from prefixes; overlapping and adjacent prefixes merge.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> PrefixSet {
        let nets: Vec<IpNet> = nets.into_iter().collect();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in &nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        let v4 = merge(v4);
        let v4_index = (v4.len() > INDEX_THRESHOLD).then(|| {
            (0..=1u32 << 16)
                .map(|h| v4.partition_point(|r| u64::from(r.0) < u64::from(h) << 16) as u32)
                .collect::<Vec<u32>>()
                .into_boxed_slice()
        });
        PrefixSet { v4, v4_index, v6: merge(v6), nets }
    }

    /// True if `addr` lies in one of the prefixes.
    #[inline(always)]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => match &self.v4_index {
                Some(index) => lookup_indexed(&self.v4, index, u32::from(a)),
                None => lookup(&self.v4, u32::from(a)),
            },
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }

    /// The prefixes as configured.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Number of configured prefixes.
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// True when the set holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The merged IPv4 ranges, inclusive, ascending.
    pub(crate) fn v4_ranges(&self) -> &[(u32, u32)] {
        &self.v4
    }

    /// The merged IPv6 ranges, inclusive, ascending.
    pub(crate) fn v6_ranges(&self) -> &[(u128, u128)] {
        &self.v6
    }

    /// Number of disjoint ranges after merging (IPv4, IPv6).
    pub(crate) fn ranges(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }
}

fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if last.1.succ().is_none_or(|next| start <= next) => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

/// Above this many IPv4 ranges a set gets the /16 index (256 KiB).
const INDEX_THRESHOLD: usize = 64;

#[inline]
fn lookup_indexed(ranges: &[(u32, u32)], index: &[u32], addr: u32) -> bool {
    let h = (addr >> 16) as usize;
    let (lo, hi) = (index[h] as usize, index[h + 1] as usize);
    // The last range starting at or before `addr`: in this /16's slice, or else
    // the last one before it (which may reach into this /16).
    let i = lo + ranges[lo..hi].partition_point(|r| r.0 <= addr);
    i > 0 && addr <= ranges[i - 1].1
}

#[inline]
fn lookup<T: Ord + Copy>(ranges: &[(T, T)], addr: T) -> bool {
    // Index of the first range starting above `addr`; the one before it is the
    // only candidate.
    let i = ranges.partition_point(|r| r.0 <= addr);
    i > 0 && addr <= ranges[i - 1].1
}

mod num_like {
    /// The next integer, if any.
    pub trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<u32> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<u128> {
            self.checked_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> PrefixSet {
        PrefixSet::new(nets.iter().map(|s| s.parse().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership_both_families() {
        let s = set(&["100.64.0.0/10", "2001:db8:100::/48", "198.51.100.25/32"]);
        assert!(s.contains(ip("100.64.0.0")));
        assert!(s.contains(ip("100.127.255.255")));
        assert!(!s.contains(ip("100.128.0.0")));
        assert!(!s.contains(ip("100.63.255.255")));
        assert!(s.contains(ip("198.51.100.25")));
        assert!(!s.contains(ip("198.51.100.24")));
        assert!(s.contains(ip("2001:db8:100:ffff::1")));
        assert!(!s.contains(ip("2001:db8:101::1")));
        // An IPv4-mapped IPv6 address is not the IPv4 address.
        assert!(!s.contains(ip("::ffff:100.64.0.1")));
    }

    #[test]
    fn overlapping_and_adjacent_merge() {
        let s = set(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(s.ranges(), (2, 0));
        assert!(s.contains(ip("10.0.1.255")));
        assert!(!s.contains(ip("10.0.2.0")));
        assert!(s.contains(ip("10.0.3.0")));
    }

    #[test]
    fn whole_space_and_empty() {
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains(ip("255.255.255.255")));
        assert!(all.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        let none = set(&[]);
        assert!(!none.contains(ip("0.0.0.0")));
        assert!(!none.contains(ip("::")));
    }

    #[test]
    fn agrees_with_linear_scan() {
        // A deterministic pseudo-random mix of prefixes and probes.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Short prefixes swallow much of the space (few ranges, plain binary
        // search); long ones in a few /8s give thousands of ranges (the /16
        // index), with probes near the ranges' edges.
        for (min_len, span) in [(0u64, 33u64), (20, 13)] {
            let nets: Vec<IpNet> = (0..1000)
                .map(|_| {
                    let a = (next() as u32 & 0x03ff_ffff) | 0x6400_0000;
                    let len = (min_len + next() % span) as u8;
                    IpNet::V4(ipnet::Ipv4Net::new(a.into(), len).unwrap().trunc())
                })
                .collect();
            let s = PrefixSet::new(nets.clone());
            if min_len > 0 {
                assert!(s.v4_index.is_some(), "large enough to be indexed: {:?}", s.ranges());
            }
            for i in 0..10_000 {
                let a = if i % 2 == 0 {
                    next() as u32
                } else {
                    let n = &nets[(next() as usize) % nets.len()];
                    let IpNet::V4(n) = n else { unreachable!() };
                    let edge = if next() % 2 == 0 { u32::from(n.network()) } else { u32::from(n.broadcast()) };
                    edge.wrapping_add((next() % 3) as u32).wrapping_sub(1)
                };
                let a = IpAddr::V4(a.into());
                assert_eq!(s.contains(a), nets.iter().any(|n| n.contains(&a)), "{a}");
            }
        }
    }
}
