//! The Ethernet upstream device: an AF_PACKET socket per worker queue on an
//! existing interface (docs/UPLINK.md says why AF_PACKET), presenting IP
//! packets to the workers exactly as a TUN queue does: the Ethernet header is
//! taken off on receive and put on on send, at this edge only.
//!
//! - Receive: `recvmsg` scatters each frame into [virtio header | Ethernet
//!   header (a local array) | IP packet at the worker's offset], so the IP
//!   packet lands where the TUN path puts it, uncopied. ARP and neighbour
//!   discovery frames go to the neighbour table instead; frames for other
//!   hosts and other protocols are skipped.
//! - Send: the next hop's MAC comes from the queue's [`FastPath`] when it is
//!   a resolved gateway (an atomic read: no lock, no clock), else from the
//!   neighbour table (held or dropped while unresolved). A frame of up to
//!   2 KiB is copied into the queue's batch ([`TxBatch`]), which leaves in
//!   one `sendmmsg` at the end of the worker's drain (or when 64 wait); a
//!   larger one (a TCP super-packet) goes after the batch with `sendmsg`
//!   gathering [virtio header | Ethernet header | IP packet], uncopied.
//! - With offload the socket carries a virtio-net header (`PACKET_VNET_HDR`),
//!   whose offsets count from the Ethernet header: shifted by its 14 bytes
//!   each way, so the workers see the TUN's convention.
//! - Several queues: one socket each in one `PACKET_FANOUT_HASH` group.
//!
//! One receive system call per frame: a TPACKET_V3 receive ring took more
//! small packets but added its block timeout (~0.7 ms) to every round trip
//! and cost TCP a quarter; a TPACKET_V2 ring won nothing (docs/UPLINK.md,
//! "Receive rings, measured").

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::libc;
use tun_rs::InterruptEvent;

use super::txbatch::TxBatch;
use crate::config::{DeviceConfig, LinkConfig};
use crate::state::neighbour::{FastPath, Handled, LinkConfig as NeighbourLink, Lookup, Neighbours, Timers, Transmit};

const ETH_LEN: usize = 14;
const ETH_P_ALL: u16 = 0x0003;
const ETHERTYPE_V4: u16 = 0x0800;
const ETHERTYPE_V6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;
/// Longest frame handed to the neighbour table (ARP and NDP are small).
const NEIGHBOUR_FRAME: usize = 1514;
/// Most packets whose next hop never answered waiting for their ICMP error.
const UNREACHABLE_MAX: usize = 64;
/// Fast-path sends between two looks at the neighbour table's timers.
const MAINTAIN_EVERY: u32 = 1024;
/// Longest slice of a wait, so a shutdown is seen this soon.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// One queue of an Ethernet upstream.
#[derive(Debug)]
pub(crate) struct EthDev {
    fd: OwnedFd,
    /// The interface the socket is bound to; the kernel unbinds it (-1) when the interface goes.
    ifindex: libc::c_int,
    mac: [u8; 6],
    /// Length of the virtio-net header in front of each packet (0 or 10).
    off: usize,
    neighbours: Arc<Mutex<Neighbours>>,
    /// This queue's way to a resolved gateway's MAC without the table's lock.
    fast: FastPath,
    /// Packets whose next hop never answered (a slow path: copies, bounded).
    unreachable: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Small frames waiting for one `sendmmsg` ([`EthDev::flush_tx`]).
    tx: Mutex<TxBatch>,
    /// Whether `tx` holds frames; written under its lock, read without it,
    /// so a drain with nothing queued (the reverse direction's worker, each
    /// wake-up) does not wait for a worker that is inside `sendmmsg`.
    queued: AtomicBool,
    /// Packets sent through the fast path (roughly: several threads may
    /// send); every [`MAINTAIN_EVERY`]th runs the table's timers, so a queue
    /// that never runs dry still re-probes its gateways.
    fast_sends: std::sync::atomic::AtomicU32,
}

fn cvt(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setopt(fd: &OwnedFd, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value is a live c_int of the length given.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, name, (&value as *const libc::c_int).cast(), len) };
    cvt(rc.into()).map(|_| ())
}

/// The interface's MAC address, read in the calling thread's namespace.
fn mac_of(name: &str) -> io::Result<[u8; 6]> {
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if ifa.interface_name != name {
            continue;
        }
        if let Some(mac) = ifa.address.as_ref().and_then(|a| a.as_link_addr()).and_then(|l| l.addr()) {
            return Ok(mac);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("{name} has no Ethernet address")))
}

