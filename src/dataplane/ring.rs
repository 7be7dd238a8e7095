//! The receive ring of an AF_PACKET socket (`PACKET_RX_RING`, mmap): the
//! kernel writes each frame into memory shared with op25b and flips its
//! status; op25b reads frames without a system call while the ring has
//! some, and polls only when it is empty.
//!
//! Two layouts (docs/UPLINK.md has the measurement that chose between them):
//! - `TPACKET_V2`: fixed frame slots, one status word each; the kernel wakes
//!   the reader for every frame, so a lone packet waits for nothing.
//! - `TPACKET_V3`: variable-size frames packed into blocks; the kernel hands
//!   a block over when it is full or when its retire timer (1 ms here) fires,
//!   and wakes the reader only then.
//!
//! With `PACKET_VNET_HDR` the kernel puts the virtio-net header right in
//! front of the Ethernet header of each frame.
//!
//! Invariants: one reader at a time (the queue's drain lock); a frame is read
//! only while its slot or block belongs to user space (status
//! `TP_STATUS_USER`, read with acquire ordering) and handed back (release
//! ordering) once copied out; the mapping lives as long as the ring.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use nix::libc;

/// The ring's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // One layout is in use at a time (eth::RX_RING).
pub(crate) enum Layout {
    /// Fixed slots, a wake-up per frame.
    V2,
    /// Blocks retired when full or after a timeout.
    V3,
}

/// V3: bytes per block (a 64 KiB super-packet fits with room to spare).
const V3_BLOCK: usize = 1 << 18;
/// V3: blocks in the ring.
const V3_BLOCKS: usize = 16;
/// V3: how long a block that is not full waits before it is handed over, ms.
const V3_RETIRE_MS: u32 = 1;
/// V2: slots in the ring.
const V2_SLOTS: usize = 128;

/// One frame as the kernel wrote it.
pub(crate) struct Frame<'a> {
    /// The virtio-net header (empty without offload), then the Ethernet frame.
    pub(crate) data: &'a [u8],
    /// Whether the frame was cut to fit its slot (then it is not whole).
    pub(crate) truncated: bool,
    /// `sll_pkttype`: to this host, broadcast, multicast, another host.
    pub(crate) pkttype: u8,
}

/// A receive ring mapped from a packet socket.
#[derive(Debug)]
pub(crate) struct RxRing {
    base: NonNull<u8>,
    len: usize,
    layout: Layout,
    /// Bytes per slot (V2) or block (V3).
    unit: usize,
    units: usize,
    /// Length of the virtio-net header in front of each frame.
    vnet: usize,
    /// The slot or block to read next.
    cursor: AtomicUsize,
    /// V3: frames left in the current block (0: the block is not taken yet).
    left: AtomicU32,
    /// V3: offset of the next frame in the current block.
    next: AtomicUsize,
}

// SAFETY: the ring is plain shared memory owned by this value; all reading is
// done by one thread at a time (the queue's drain lock) and follows the
// status protocol above; the cursor fields are atomics.
unsafe impl Send for RxRing {}
// SAFETY: as above.
unsafe impl Sync for RxRing {}

