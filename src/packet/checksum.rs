//! Internet checksum helpers (RFC 1071) and the incremental update of RFC 1624.

/// Ones'-complement sum of `data` as big-endian 16-bit words, folded to 16 bits.
/// A header whose stored checksum is right sums to `0xffff`.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    sum_with(data)
}

/// Whether a 20-byte IPv4 header's checksum is right (its ones'-complement
/// sum is `0xffff`). Without folding: 2^16 = 1 modulo 0xffff, so the folded
/// sum is 0xffff exactly when the plain sum of the words is a non-zero
/// multiple of 0xffff, whatever the word size or byte order (RFC 1071 2.(B)):
/// five native loads, four adds and a division by a constant.
#[inline]
pub fn ipv4_header_ok(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    let acc = w(0) + w(4) + w(8) + w(12) + w(16);
    acc != 0 && acc % 0xffff == 0
}

#[inline]
fn sum_with(data: &[u8]) -> u16 {
    // Four bytes at a time into a wide accumulator; the ones'-complement sum of
    // 32-bit words folds to the same 16-bit sum (RFC 1071 2.(B)).
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut rest = words.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    fold(acc as u32)
}

#[inline]
fn fold(acc: u32) -> u16 {
    // Two end-around carries fold any u32: after the first the value is at
    // most 0x1fffe, after the second at most 0xffff.
    let acc = (acc & 0xffff) + (acc >> 16);
    ((acc & 0xffff) + (acc >> 16)) as u16
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data
/// changed from `old` to `new`: `HC' = ~(~HC + ~m + m')`. Unlike eqn. 2 it never
/// produces 0xffff... for a header whose true sum cannot be zero.
#[inline]
pub fn adjust(checksum: u16, old: u16, new: u16) -> u16 {
    let acc = u32::from(!checksum) + u32::from(!old) + u32::from(new);
    !fold(acc)
}

/// [`adjust`] for the one change a forwarded IPv4 header gets: the TTL (the
/// high byte of the word it shares with the protocol) goes down by one. Then
/// `~m + m'` is `0xffff - 0x0100 = 0xfeff` whatever the word, so the old and
/// new words need not be read.
#[inline]
pub fn ttl_decremented(checksum: u16) -> u16 {
    let acc = u32::from(!checksum) + 0xfeff;
    !((acc & 0xffff) + (acc >> 16)) as u16
}

/// RFC 1624 for a run of 16-bit words: the checksum after `old` (even length)
/// became `new` (same length).
pub fn adjust_bytes(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u32::from(!checksum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        acc += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        acc += u32::from(u16::from_be_bytes([n[0], n[1]]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !fold(acc)
}

/// The same update for a checksum field that holds a partial checksum (the
/// virtio-net "needs checksum" state: the field has the folded pseudo-header
/// sum, not yet complemented; the kernel finishes it later). Only pseudo-header
/// words (addresses) need this; bytes the kernel will sum itself need nothing.
pub fn adjust_partial(field: u16, old: &[u8], new: &[u8]) -> u16 {
    !adjust_bytes(!field, old, new)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttl_decremented_is_the_general_adjustment() {
        for checksum in (0..=0xffffu32).step_by(7).chain([0, 1, 0xfeff, 0xff00, 0xfffe, 0xffff]) {
            for ttl in [2u16, 3, 64, 128, 255] {
                for proto in [1u16, 6, 17, 58] {
                    let old = (ttl << 8) | proto;
                    let new = ((ttl - 1) << 8) | proto;
                    let c = checksum as u16;
                    assert_eq!(super::ttl_decremented(c), super::adjust(c, old, new), "{c:#x} ttl {ttl}");
                }
            }
        }
    }

    #[test]
    fn ipv4_header_ok_agrees_with_the_sum() {
        let mut seed = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let mut h = [0u8; 20];
            for b in &mut h {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *b = seed as u8;
            }
            // Half the time, make the checksum right.
            if seed & 1 == 0 {
                h[10..12].fill(0);
                let c = !sum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            assert_eq!(ipv4_header_ok(&h), sum(&h) == 0xffff, "{h:?}");
        }
    }

    use super::*;

    fn full(header: &mut [u8]) -> u16 {
        header[10] = 0;
        header[11] = 0;
        !sum(header)
    }

    #[test]
    fn sum_of_valid_header_is_ffff() {
        // RFC 1071-style sample IPv4 header (checksum 0xb861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(sum(&h), 0xffff);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x01]), 0x0100);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn adjust_bytes_matches_full_recompute_for_address_changes() {
        let mut h = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0x64, 0x40, 0x01, 0x0a, 0xcb, 0x00,
            0x71, 0x19,
        ];
        let before = full(&mut h);
        h[10..12].copy_from_slice(&before.to_be_bytes());
        for new in [[198u8, 51, 100, 25], [0, 0, 0, 0], [255, 255, 255, 255], [0xff, 0xfe, 0x01, 0x00]] {
            let mut g = h;
            let old = [g[16], g[17], g[18], g[19]];
            g[16..20].copy_from_slice(&new);
            let inc = adjust_bytes(u16::from_be_bytes([h[10], h[11]]), &old, &new);
            assert_eq!(inc, full(&mut g), "{new:?}");
        }
    }

    #[test]
    fn partial_adjust_tracks_the_pseudo_header_sum() {
        // A partial field holds the folded sum of the pseudo-header words.
        let words =
            |a: [u8; 4]| u32::from(u16::from_be_bytes([a[0], a[1]])) + u32::from(u16::from_be_bytes([a[2], a[3]]));
        let (old, new) = ([203u8, 0, 113, 25], [198u8, 51, 100, 25]);
        let base = 0x1234u32 + 6 + 20; // other pseudo-header words
        let field = fold(base + words(old));
        assert_eq!(adjust_partial(field, &old, &new), fold(base + words(new)));
    }

    #[test]
    fn adjust_matches_full_recompute_for_every_ttl_and_protocol() {
        let mut h = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0x64, 0x40, 0x01, 0x0a, 0xcb, 0x00,
            0x71, 0x19,
        ];
        for proto in [1u8, 6, 17, 58, 0xff] {
            for ttl in 1u8..=255 {
                // Vary another word so the sums cover the fold corner cases.
                for id in [0u16, 0x1234, 0xffff, 0xfffe] {
                    h[4..6].copy_from_slice(&id.to_be_bytes());
                    h[8] = ttl;
                    h[9] = proto;
                    let before = full(&mut h);
                    h[10..12].copy_from_slice(&before.to_be_bytes());
                    let old = u16::from_be_bytes([ttl, proto]);
                    let new = u16::from_be_bytes([ttl - 1, proto]);
                    let inc = adjust(before, old, new);
                    h[8] = ttl - 1;
                    let recomputed = full(&mut h);
                    assert_eq!(inc, recomputed, "ttl {ttl} proto {proto} id {id:#x}");
                }
            }
        }
    }
}
