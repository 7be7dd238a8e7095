//! AF_XDP in copy mode, by hand: a UMEM with its fill, rx, tx and
//! completion rings, an XSKMAP and a six-instruction XDP program that
//! redirects queue 0 into it (raw bpf(2); closing the link detaches it).

use nix::libc;
use std::io::{Error, Result};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{check, ifindex, setopt, BATCH};

pub(super) fn bpf(cmd: libc::c_long, attr: &mut [u8; 128], what: &str) -> Result<i32> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    check(rc, what).map(|fd| fd as i32)
}

pub(super) fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// An XSKMAP and an XDP program that redirects queue 0 into it, attached to `ifx`.
/// Returns (map fd, link fd); closing the link detaches the program.
pub(super) fn xdp_redirect(ifx: u32) -> Result<(i32, i32)> {
    let mut a = [0u8; 128];
    put(&mut a, 0, &17u32.to_ne_bytes()); // BPF_MAP_TYPE_XSKMAP
    put(&mut a, 4, &4u32.to_ne_bytes());
    put(&mut a, 8, &4u32.to_ne_bytes());
    put(&mut a, 12, &1u32.to_ne_bytes());
    let map = bpf(0, &mut a, "map create")?;
    // r2 = ctx->rx_queue_index; r1 = map; r3 = XDP_PASS; call redirect_map; exit
    let insn = |code: u8, regs: u8, off: i16, imm: i32| {
        let mut i = [0u8; 8];
        i[0] = code;
        i[1] = regs;
        i[2..4].copy_from_slice(&off.to_ne_bytes());
        i[4..8].copy_from_slice(&imm.to_ne_bytes());
        i
    };
    let prog: [[u8; 8]; 6] = [
        insn(0x61, 0x12, 16, 0),
        insn(0x18, 0x11, 0, map),
        insn(0, 0, 0, 0),
        insn(0xb7, 0x03, 0, 2),
        insn(0x85, 0, 0, 51),
        insn(0x95, 0, 0, 0),
    ];
    let license = b"GPL\0";
    let mut a = [0u8; 128];
    put(&mut a, 0, &6u32.to_ne_bytes()); // BPF_PROG_TYPE_XDP
    put(&mut a, 4, &(prog.len() as u32).to_ne_bytes());
    put(&mut a, 8, &(prog.as_ptr() as u64).to_ne_bytes());
    put(&mut a, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut a, 68, &37u32.to_ne_bytes()); // BPF_XDP
    let pfd = bpf(5, &mut a, "prog load")?;
    let mut a = [0u8; 128];
    put(&mut a, 0, &(pfd as u32).to_ne_bytes());
    put(&mut a, 4, &ifx.to_ne_bytes());
    put(&mut a, 8, &37u32.to_ne_bytes());
    let link = bpf(28, &mut a, "link create")?;
    // SAFETY: pfd is ours; the link holds the program.
    unsafe { libc::close(pfd) };
    Ok((map, link))
}

const XSK_FRAMES: u32 = 4096;
const XSK_RING: u32 = 2048;
const CHUNK: u32 = 2048;

/// One AF_XDP ring mapped from the socket: producer, consumer, descriptors.
struct Ring {
    /// The mapping (it holds a reference to the socket until unmapped).
    map: (*mut libc::c_void, usize),
    prod: *mut u32,
    cons: *mut u32,
    desc: *mut u8,
}

impl Ring {
    fn map(fd: i32, off: &libc::xdp_ring_offset, pgoff: i64, desc_size: usize) -> Result<Ring> {
        let len = off.desc as usize + XSK_RING as usize * desc_size;
        // SAFETY: mapping the ring at the offset the kernel gave for fd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::last_os_error());
        }
        let b = base.cast::<u8>();
        // SAFETY: offsets are inside the mapping (from XDP_MMAP_OFFSETS).
        unsafe {
            Ok(Ring {
                map: (base, len),
                prod: b.add(off.producer as usize).cast(),
                cons: b.add(off.consumer as usize).cast(),
                desc: b.add(off.desc as usize),
            })
        }
    }
    fn load(p: *mut u32) -> u32 {
        // SAFETY: p points into a live ring mapping; the kernel updates it concurrently.
        unsafe { (*(p as *const std::sync::atomic::AtomicU32)).load(Ordering::Acquire) }
    }
    fn store(p: *mut u32, v: u32) {
        // SAFETY: as in load.
        unsafe { (*(p as *const std::sync::atomic::AtomicU32)).store(v, Ordering::Release) }
    }
}

/// An AF_XDP socket in copy mode on `dev` queue 0 with its UMEM and four rings.
pub(super) struct Xsk {
    pub(super) fd: i32,
    umem: *mut u8,
    fill: Ring,
    comp: Ring,
    rx: Ring,
    tx: Ring,
}

