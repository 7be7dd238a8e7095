//! Coalescing consecutive small UDP datagrams of one flow into one UDP GSO
//! packet (virtio-net header `GSO_UDP_L4`) for a single TUN write.
//!
//! A TUN write costs a syscall plus the kernel's whole receive path; with
//! GSO the kernel runs that path once for the batch and splits the datagrams
//! again only where they go (at the socket, or on an egress without UDP
//! segmentation offload). tun-rs's `send_multiple` does the same but copies
//! every packet into a fresh `Vec` (an allocation per packet) and needs 64 KiB
//! per buffer; this one appends into one buffer allocated once.
//!
//! What may be merged (the kernel's rules for UDP GRO, in short): same IP
//! version, same addresses, ports, TOS / traffic class, TTL / hop limit and DF;
//! no IPv4 options or IPv6 extension headers; no fragments; every datagram's
//! payload the size of the first, except a shorter last one. IPv4 datagrams
//! without DF must carry consecutive IDs, because segmentation numbers the
//! pieces from the first ID; with DF the ID carries no meaning (RFC 6864).

/// Most datagrams in one GSO packet (the kernel accepts up to 64 or 128,
/// depending on its version).
const MAX_SEGMENTS: u16 = 64;

/// The virtio-net header fields used here.
pub(crate) const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

/// A UDP GSO packet being built in a buffer owned by the worker.
pub(crate) struct UdpCoalescer {
    /// Virtio-net header length in front of the packet; 0 disables coalescing.
    off: usize,
    buf: Vec<u8>,
    /// Bytes of IP + UDP header (28 or 48); 0 when empty.
    hdr: usize,
    /// Payload bytes of each datagram but a shorter last one.
    seg: usize,
    /// Datagrams merged.
    count: u16,
    /// Packet length (from `off`).
    len: usize,
    /// A shorter datagram was appended: nothing may follow.
    closed: bool,
}

impl UdpCoalescer {
    /// A coalescer for devices with a virtio-net header of `off` bytes
    /// (0: the devices cannot take GSO packets, so it stays disabled).
    pub(crate) fn new(off: usize) -> UdpCoalescer {
        UdpCoalescer {
            off,
            buf: if off > 0 { vec![0u8; off + 65_535] } else { Vec::new() },
            hdr: 0,
            seg: 0,
            count: 0,
            len: 0,
            closed: false,
        }
    }

    /// Whether packets are coalesced at all.
    pub(crate) fn enabled(&self) -> bool {
        self.off > 0
    }

    /// Adds `frame` (the virtio-net header, then an IP packet) to the pending
    /// GSO packet. `Err` when it cannot join: not a plain UDP datagram, or not
    /// of the pending flow (then the caller flushes with
    /// [`UdpCoalescer::take`] and tries again).
    pub(crate) fn push(&mut self, frame: &[u8]) -> Result<(), ()> {
        let pkt = frame.get(self.off..).ok_or(())?;
        let hdr = udp_header_len(pkt).ok_or(())?;
        let payload = pkt.len() - hdr;
        if self.count == 0 {
            if payload == 0 {
                return Err(());
            }
            // With its virtio-net header: alone, it leaves as it came (its
            // checksum may be partial, for the kernel to complete).
            self.buf[..frame.len()].copy_from_slice(frame);
            self.hdr = hdr;
            self.seg = payload;
            self.count = 1;
            self.len = pkt.len();
            self.closed = false;
            return Ok(());
        }
        if self.closed
            || hdr != self.hdr
            || payload == 0
            || payload > self.seg
            || self.count >= MAX_SEGMENTS
            || self.len + payload > 65_535
            || !self.same_flow(pkt)
        {
            return Err(());
        }
        let end = self.off + self.len;
        self.buf[end..end + payload].copy_from_slice(&pkt[hdr..]);
        self.len += payload;
        self.count += 1;
        self.closed = payload < self.seg;
        Ok(())
    }

    /// Whether `pkt` (same header length) continues the pending flow.
    fn same_flow(&self, pkt: &[u8]) -> bool {
        let first = &self.buf[self.off..self.off + self.hdr];
        if self.hdr == 28 {
            let df = pkt[6] & 0x40 != 0;
            // Version/IHL, TOS; flags (DF); TTL, protocol; addresses and ports.
            if first[..2] != pkt[..2] || first[6..10] != pkt[6..10] || first[12..24] != pkt[12..24] {
                return false;
            }
            let id = |p: &[u8]| u16::from_be_bytes([p[4], p[5]]);
            df || id(pkt) == id(first).wrapping_add(self.count)
        } else {
            // Version, traffic class, flow label; next header, hop limit;
            // addresses and ports.
            first[..4] == pkt[..4] && first[6..44] == pkt[6..44]
        }
    }