/// Opens `queues` sockets on `cfg`'s interface in the calling thread's namespace.
pub(crate) fn open(cfg: &DeviceConfig, link: &LinkConfig, offload: bool, queues: usize) -> io::Result<Vec<EthDev>> {
    let ifindex = nix::net::if_::if_nametoindex(cfg.tun.as_str()).map_err(io::Error::from)?;
    let mac = mac_of(&cfg.tun)?;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in &link.addresses {
        match a {
            IpNet::V4(n) => v4.push(*n),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    let table = NeighbourLink { mac, v4, v6, gateways: link.gateways.clone() };
    let table = Neighbours::new(&table, Timers::default(), Instant::now());
    let fast = table.fast_path();
    let neighbours = Arc::new(Mutex::new(table));
    let unreachable = Arc::new(Mutex::new(Vec::with_capacity(UNREACHABLE_MAX)));
    let group = (std::process::id() & 0xffff) as libc::c_int;
    let mut out = Vec::with_capacity(queues.max(1));
    for _ in 0..queues.max(1) {
        // Protocol 0: nothing arrives before the bind below names the interface.
        // SAFETY: plain socket(2); the fd is owned at once.
        let raw = cvt(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
        }
        .into())?;
        // SAFETY: raw is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        setopt(&fd, libc::PACKET_IGNORE_OUTGOING, 1)?;
        setopt(&fd, libc::PACKET_QDISC_BYPASS, 1)?;
        if offload {
            setopt(&fd, libc::PACKET_VNET_HDR, 1)?;
        }
        let off = if offload { tun_rs::VIRTIO_NET_HDR_LEN } else { 0 };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields set below complete it.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: sll is a valid sockaddr_ll of that length.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) };
        cvt(rc.into())?;
        if queues > 1 {
            setopt(&fd, libc::PACKET_FANOUT, group | ((libc::PACKET_FANOUT_HASH as libc::c_int) << 16))?;
        }
        out.push(EthDev {
            fd,
            ifindex: ifindex as libc::c_int,
            mac,
            off,
            neighbours: Arc::clone(&neighbours),
            fast: fast.clone(),
            unreachable: Arc::clone(&unreachable),
            tx: Mutex::new(TxBatch::new()),
            queued: AtomicBool::new(false),
            fast_sends: std::sync::atomic::AtomicU32::new(0),
        });
    }
    Ok(out)
}

/// Shifts the offsets of a virtio-net header (`hdr_len`, `csum_start`) by `delta` bytes.
fn shift_vnet(hdr: &mut [u8], delta: i32) {
    for at in [2usize, 6] {
        let Some(b) = hdr.get_mut(at..at + 2) else { return };
        let v = i32::from(u16::from_ne_bytes([b[0], b[1]]));
        if v != 0 {
            let n = u16::try_from((v + delta).max(0)).unwrap_or(0);
            b.copy_from_slice(&n.to_ne_bytes());
        }
    }
}

/// The destination of an IP packet.
fn destination(ip: &[u8]) -> Option<IpAddr> {
    match ip.first()? >> 4 {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?))),
        _ => None,
    }
}

impl EthDev {
    fn table(&self) -> MutexGuard<'_, Neighbours> {
        // A poisoned lock: a panic elsewhere already stops op25b; the table is still consistent per call.
        self.neighbours.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the interface is gone: the kernel unbinds the socket when it is
    /// deleted (or leaves the namespace), and reports ENETDOWN (link down,
    /// a pause the TUN path also rides out) or ENXIO (no device) first.
    fn gone(&self) -> bool {
        // SAFETY: an all-zero sockaddr_ll is valid to receive the name into.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: sll and len are valid out-parameters of that size.
        let rc =
            unsafe { libc::getsockname(self.fd.as_raw_fd(), (&mut sll as *mut libc::sockaddr_ll).cast(), &mut len) };
        rc == 0 && sll.sll_ifindex != self.ifindex
    }

