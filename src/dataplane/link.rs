//! One queue of a device, as the workers see it: a TUN queue or an Ethernet
//! upstream socket. Both carry IP packets (after the virtio-net header when
//! offloading); the Ethernet framing stays inside [`super::eth`].

use std::io;
use std::time::Duration;

use tun_rs::{InterruptEvent, SyncDevice};

use super::eth::EthDev;

/// A device queue.
pub(crate) enum Link {
    /// A TUN queue.
    Tun(SyncDevice),
    /// An AF_PACKET socket on an Ethernet interface.
    Eth(EthDev),
}

impl Link {
    /// Reads one packet; `WouldBlock` when none is waiting.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tun(d) => d.recv(buf),
            Link::Eth(d) => d.recv(buf),
        }
    }

    /// Writes one packet.
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Tun(d) => d.send(buf),
            Link::Eth(d) => d.send(buf),
        }
    }

    /// Sends what [`Link::send`] queued (an Ethernet upstream batches small
    /// frames); the frames sent. A TUN sends at once: nothing to do.
    pub(crate) fn flush(&self) -> io::Result<usize> {
        match self {
            Link::Tun(_) => Ok(0),
            Link::Eth(d) => d.flush_tx(),
        }
    }

    /// Waits until readable, `stop` fires or `timeout` passes.
    pub(crate) fn wait_readable_intr_timeout(
        &self,
        stop: &InterruptEvent,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        match self {
            Link::Tun(d) => d.wait_readable_intr_timeout(stop, timeout),
            Link::Eth(d) => d.wait_readable(stop, timeout),
        }
    }

    /// Hands each packet whose next hop never answered to `f` (an Ethernet upstream only).
    pub(crate) fn take_unreachable(&self, f: impl FnMut(&[u8])) {
        if let Link::Eth(d) = self {
            d.take_unreachable(f);
        }
    }

    /// The neighbour table of an Ethernet upstream (`None` for a TUN).
    pub(crate) fn neighbours(&self) -> Option<std::sync::Arc<std::sync::Mutex<crate::state::neighbour::Neighbours>>> {
        match self {
            Link::Tun(_) => None,
            Link::Eth(d) => Some(d.neighbours()),
        }
    }

    /// Whether TCP super-packets pass (the virtio-net header is on).
    pub(crate) fn tcp_gso(&self) -> bool {
        match self {
            Link::Tun(d) => d.tcp_gso(),
            Link::Eth(d) => d.tcp_gso(),
        }
    }
}
