//! The ceiling of the TUN design: a bare forwarder between the two TUN
//! devices of an op25b config, with the data plane's offloads (virtio-net
//! header, TCP super-packets passed whole), its UDP coalescing (the same
//! `gro` module, compiled in here), its workers (one per queue and
//! direction, each also draining the reverse queue when its owner sleeps)
//! and its busy polling, but no policy, no parsing and no counters. What op25b
//! loses against it is the cost of judging packets.
//!
//!   cargo build --release --example tun_limit
//!   op25b lab up --bin target/release/examples/tun_limit
//!
//! It takes `op25b run`'s arguments (`run --config FILE`; `--stats` and
//! `--log-format` are accepted and ignored) and stops on SIGTERM or SIGINT.

#[path = "../src/dataplane/gro.rs"]
#[allow(dead_code)]
mod gro;

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gro::UdpCoalescer;
use nix::sched::{setns, CloneFlags};
use op25b::config::{Config, DeviceConfig};
use op25b::dataplane::DrainLock;
use signal_hook::consts::{SIGINT, SIGTERM};
use tun_rs::{InterruptEvent, SyncDevice, VirtioNetHdr, VIRTIO_NET_HDR_LEN};

/// The data plane's batch limits and longest sleep (src/dataplane/worker.rs).
const DRAIN_MAX: usize = 256;
const PEEK_MAX: usize = 64;
// A drain with a limit below DRAIN_MAX is a peek (as in the data plane).
const _: () = assert!(PEEK_MAX < DRAIN_MAX);
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// A queue and its drain lock, as the data plane keeps them (the data
/// plane's own lock: the owner waits, a peek lets go after its packet).
struct Queue {
    dev: SyncDevice,
    drain: DrainLock,
}

fn main() -> ExitCode {
    let mut config = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "run" => {}
            "--config" | "-c" => config = args.next().map(PathBuf::from),
            "--stats" | "--log-format" => drop(args.next()),
            other => return fail(2, &format!("unknown argument {other} (usage: tun_limit run --config FILE)")),
        }
    }
    let Some(path) = config else { return fail(2, "--config FILE is required") };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(2, &e.to_string()),
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e.to_string()),
    }
}

fn fail(code: u8, msg: &str) -> ExitCode {
    eprintln!("tun_limit: {msg}");
    ExitCode::from(code)
}

fn run(config: &Config) -> io::Result<()> {
    let n = op25b::dataplane::workers_per_direction(config.dataplane.workers);
    let dp = &config.dataplane;
    let sub = open(&config.subscriber, dp.offload, dp.queue_len, n)?;
    let up = open(&config.upstream, dp.offload, dp.queue_len, n)?;
    let off = if dp.offload { VIRTIO_NET_HDR_LEN } else { 0 };
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let stop = InterruptEvent::new()?;
    eprintln!(
        "tun_limit: forwarding {} <-> {}, {n} worker(s) a direction, offload {}",
        config.subscriber.tun, config.upstream.tun, dp.offload
    );
    std::thread::scope(|s| {
        for i in 0..n {
            for (from, to) in [(&sub[i], &up[i]), (&up[i], &sub[i])] {
                let stop = &stop;
                s.spawn(move || worker(from, to, off, dp.busy_poll, stop));
            }
        }
        signals.forever().next();
        stop.trigger()
    })
}

/// op25b's TUN device with `queues` queues (`op25b::dataplane::tun_queues`),
/// made inside its namespace when the config names one.
fn open(cfg: &DeviceConfig, offload: bool, queue_len: u32, queues: usize) -> io::Result<Vec<Queue>> {
    let ns = cfg.netns.as_ref().map(|ns| File::open(format!("/run/netns/{ns}"))).transpose()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = &ns {
                setns(ns, CloneFlags::CLONE_NEWNET)?;
            }
            let devs = op25b::dataplane::tun_queues(cfg, offload, queue_len, queues).map_err(io::Error::other)?;
            if offload && !devs[0].tcp_gso() {
                return Err(io::Error::other("the kernel did not enable TUN offload"));
            }
            Ok(devs.into_iter().map(|dev| Queue { dev, drain: DrainLock::default() }).collect())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("device thread panicked")))
    })
}

/// One worker: drains `own` into `other`, then `other` back into `own` when
/// that queue's owner is not draining it, then sleeps until `own` is readable.
fn worker(own: &Queue, other: &Queue, off: usize, busy_poll: Duration, stop: &InterruptEvent) {
    let mut buf = vec![0u8; off + 65_535];
    let mut gro = UdpCoalescer::new(off);
    let mut failures = 0u32;
    // Never triggered: for zero-timeout polls while busy polling.
    let Ok(never) = InterruptEvent::new() else { return };
    while !stop.is_trigger() {
        own.drain.lock();
        let n = drain(own, other, &mut buf, &mut gro, off, DRAIN_MAX, &mut failures);
        own.drain.unlock();
        if other.drain.try_lock() {
            drain(other, own, &mut buf, &mut gro, off, PEEK_MAX, &mut failures);
            other.drain.unlock();
        }
        if failures >= 1000 {
            eprintln!("tun_limit: {failures} reads in a row failed: stopping");
            std::process::exit(1);
        }
        if n == DRAIN_MAX {
            continue;
        }
        let until = Instant::now() + busy_poll;
        while Instant::now() < until && own.dev.wait_readable_intr_timeout(&never, Some(Duration::ZERO)).is_err() {
            std::hint::spin_loop();
        }
        // Readable, stopped or timed out: the loop looks again either way.
        let _ = own.dev.wait_readable_intr_timeout(stop, Some(MAX_SLEEP));
    }
}

/// Forwards up to `max` packets from `from` to `to`; small UDP datagrams of
/// one flow leave as one GSO packet, as in the data plane.
fn drain(
    from: &Queue,
    to: &Queue,
    buf: &mut [u8],
    gro: &mut UdpCoalescer,
    off: usize,
    max: usize,
    failures: &mut u32,
) -> usize {
    let mut n = 0;
    // A peek (a `max` below the owner's) gives the queue back to its owner.
    while n < max && !(max < DRAIN_MAX && from.drain.wanted()) {
        let len = match from.dev.recv(buf) {
            Ok(len) => len,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                *failures += 1;
                break;
            }
        };
        *failures = 0;
        n += 1;
        if len <= off {
            continue;
        }
        let packet = &buf[..len];
        let gso = off > 0 && VirtioNetHdr::decode(&packet[..off]).is_ok_and(|h| h.gso_type & 0x7f != 0);
        if !gso && gro.enabled() {
            if gro.push(packet).is_ok() {
                continue;
            }
            flush(gro, to);
            if gro.push(packet).is_ok() {
                continue;
            }
        } else {
            flush(gro, to);
        }
        let _ = to.dev.send(packet);
    }
    flush(gro, to);
    n
}

fn flush(gro: &mut UdpCoalescer, to: &Queue) {
    if let Some(bytes) = gro.take() {
        let _ = to.dev.send(bytes);
    }
}