    /// The pending packet with its virtio-net header, ready for one write, or
    /// `None` when nothing is pending. The coalescer is empty afterwards. A
    /// merged packet asks the kernel for the UDP checksum of each segment
    /// (the datagrams' own checksums may have been partial already).
    pub(crate) fn take(&mut self) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        let (off, len, hdr) = (self.off, self.len, self.hdr);
        let count = std::mem::replace(&mut self.count, 0);
        let (head, pkt) = self.buf.split_at_mut(off);
        if count > 1 {
            head.fill(0);
            let pkt = &mut pkt[..len];
            let udp_len = (len - (hdr - 8)) as u16;
            if hdr == 28 {
                pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                pkt[10..12].fill(0);
                let c = !fold(sum(&pkt[..20], 0));
                pkt[10..12].copy_from_slice(&c.to_be_bytes());
            } else {
                pkt[4..6].copy_from_slice(&udp_len.to_be_bytes());
            }
            let ip = hdr - 8;
            pkt[ip + 4..ip + 6].copy_from_slice(&udp_len.to_be_bytes());
            // The pseudo-header sum; the kernel adds the UDP header and payload
            // of each segment (NEEDS_CSUM, i.e. CHECKSUM_PARTIAL).
            let addrs = if hdr == 28 { &pkt[12..20] } else { &pkt[8..40] };
            let pseudo = fold(sum(addrs, 17 + u32::from(udp_len)));
            pkt[ip + 6..ip + 8].copy_from_slice(&pseudo.to_be_bytes());
            // struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size,
            // csum_start, csum_offset (little-endian on x86 and arm).
            head[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            head[1] = VIRTIO_NET_HDR_GSO_UDP_L4;
            head[2..4].copy_from_slice(&(hdr as u16).to_le_bytes());
            head[4..6].copy_from_slice(&(self.seg as u16).to_le_bytes());
            head[6..8].copy_from_slice(&(ip as u16).to_le_bytes());
            head[8..10].copy_from_slice(&6u16.to_le_bytes());
        }
        Some(&self.buf[..off + len])
    }
}

/// IP + UDP header length of a plain UDP datagram (IPv4 without options and
/// not a fragment, or IPv6 without extension headers) whose length fields
/// agree with `pkt`; `None` for anything else.
fn udp_header_len(pkt: &[u8]) -> Option<usize> {
    let hdr = match pkt.first()? >> 4 {
        4 if pkt.len() >= 28
            && pkt[0] == 0x45
            && pkt[9] == 17
            && usize::from(u16::from_be_bytes([pkt[2], pkt[3]])) == pkt.len()
            // No MF, offset 0 (DF may be set).
            && u16::from_be_bytes([pkt[6], pkt[7]]) & 0xbfff == 0 =>
        {
            28
        }
        6 if pkt.len() >= 48 && pkt[6] == 17 && usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 == pkt.len() => {
            48
        }
        _ => return None,
    };
    let udp_len = usize::from(u16::from_be_bytes([pkt[hdr - 4], pkt[hdr - 3]]));
    (udp_len + hdr - 8 == pkt.len()).then_some(hdr)
}

/// One's-complement sum of big-endian 16-bit words (even length).
fn sum(bytes: &[u8], init: u32) -> u32 {
    bytes.chunks_exact(2).fold(init, |a, w| a + u32::from(u16::from_be_bytes([w[0], w[1]])))
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    /// A frame: a zeroed 10-byte virtio-net header, then the datagram.
    fn udp4(id: u16, payload: usize) -> Vec<u8> {
        let mut v = vec![0u8; 10];
        PacketBuilder::ipv4([100, 64, 1, 10], [203, 0, 113, 25], 63)
            .udp(40000, 5201)
            .write(&mut v, &vec![7; payload])
            .unwrap();
        // etherparse sets DF; the ID goes in as given (checksum not refreshed:
        // the coalescer does not check it).
        v[14..16].copy_from_slice(&id.to_be_bytes());
        v
    }

    #[test]
    fn merges_a_flow_and_builds_the_gso_header() {
        let mut c = UdpCoalescer::new(10);
        for i in 0..3 {
            c.push(&udp4(100 + i, 36)).unwrap();
        }
        // Shorter last one closes the packet.
        c.push(&udp4(103, 20)).unwrap();
        assert!(c.push(&udp4(104, 20)).is_err());
        let out = c.take().unwrap().to_vec();
        assert_eq!(out.len(), 10 + 28 + 3 * 36 + 20);
        assert_eq!(out[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(out[1], VIRTIO_NET_HDR_GSO_UDP_L4);
        assert_eq!(u16::from_le_bytes([out[4], out[5]]), 36);
        let ip = &out[10..];
        assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
        assert_eq!(fold(sum(&ip[..20], 0)), 0xffff, "IPv4 header checksum");
        assert!(c.take().is_none());
    }

    #[test]
    fn one_datagram_leaves_unchanged_without_gso() {
        let mut c = UdpCoalescer::new(10);
        let mut p = udp4(1, 36);
        p[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM; // a partial checksum stays partial
        c.push(&p).unwrap();
        assert_eq!(c.take().unwrap(), &p[..]);
    }

    #[test]
    fn refuses_other_flows_gaps_and_non_udp() {
        let mut c = UdpCoalescer::new(10);
        let mut p = udp4(1, 36);
        p[16] = 0; // no DF: IDs must be consecutive
        c.push(&p).unwrap();
        let mut gap = p.clone();
        gap[14..16].copy_from_slice(&5u16.to_be_bytes());
        assert!(c.push(&gap).is_err());
        let mut next = p.clone();
        next[14..16].copy_from_slice(&2u16.to_be_bytes());
        let mut other = next.clone();
        other[33] ^= 1; // destination port
        assert!(c.push(&other).is_err());
        let mut tcp = next.clone();
        tcp[19] = 6;
        assert!(c.push(&tcp).is_err());
        c.push(&next).unwrap();
        let mut c = UdpCoalescer::new(10);
        c.push(&udp4(1, 36)).unwrap();
        assert!(c.push(&udp4(2, 40)).is_err(), "longer than the first");
    }
}
