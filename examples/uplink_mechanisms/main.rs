//! Measures the two ways op25b can send and receive Ethernet frames on an
//! upstream interface, in one run on one veth pair between two network
//! namespaces this program makes (and removes, even on failure):
//!
//! - AF_PACKET: a TPACKET_V3 receive ring (poll per block) and `sendmmsg`
//!   (PACKET_QDISC_BYPASS) for sending;
//! - AF_XDP in copy mode: a UMEM with fill/rx/tx/completion rings and a
//!   six-instruction XDP program that redirects every frame of queue 0 into
//!   the socket (attached with a BPF link, detached when the link fd closes).
//!
//! It prints frames per second and frames per system call for each, as
//! ratios within the same run (the machine is shared: absolute figures move).
//! docs/UPLINK.md records a run and the choice made from it.
//!
//! Run as root: `cargo run --release --example uplink_mechanisms [SECONDS] [ROUNDS]`.

use nix::libc;
use std::ffi::CString;
use std::io::{Error, Result};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod xsk;

use xsk::{bpf, put, xdp_redirect, Xsk};

const FRAME_LEN: usize = 60;
const BATCH: usize = 64;

fn check(rc: libc::c_long, what: &str) -> Result<libc::c_long> {
    if rc < 0 {
        let e = Error::last_os_error();
        return Err(Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn ip(args: &[&str]) -> Result<()> {
    let st = Command::new("ip").args(args).status()?;
    if !st.success() {
        return Err(Error::other(format!("ip {args:?} failed")));
    }
    Ok(())
}

fn sh(ns: &str, cmd: &str) -> Result<String> {
    let out = Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]).output()?;
    if !out.status.success() {
        return Err(Error::other(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Two namespaces joined by a veth pair `upa` (in a) / `upb` (in b); dropped = removed.
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    fn new() -> Result<Lab> {
        let pid = std::process::id();
        let lab = Lab { a: format!("upm-a-{pid}"), b: format!("upm-b-{pid}") };
        ip(&["netns", "add", &lab.a])?;
        ip(&["netns", "add", &lab.b])?;
        ip(&["-n", &lab.a, "link", "add", "upa", "type", "veth", "peer", "upb", "netns", &lab.b])?;
        for (ns, dev) in [(&lab.a, "upa"), (&lab.b, "upb")] {
            sh(ns, "sysctl -qw net.ipv6.conf.all.disable_ipv6=1")?;
            ip(&["-n", ns, "link", "set", dev, "addrgenmode", "none"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(lab)
    }

    fn counter(&self, ns: &str, dev: &str, name: &str) -> u64 {
        sh(ns, &format!("cat /sys/class/net/{dev}/statistics/{name}")).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(Error::from)?;
        f()
    })
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(Error::other)?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(Error::last_os_error());
    }
    Ok(i)
}

fn frame(dst_mac: [u8; 6]) -> [u8; FRAME_LEN] {
    let mut buf = [0u8; FRAME_LEN];
    let payload = [0u8; 18];
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], dst_mac)
        .ipv4([198, 51, 100, 1], [203, 0, 113, 1], 64)
        .udp(40000, 9)
        .write(&mut &mut buf[..], &payload)
        .expect("a 60-byte frame fits its buffer");
    buf
}

fn setopt<T>(fd: i32, level: i32, name: i32, val: &T, what: &str) -> Result<()> {
    // SAFETY: val points to a live T of the size given.
    let rc = unsafe { libc::setsockopt(fd, level, name, (val as *const T).cast(), std::mem::size_of::<T>() as u32) };
    check(rc as _, what).map(|_| ())
}

/// An AF_PACKET socket bound to `dev`, receiving every protocol but not its own sends.
fn packet_socket(dev: &str) -> Result<i32> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket(2).
    let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) } as _, "socket")? as i32;
    setopt(fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &1i32, "ignore outgoing")?;
    setopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &1i32, "qdisc bypass")?;
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto as u16;
    sll.sll_ifindex = ifindex(dev)? as i32;
    // SAFETY: sll is a valid sockaddr_ll.
    let rc = unsafe { libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of_val(&sll) as u32) };
    check(rc as _, "bind")?;
    Ok(fd)
}

