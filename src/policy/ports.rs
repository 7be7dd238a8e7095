//! `PortSet`: a 65,536-bit bitmap, so a port lookup is one load and a mask.

/// A set of TCP/UDP ports.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
}

impl PortSet {
    /// A set of the given ports.
    pub fn new(ports: impl IntoIterator<Item = u16>) -> PortSet {
        let mut bits = Box::new([0u64; 1024]);
        for p in ports {
            bits[usize::from(p >> 6)] |= 1 << (p & 63);
        }
        PortSet { bits }
    }

    /// True if `port` is in the set.
    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    /// The ports in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        // Word by word, skipping empty words: a set of a few ports is 1,024
        // loads, not 65,536 tests (a banner State is built per fuzz input).
        self.bits
            .iter()
            .zip(0u16..)
            .filter(|(w, _)| **w != 0)
            .flat_map(|(&w, i)| (0..64u16).filter(move |b| w >> b & 1 != 0).map(move |b| i * 64 + b))
    }
}

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership() {
        let s = PortSet::new([25, 0, 65535, 64]);
        for p in [0, 25, 64, 65535] {
            assert!(s.contains(p));
        }
        for p in [1, 24, 26, 63, 65, 587, 465, 65534] {
            assert!(!s.contains(p));
        }
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 25, 64, 65535]);
    }
}