impl Xsk {
    pub(super) fn new(dev: &str) -> Result<Xsk> {
        // SAFETY: plain socket(2).
        let fd = check(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) } as _, "xsk socket")? as i32;
        let len = (XSK_FRAMES * CHUNK) as usize;
        // SAFETY: anonymous mapping for the UMEM.
        let umem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if umem == libc::MAP_FAILED {
            return Err(Error::last_os_error());
        }
        let reg = libc::xdp_umem_reg {
            addr: umem as u64,
            len: len as u64,
            chunk_size: CHUNK,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setopt(fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg, "umem reg")?;
        for opt in [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING] {
            setopt(fd, libc::SOL_XDP, opt, &XSK_RING, "ring size")?;
        }
        // SAFETY: zeroed offsets are valid; the kernel fills them.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut olen = std::mem::size_of_val(&off) as u32;
        // SAFETY: off and olen are valid out-parameters.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut olen,
            )
        };
        check(rc as _, "mmap offsets")?;
        let x = Xsk {
            fd,
            umem: umem.cast(),
            fill: Ring::map(fd, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING as i64, 8)?,
            comp: Ring::map(fd, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64, 8)?,
            rx: Ring::map(fd, &off.rx, libc::XDP_PGOFF_RX_RING, 16)?,
            tx: Ring::map(fd, &off.tx, libc::XDP_PGOFF_TX_RING, 16)?,
        };
        let sxdp = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex(dev)?,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: 0,
        };
        // A closed socket's hold on the queue is released asynchronously: retry a little.
        for attempt in 0.. {
            let len = std::mem::size_of_val(&sxdp) as u32;
            // SAFETY: sxdp is a valid sockaddr_xdp.
            let rc = unsafe { libc::bind(fd, (&sxdp as *const libc::sockaddr_xdp).cast(), len) };
            match check(rc as _, "xsk bind") {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 50 => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                r => {
                    r?;
                    break;
                }
            }
        }
        Ok(x)
    }

    /// Receives until `stop`: the first half of the UMEM feeds the fill ring.
    pub(super) fn recv(&self, stop: &AtomicBool) -> (u64, u64) {
        let half = XSK_FRAMES / 2;
        let fill = |from: u32, addrs: &mut dyn Iterator<Item = u64>| {
            let mut p = from;
            for a in addrs {
                // SAFETY: index masked to the ring size.
                unsafe { *(self.fill.desc as *mut u64).add((p % XSK_RING) as usize) = a };
                p = p.wrapping_add(1);
            }
            Ring::store(self.fill.prod, p);
        };
        fill(0, &mut (0..half.min(XSK_RING)).map(|i| u64::from(i * CHUNK)));
        let (mut frames, mut calls) = (0u64, 0u64);
        let mut cons = Ring::load(self.rx.cons);
        while !stop.load(Ordering::Relaxed) {
            let prod = Ring::load(self.rx.prod);
            let n = prod.wrapping_sub(cons);
            if n == 0 {
                // Copy mode: the veth's NAPI fills the ring; poll only sleeps.
                let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 10) };
                calls += 1;
                continue;
            }
            let fp = Ring::load(self.fill.prod);
            let mut addrs = (0..n).map(|i| {
                // SAFETY: index masked to the ring size; descriptors are 16 bytes.
                let d = unsafe {
                    &*(self.rx.desc as *const libc::xdp_desc).add((cons.wrapping_add(i) % XSK_RING) as usize)
                };
                d.addr & !u64::from(CHUNK - 1)
            });
            fill(fp, &mut addrs);
            cons = cons.wrapping_add(n);
            Ring::store(self.rx.cons, cons);
            frames += u64::from(n);
        }
        (frames, calls)
    }

    /// Sends `frame` until `stop`, BATCH descriptors per kick, from the second half of the UMEM.
    pub(super) fn send(&self, frame: &[u8], stop: &AtomicBool) -> (u64, u64) {
        let base = XSK_FRAMES / 2;
        let slots = XSK_RING;
        for i in 0..slots {
            // SAFETY: frames base..base+slots lie inside the UMEM.
            unsafe {
                std::ptr::copy_nonoverlapping(frame.as_ptr(), self.umem.add(((base + i) * CHUNK) as usize), frame.len())
            };
        }
        let (mut frames, mut calls) = (0u64, 0u64);
        let (mut prod, mut free) = (Ring::load(self.tx.prod), slots);
        let mut ccons = Ring::load(self.comp.cons);
        while !stop.load(Ordering::Relaxed) {
            let done = Ring::load(self.comp.prod).wrapping_sub(ccons);
            ccons = ccons.wrapping_add(done);
            Ring::store(self.comp.cons, ccons);
            free += done;
            frames += u64::from(done);
            let n = free.min(BATCH as u32);
            for i in 0..n {
                let slot = prod.wrapping_add(i) % slots;
                // SAFETY: index masked to the ring size.
                let d = unsafe { &mut *(self.tx.desc as *mut libc::xdp_desc).add(slot as usize) };
                d.addr = u64::from((base + slot) * CHUNK);
                d.len = frame.len() as u32;
                d.options = 0;
            }
            prod = prod.wrapping_add(n);
            free -= n;
            Ring::store(self.tx.prod, prod);
            // SAFETY: a zero-length sendto only kicks the tx ring.
            unsafe { libc::sendto(self.fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            calls += 1;
        }
        (frames, calls)
    }
}

impl Drop for Xsk {
    fn drop(&mut self) {
        // SAFETY: the mappings and the fd are ours; the ring mappings hold the
        // socket (and its queue) until they are gone.
        unsafe {
            for r in [&self.fill, &self.comp, &self.rx, &self.tx] {
                libc::munmap(r.map.0, r.map.1);
            }
            libc::close(self.fd);
            libc::munmap(self.umem.cast(), (XSK_FRAMES * CHUNK) as usize);
        }
    }
}