/// Sends `frame` in batches of BATCH with sendmmsg until `stop`; returns (frames, syscalls).
fn packet_send(dev: &str, frame: [u8; FRAME_LEN], stop: Arc<AtomicBool>) -> Result<(u64, u64)> {
    let fd = packet_socket(dev)?;
    let mut iov: Vec<libc::iovec> =
        (0..BATCH).map(|_| libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: FRAME_LEN }).collect();
    // SAFETY: zeroed mmsghdr is valid; pointers set below stay alive for the loop.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let (mut frames, mut calls) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: msgs holds BATCH valid headers.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        calls += 1;
        if n > 0 {
            frames += n as u64;
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok((frames, calls))
}

/// Receives with a TPACKET_V3 ring until `stop`; returns (frames, syscalls).
fn packet_recv(dev: &str, stop: Arc<AtomicBool>) -> Result<(u64, u64)> {
    let fd = packet_socket(dev)?;
    setopt(fd, libc::SOL_PACKET, libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V3 as i32), "version")?;
    let (bsize, bnr) = (1u32 << 18, 16u32);
    let req = libc::tpacket_req3 {
        tp_block_size: bsize,
        tp_block_nr: bnr,
        tp_frame_size: 2048,
        tp_frame_nr: bsize / 2048 * bnr,
        tp_retire_blk_tov: 1,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    setopt(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req, "rx ring")?;
    let len = (bsize * bnr) as usize;
    // SAFETY: mapping the ring the kernel just allocated for fd.
    let ring =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0) };
    if ring == libc::MAP_FAILED {
        return Err(Error::last_os_error());
    }
    let (mut frames, mut calls, mut block) = (0u64, 0u64, 0usize);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: block < bnr; the block descriptor sits at the block's start.
        let desc = unsafe { &mut *(ring.cast::<u8>().add(block * bsize as usize) as *mut libc::tpacket_block_desc) };
        // SAFETY: TPACKET_V3 blocks carry the v1 header variant.
        let hdr = unsafe { &mut desc.hdr.bh1 };
        let status = unsafe { std::ptr::read_volatile(&hdr.block_status) };
        if status & libc::TP_STATUS_USER == 0 {
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 10) };
            calls += 1;
            continue;
        }
        frames += u64::from(hdr.num_pkts);
        std::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: handing the block back to the kernel.
        unsafe { std::ptr::write_volatile(&mut hdr.block_status, libc::TP_STATUS_KERNEL) };
        block = (block + 1) % bnr as usize;
    }
    // SAFETY: unmapping our own mapping and closing our fd.
    unsafe {
        libc::munmap(ring, len);
        libc::close(fd);
    }
    Ok((frames, calls))
}

#[derive(Clone, Copy, Debug)]
enum Rx {
    Packet,
    PacketNftDrop,
    Xdp,
}

#[derive(Clone, Copy, Debug)]
enum Tx {
    Sendmmsg,
    Xdp,
}

struct Figure {
    pps: f64,
    per_call: f64,
    offered: f64,
}

