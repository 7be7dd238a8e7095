//! The responder's side of smoltcp's `phy::Device`: the segment being handed
//! in (borrowed, never copied) and a ring of fixed transmit slots, allocated
//! once, that the data plane empties through `poll_transmit`.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;

/// Most packets waiting to be sent.
pub const QUEUE: usize = 256;
/// Largest packet the responder sends (its interface MTU).
pub const SLOT: usize = 1500;

/// Packets the responder built and the data plane has not sent yet.
pub(crate) struct TxRing {
    bytes: Box<[u8]>,
    lens: Box<[u16]>,
    head: usize,
    len: usize,
    /// What smoltcp writes when the ring is full: thrown away.
    spill: Box<[u8]>,
    /// Packets thrown away because the ring was full.
    pub(crate) overflows: u64,
}

impl TxRing {
    pub(crate) fn new() -> TxRing {
        TxRing {
            bytes: vec![0; QUEUE * SLOT].into_boxed_slice(),
            lens: vec![0; QUEUE].into_boxed_slice(),
            head: 0,
            len: 0,
            spill: vec![0; SLOT].into_boxed_slice(),
            overflows: 0,
        }
    }

    /// The oldest packet, if any; it stays in the ring until [`TxRing::pop`].
    pub(crate) fn front(&self) -> Option<&[u8]> {
        (self.len > 0).then(|| &self.bytes[self.head * SLOT..][..usize::from(self.lens[self.head])])
    }

    pub(crate) fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % QUEUE;
            self.len -= 1;
        }
    }

    fn push_with<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.len == QUEUE || len > SLOT {
            self.overflows += 1;
            // The interface MTU keeps `len` within a slot; a longer one
            // would be a smoltcp bug, and is dropped like an overflow.
            let mut big;
            let buf = if len <= SLOT {
                &mut self.spill[..len]
            } else {
                big = vec![0; len];
                &mut big[..]
            };
            return f(buf);
        }
        let at = (self.head + self.len) % QUEUE;
        let r = f(&mut self.bytes[at * SLOT..][..len]);
        // `len` <= SLOT = 1500 fits in u16.
        self.lens[at] = len as u16;
        self.len += 1;
        r
    }
}

/// One poll's device: at most one received segment, and the transmit ring.
pub(crate) struct Link<'a> {
    pub(crate) rx: Option<&'a [u8]>,
    pub(crate) tx: &'a mut TxRing,
}

pub(crate) struct RxToken<'a>(&'a [u8]);
pub(crate) struct TxToken<'a>(&'a mut TxRing);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.push_with(len, f)
    }
}

impl Device for Link<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.take()?;
        Some((RxToken(packet), TxToken(&mut *self.tx)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut *self.tx))
    }
}

/// The packets come from the kernel of the subscriber side through the TUN,
/// often with checksums left to offload: do not verify on receive, compute
/// on transmit.
pub(crate) fn capabilities() -> DeviceCapabilities {
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    checksum.icmpv6 = Checksum::Tx;
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = SLOT;
    caps.checksum = checksum;
    caps
}