fn setopt<T>(fd: &OwnedFd, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value is a live T of the length given.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, name, (value as *const T).cast(), len) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn align(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

impl RxRing {
    /// Sets up and maps a ring on `fd` (before it is bound), for frames of
    /// up to `max_frame` bytes (Ethernet header included) behind a `vnet`-byte
    /// virtio-net header.
    pub(crate) fn new(fd: &OwnedFd, layout: Layout, max_frame: usize, vnet: usize) -> io::Result<RxRing> {
        let page = 4096;
        let version = match layout {
            Layout::V2 => libc::tpacket_versions::TPACKET_V2 as libc::c_int,
            Layout::V3 => libc::tpacket_versions::TPACKET_V3 as libc::c_int,
        };
        setopt(fd, libc::PACKET_VERSION, &version)?;
        let (unit, units) = match layout {
            Layout::V2 => {
                // Header, then the MAC header at a 16-byte boundary after the vnet header.
                let slot = align(libc::TPACKET2_HDRLEN + 16 + vnet + max_frame, page);
                let req = libc::tpacket_req {
                    tp_block_size: slot as libc::c_uint,
                    tp_block_nr: V2_SLOTS as libc::c_uint,
                    tp_frame_size: slot as libc::c_uint,
                    tp_frame_nr: V2_SLOTS as libc::c_uint,
                };
                setopt(fd, libc::PACKET_RX_RING, &req)?;
                (slot, V2_SLOTS)
            }
            Layout::V3 => {
                let req = libc::tpacket_req3 {
                    tp_block_size: V3_BLOCK as libc::c_uint,
                    tp_block_nr: V3_BLOCKS as libc::c_uint,
                    tp_frame_size: 2048,
                    tp_frame_nr: (V3_BLOCK / 2048 * V3_BLOCKS) as libc::c_uint,
                    tp_retire_blk_tov: V3_RETIRE_MS,
                    tp_sizeof_priv: 0,
                    tp_feature_req_word: 0,
                };
                setopt(fd, libc::PACKET_RX_RING, &req)?;
                (V3_BLOCK, V3_BLOCKS)
            }
        };
        let len = unit * units;
        // SAFETY: a fresh shared mapping of the socket's ring, of the size set up above.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(RxRing {
            base,
            len,
            layout,
            unit,
            units,
            vnet,
            cursor: AtomicUsize::new(0),
            left: AtomicU32::new(0),
            next: AtomicUsize::new(0),
        })
    }

    /// The status word at `offset` of the mapping.
    fn status(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= self.len && offset % 4 == 0);
        // SAFETY: offset is inside the mapping and 4-aligned (slot and block
        // starts are page-aligned; the status fields sit at fixed offsets).
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) }
    }

    /// A u32 / u16 of a header the kernel handed over.
    fn read_u32(&self, offset: usize) -> u32 {
        // SAFETY: inside the mapping (headers lie within their slot or block).
        unsafe { self.base.as_ptr().add(offset).cast::<u32>().read_unaligned() }
    }

    fn read_u16(&self, offset: usize) -> u16 {
        // SAFETY: as for read_u32.
        unsafe { self.base.as_ptr().add(offset).cast::<u16>().read_unaligned() }
    }

    /// Hands the next frame to `f` and gives its room back to the kernel;
    /// `None` when the ring holds no frame.
    pub(crate) fn next<R>(&self, f: impl FnOnce(Frame<'_>) -> R) -> Option<R> {
        match self.layout {
            Layout::V2 => self.next_v2(f),
            Layout::V3 => self.next_v3(f),
        }
    }

    /// The frame of the header at `hdr` whose fields are given; an empty,
    /// truncated one if they point outside its slot or block (never from
    /// this kernel).
    fn frame(&self, hdr: usize, end: usize, (mac, snaplen, len, sll): (usize, usize, usize, usize)) -> Frame<'_> {
        let start = (hdr + mac).saturating_sub(self.vnet);
        let stop = hdr + mac + snaplen;
        if start < hdr || stop > end {
            return Frame { data: &[], truncated: true, pkttype: 0 };
        }
        // SAFETY: [start, stop) lies inside this slot or block, which belongs to
        // user space until it is handed back after the caller's closure.
        let data = unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), stop - start) };
        // sockaddr_ll: family u16, protocol u16, ifindex i32, hatype u16, pkttype u8.
        let pkttype = if hdr + sll + 11 <= end {
            // SAFETY: inside the slot or block.
            unsafe { *self.base.as_ptr().add(hdr + sll + 10) }
        } else {
            0
        };
        Frame { data, truncated: snaplen < len, pkttype }
    }

    fn next_v2<R>(&self, f: impl FnOnce(Frame<'_>) -> R) -> Option<R> {
        let slot = self.cursor.load(Ordering::Relaxed);
        let hdr = slot * self.unit;
        let status = self.status(hdr);
        if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // tpacket2_hdr: status, len, snaplen (u32), mac, net (u16).
        let len = self.read_u32(hdr + 4) as usize;
        let snaplen = self.read_u32(hdr + 8) as usize;
        let mac = usize::from(self.read_u16(hdr + 12));
        let sll = align(std::mem::size_of::<libc::tpacket2_hdr>(), libc::TPACKET_ALIGNMENT);
        let r = f(self.frame(hdr, hdr + self.unit, (mac, snaplen, len, sll)));
        status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.cursor.store((slot + 1) % self.units, Ordering::Relaxed);
        Some(r)
    }

    fn next_v3<R>(&self, f: impl FnOnce(Frame<'_>) -> R) -> Option<R> {
        let block = self.cursor.load(Ordering::Relaxed);
        let base = block * self.unit;
        // tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
        // block_status, num_pkts, offset_to_first_pkt.
        let status = self.status(base + 8);
        let mut left = self.left.load(Ordering::Relaxed);
        if left == 0 {
            if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                return None;
            }
            left = self.read_u32(base + 12);
            if left == 0 {
                // An empty block (retired by its timer with nothing): back to the kernel.
                self.release_block(block);
                return self.next_v3(f);
            }
            self.next.store(base + self.read_u32(base + 16) as usize, Ordering::Relaxed);
        }
        let hdr = self.next.load(Ordering::Relaxed);
        // tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status (u32), mac, net (u16).
        let next_offset = self.read_u32(hdr) as usize;
        let snaplen = self.read_u32(hdr + 12) as usize;
        let len = self.read_u32(hdr + 16) as usize;
        let mac = usize::from(self.read_u16(hdr + 24));
        let sll = align(std::mem::size_of::<libc::tpacket3_hdr>(), libc::TPACKET_ALIGNMENT);
        let r = f(self.frame(hdr, base + self.unit, (mac, snaplen, len, sll)));
        left -= 1;
        if left == 0 || next_offset == 0 {
            self.left.store(0, Ordering::Relaxed);
            self.release_block(block);
        } else {
            self.left.store(left, Ordering::Relaxed);
            self.next.store(hdr + next_offset, Ordering::Relaxed);
        }
        Some(r)
    }

    fn release_block(&self, block: usize) {
        self.status(block * self.unit + 8).store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.cursor.store((block + 1) % self.units, Ordering::Relaxed);
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