fn run_rx(lab: &Lab, kind: Rx, secs: f64) -> Result<Figure> {
    let mac = mac_of(lab)?;
    if matches!(kind, Rx::PacketNftDrop) {
        // After the packet taps, before the IP stack (tc's drop actions are not built here).
        sh(&lab.b, "nft add table netdev upm && nft add chain netdev upm in '{ type filter hook ingress device upb priority 0; policy drop; }'")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let rx = in_ns(&lab.b, move || {
        let ifx = ifindex("upb")?;
        match kind {
            Rx::Xdp => {
                let (map, link) = xdp_redirect(ifx)?;
                let x = Xsk::new("upb")?;
                let mut a = [0u8; 128];
                let (key, val) = (0u32, x.fd as u32);
                put(&mut a, 0, &(map as u32).to_ne_bytes());
                put(&mut a, 8, &(&key as *const u32 as u64).to_ne_bytes());
                put(&mut a, 16, &(&val as *const u32 as u64).to_ne_bytes());
                bpf(2, &mut a, "map update")?;
                let r = x.recv(&s2);
                // SAFETY: closing our own fds detaches the program.
                unsafe {
                    libc::close(link);
                    libc::close(map);
                }
                Ok(r)
            }
            _ => packet_recv("upb", s2),
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let s3 = stop.clone();
    let f = frame(mac);
    let tx = in_ns(&lab.a, move || packet_send("upa", f, s3));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    let (sent, _) = tx.join().map_err(|_| Error::other("sender panicked"))??;
    let (got, calls) = rx.join().map_err(|_| Error::other("receiver panicked"))??;
    if matches!(kind, Rx::PacketNftDrop) {
        sh(&lab.b, "nft delete table netdev upm")?;
    }
    Ok(Figure { pps: got as f64 / el, per_call: got as f64 / calls.max(1) as f64, offered: sent as f64 / el })
}

fn run_tx(lab: &Lab, kind: Tx, secs: f64) -> Result<Figure> {
    let mac = mac_of(lab)?;
    let before = lab.counter(&lab.b, "upb", "rx_packets");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let f = frame(mac);
    let tx = in_ns(&lab.a, move || match kind {
        Tx::Sendmmsg => packet_send("upa", f, s2),
        Tx::Xdp => Ok(Xsk::new("upa")?.send(&f, &s2)),
    });
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let el = t0.elapsed().as_secs_f64();
    let (sent, calls) = tx.join().map_err(|_| Error::other("sender panicked"))??;
    let arrived = lab.counter(&lab.b, "upb", "rx_packets") - before;
    Ok(Figure { pps: arrived as f64 / el, per_call: sent as f64 / calls.max(1) as f64, offered: sent as f64 / el })
}

fn mac_of(lab: &Lab) -> Result<[u8; 6]> {
    let s = sh(&lab.b, "cat /sys/class/net/upb/address")?;
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(s.split(':')) {
        *m = u8::from_str_radix(p, 16).map_err(Error::other)?;
    }
    Ok(mac)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let lab = Lab::new()?;
    let mut rx: Vec<(Rx, Vec<Figure>)> =
        [Rx::Packet, Rx::PacketNftDrop, Rx::Xdp].iter().map(|k| (*k, vec![])).collect();
    let mut tx: Vec<(Tx, Vec<Figure>)> = [Tx::Sendmmsg, Tx::Xdp].iter().map(|k| (*k, vec![])).collect();
    for _ in 0..rounds {
        for (k, v) in rx.iter_mut() {
            v.push(run_rx(&lab, *k, secs)?);
        }
        for (k, v) in tx.iter_mut() {
            v.push(run_tx(&lab, *k, secs)?);
        }
    }
    let base_rx = median(rx[0].1.iter().map(|f| f.pps).collect());
    println!("receive, 60-byte frames, sender AF_PACKET sendmmsg in the peer namespace ({rounds} rounds of {secs} s, medians)");
    println!("{:<14} {:>12} {:>10} {:>14} {:>16}", "mechanism", "recv pps", "ratio", "frames/syscall", "offered pps");
    for (k, v) in &rx {
        let pps = median(v.iter().map(|f| f.pps).collect());
        println!(
            "{:<14} {:>12.0} {:>10.2} {:>14.1} {:>16.0}",
            format!("{k:?}"),
            pps,
            pps / base_rx,
            median(v.iter().map(|f| f.per_call).collect()),
            median(v.iter().map(|f| f.offered).collect())
        );
    }
    let base_tx = median(tx[0].1.iter().map(|f| f.pps).collect());
    println!("send, 60-byte frames, counted at the peer's rx_packets");
    println!("{:<14} {:>12} {:>10} {:>14}", "mechanism", "arrived pps", "ratio", "frames/syscall");
    for (k, v) in &tx {
        let pps = median(v.iter().map(|f| f.pps).collect());
        println!(
            "{:<14} {:>12.0} {:>10.2} {:>14.1}",
            format!("{k:?}"),
            pps,
            pps / base_tx,
            median(v.iter().map(|f| f.per_call).collect())
        );
    }
    Ok(())
}