    /// `e`, or EBADFD (what a deleted TUN answers, see `fault::is_lost`) when the interface is gone.
    fn classify(&self, e: io::Error) -> io::Error {
        let suspect = matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV));
        if suspect && self.gone() {
            return io::Error::from_raw_os_error(libc::EBADFD);
        }
        e
    }

    /// The neighbour table the queues share (read for the counters).
    pub(crate) fn neighbours(&self) -> Arc<Mutex<Neighbours>> {
        Arc::clone(&self.neighbours)
    }

    /// Whether the socket carries a virtio-net header (GSO super-packets).
    pub(crate) fn tcp_gso(&self) -> bool {
        self.off > 0
    }

    /// Receives the next IP packet for the router into `buf` (virtio header
    /// at 0 when offloading, the IP packet after it); `WouldBlock` when none.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let off = self.off;
        loop {
            let mut eth = [0u8; ETH_LEN];
            // SAFETY: an all-zero sockaddr_ll is valid to receive into.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let (head, body) = buf.split_at_mut(off);
            let mut iov = [
                libc::iovec { iov_base: head.as_mut_ptr().cast(), iov_len: head.len() },
                libc::iovec { iov_base: eth.as_mut_ptr().cast(), iov_len: ETH_LEN },
                libc::iovec { iov_base: body.as_mut_ptr().cast(), iov_len: body.len() },
            ];
            // SAFETY: an all-zero msghdr is valid; the pointers set below live through the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let skip = usize::from(off == 0);
            msg.msg_iov = iov[skip..].as_mut_ptr();
            msg.msg_iovlen = 3 - skip;
            // SAFETY: msg describes live buffers.
            let n = cvt(unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) } as libc::c_long);
            let n = match n {
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.maintain();
                    return Err(e);
                }
                Err(e) => return Err(self.classify(e)),
            };
            if n < off + ETH_LEN || msg.msg_flags & libc::MSG_TRUNC != 0 || sll.sll_pkttype == libc::PACKET_OTHERHOST {
                continue;
            }
            let len = n - off - ETH_LEN;
            let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
            let ndp = ethertype == ETHERTYPE_V6 && len > 40 && body[6] == 58 && matches!(body[40], 135 | 136);
            match ethertype {
                ETHERTYPE_V4 | ETHERTYPE_V6 if !ndp => {
                    shift_vnet(&mut buf[..off], -(ETH_LEN as i32));
                    return Ok(off + len);
                }
                ETHERTYPE_ARP | ETHERTYPE_V6 => self.neighbour_frame(&eth, &buf[off..off + len]),
                _ => {}
            }
        }
    }

    /// Hands an ARP or NDP frame to the table and sends its answers.
    fn neighbour_frame(&self, eth: &[u8; ETH_LEN], payload: &[u8]) {
        let mut frame = [0u8; NEIGHBOUR_FRAME];
        let Some(dst) = frame.get_mut(ETH_LEN..ETH_LEN + payload.len()) else { return };
        dst.copy_from_slice(payload);
        frame[..ETH_LEN].copy_from_slice(eth);
        let mut table = self.table();
        if table.handle_frame(Instant::now(), &frame[..ETH_LEN + payload.len()]) == Handled::Consumed {
            self.flush(&mut table);
        }
    }

    /// Runs the table's due timers and sends what it has. Called when a read
    /// finds the socket empty, on each idle wait slice and every
    /// [`MAINTAIN_EVERY`] fast-path sends: when another worker holds the
    /// table, its timers wait for the next of these rather than this worker
    /// for the lock.
    fn maintain(&self) {
        let mut table = match self.neighbours.try_lock() {
            Ok(table) => table,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let now = Instant::now();
        if table.poll_timeout().is_some_and(|at| at <= now) {
            table.handle_timeout(now);
        }
        if table.wants_transmit() {
            self.flush(&mut table);
        }
    }

    /// Sends the table's frames; packets whose next hop never answered wait
    /// for [`EthDev::take_unreachable`].
    fn flush(&self, table: &mut Neighbours) {
        let mut out = [0u8; 2048];
        while let Some(t) = table.poll_transmit(&mut out) {
            match t {
                Transmit::Frame(len) => {
                    let zero = [0u8; tun_rs::VIRTIO_NET_HDR_LEN];
                    let parts: [&[u8]; 2] = [&zero[..self.off], &out[..len]];
                    if let Err(e) = self.sendmsg(&parts) {
                        tracing::debug!(error = %e, "neighbour frame not sent");
                    }
                }
                Transmit::Unreachable(len) => {
                    let mut list = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
                    if list.len() < UNREACHABLE_MAX {
                        list.push(out[..len].to_vec());
                    } else {
                        tracing::debug!("next hop unreachable: too many waiting, packet dropped without an error");
                    }
                }
            }
        }
    }

    fn sendmsg(&self, parts: &[&[u8]]) -> io::Result<usize> {
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 3];
        let mut n = 0;
        for p in parts.iter().filter(|p| !p.is_empty()).take(3) {
            iov[n] = libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() };
            n += 1;
        }
        // SAFETY: an all-zero msghdr is valid (bound socket: no address).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        // SAFETY: msg describes live, readable buffers.
        cvt(unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT) } as libc::c_long).map(|n| n as usize)
    }

    /// Sends an IP packet (after the virtio header when offloading) to its next hop.
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let off = self.off;
        let ip = buf.get(off..).unwrap_or_default();
        let dst = destination(ip).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP packet"))?;
        let mac = if let Some(mac) = self.fast.gateway_mac(dst) {
            use std::sync::atomic::Ordering::Relaxed;
            let n = self.fast_sends.load(Relaxed).wrapping_add(1);
            self.fast_sends.store(n, Relaxed);
            if n % MAINTAIN_EVERY == 0 {
                self.maintain();
            }
            mac
        } else {
            let mut table = self.table();
            let r = table.lookup(Instant::now(), dst, ip);
            if table.wants_transmit() {
                self.flush(&mut table);
            }
            match r {
                Lookup::Mac(mac) => mac,
                Lookup::Held => return Ok(buf.len()),
                Lookup::Dropped => {
                    return Err(io::Error::new(io::ErrorKind::WouldBlock, "next hop unresolved, its queue full"))
                }
                Lookup::NoRoute => return Err(io::Error::new(io::ErrorKind::NotFound, "no gateway for this family")),
            }
        };
        let ethertype = if ip[0] >> 4 == 6 { ETHERTYPE_V6 } else { ETHERTYPE_V4 };
        let mut eth = [0u8; ETH_LEN];
        eth[..6].copy_from_slice(&mac);
        eth[6..12].copy_from_slice(&self.mac);
        eth[12..].copy_from_slice(&ethertype.to_be_bytes());
        let mut vnet = [0u8; tun_rs::VIRTIO_NET_HDR_LEN];
        vnet[..off].copy_from_slice(&buf[..off]);
        shift_vnet(&mut vnet[..off], ETH_LEN as i32);
        let parts: [&[u8]; 3] = [&vnet[..off], &eth, ip];
        {
            let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            if tx.push(&parts) {
                if tx.is_full() {
                    self.queued.store(false, Ordering::Relaxed);
                    tx.send(&self.fd).map_err(|e| self.classify(e))?;
                } else {
                    self.queued.store(true, Ordering::Relaxed);
                }
                // What a sendmsg would have counted: the packet and its virtio-net header.
                return Ok(off + ip.len());
            }
            // Too long for the batch: what is queued leaves first, in order.
            self.queued.store(false, Ordering::Relaxed);
            tx.send(&self.fd).map_err(|e| self.classify(e))?;
        }
        self.sendmsg(&parts).map(|n| n.saturating_sub(ETH_LEN)).map_err(|e| self.classify(e))
    }

    /// Sends the small frames queued by [`EthDev::send`] (one `sendmmsg`);
    /// the worker calls it at the end of each drain.
    pub(crate) fn flush_tx(&self) -> io::Result<usize> {
        // Nothing queued, or another worker has taken the batch to send it:
        // no lock (a worker sends its batch while holding it).
        if !self.queued.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        self.queued.store(false, Ordering::Relaxed);
        tx.send(&self.fd).map_err(|e| self.classify(e))
    }

    /// Hands each packet whose next hop never answered to `f` (which answers its sender).
    pub(crate) fn take_unreachable(&self, mut f: impl FnMut(&[u8])) {
        let taken = {
            let mut list = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
            if list.is_empty() {
                return;
            }
            std::mem::take(&mut *list)
        };
        for p in &taken {
            f(p);
        }
    }

    /// Waits until a frame is readable, `stop` fires (`Interrupted`) or `timeout` passes (`TimedOut`).
    pub(crate) fn wait_readable(&self, stop: &InterruptEvent, timeout: Option<Duration>) -> io::Result<()> {
        let until = timeout.map(|t| Instant::now() + t);
        loop {
            if stop.is_trigger() {
                return Err(io::Error::from(io::ErrorKind::Interrupted));
            }
            let left = until.map_or(WAIT_SLICE, |u| u.saturating_duration_since(Instant::now()).min(WAIT_SLICE));
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let rc = cvt(unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) }.into());
            match rc {
                Ok(0) if until.is_some_and(|u| Instant::now() >= u) => {
                    return Err(io::Error::from(io::ErrorKind::TimedOut))
                }
                Ok(0) => {
                    // Idle: the neighbour table's timers still run.
                    self.maintain();
                }
                Ok(_) if pfd.revents & libc::POLLIN != 0 => return Ok(()),
                // POLLERR: the socket has an error; the next read reports it (and whether the interface is gone).
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
