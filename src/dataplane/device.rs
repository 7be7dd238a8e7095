//! Creating the TUN devices, inside a network namespace when asked.
//!
//! tun-rs has no namespace API, so a device that belongs in `/run/netns/NAME` is
//! created on a short-lived thread that first joins that namespace with
//! `setns(CLONE_NEWNET)`: the TUNSETIFF ioctl and the MTU / link-up ioctls then
//! all run there. The file descriptor keeps working from any thread afterwards;
//! the device disappears when it is closed.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use nix::sched::{setns, CloneFlags};
use tun_rs::{DeviceBuilder, SyncDevice};

use super::fault::NsId;
use super::link::Link;
use super::netdev::NetDev;
// Re-exported for the device kinds beside this one (uplink.rs names it here).
pub(super) use super::error::DeviceError;
use super::privileges;
use crate::config::{DeviceConfig, DeviceKind};

/// Creates and brings up the TUN device `cfg` describes, non-blocking, with
/// the virtio-net header when `offload` is asked, a transmit queue of
/// `queue_len` packets (the kernel's queue towards op25b), and `queues` queues
/// (a multiqueue device when more than one; the kernel spreads flows over
/// them by hash).
pub(crate) fn open(cfg: &DeviceConfig, offload: bool, queue_len: u32, queues: usize) -> Result<Opened, DeviceError> {
    match &cfg.netns {
        None => Ok(Opened { netns: None, ..create(cfg, offload, queue_len, queues)? }),
        Some(ns) => {
            let path = format!("/run/netns/{ns}");
            let err = |cause| DeviceError::Netns { name: ns.clone(), cause };
            let file = File::open(&path).map_err(err)?;
            let meta = file.metadata().map_err(err)?;
            let id = (meta.dev(), meta.ino());
            std::thread::scope(|s| {
                s.spawn(|| {
                    // Only this thread moves; the process stays where it was started.
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                        let cause = io::Error::from(e);
                        let why = format!("to enter the network namespace {ns:?}");
                        privileges::capability_error(&cause, "CAP_SYS_ADMIN", why)
                            .unwrap_or(DeviceError::Netns { name: ns.clone(), cause })
                    })?;
                    // The extra queues too: `try_clone` reattaches by name
                    // in the calling thread's namespace.
                    create(cfg, offload, queue_len, queues).map(|o| Opened { netns: Some(id), ..o })
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(DeviceError::Tun {
                        name: cfg.tun.clone(),
                        what: "setup thread panicked",
                        cause: io::Error::other("panic"),
                    })
                })
            })
        }
    }
}

/// A device as [`open`] made it.
pub(crate) struct Opened {
    /// One file descriptor per queue.
    pub(crate) queues: Vec<Link>,
    /// The namespace it was made in, when the config names one.
    pub(crate) netns: Option<NsId>,
    /// The kernel's figures of the device (`None` if /proc could not be opened).
    pub(crate) kernel: Option<NetDev>,
}

/// Creates the device (or opens the Ethernet upstream) in the calling thread's namespace.
fn create(cfg: &DeviceConfig, offload: bool, queue_len: u32, queues: usize) -> Result<Opened, DeviceError> {
    if let DeviceKind::Interface(link) = &cfg.kind {
        let queues = super::eth::open(cfg, link, offload, queues).map_err(|cause| {
            privileges::capability_error(&cause, "CAP_NET_RAW", "to open the upstream interface".into()).unwrap_or_else(
                || DeviceError::Uplink { name: cfg.tun.clone(), netns: cfg.netns.clone(), reason: cause.to_string() },
            )
        })?;
        let kernel = NetDev::open_here(&cfg.tun).ok();
        return Ok(Opened { queues: queues.into_iter().map(Link::Eth).collect(), netns: None, kernel });
    }
    let all = tun_queues(cfg, offload, queue_len, queues)?.into_iter().map(Link::Tun).collect();
    // Opened here, so that it shows the device's namespace.
    let kernel = NetDev::open_here(&cfg.tun)
        .inspect_err(|e| tracing::warn!(device = %cfg.tun, error = %e, "cannot open /proc/net/dev: no queue drops"))
        .ok();
    Ok(Opened { queues: all, netns: None, kernel })
}

/// Creates the TUN device `cfg` names in the calling thread's namespace, up,
/// non-blocking, with `queues` queues (a multiqueue device when more than
/// one), the virtio-net header when `offload` is asked and a transmit queue
/// of `queue_len` packets. Public for examples/tun_limit.rs, whose devices
/// must be op25b's.
pub fn tun_queues(
    cfg: &DeviceConfig,
    offload: bool,
    queue_len: u32,
    queues: usize,
) -> Result<Vec<SyncDevice>, DeviceError> {
    let err = |what| move |cause| DeviceError::Tun { name: cfg.tun.clone(), what, cause };
    let dev = DeviceBuilder::new()
        .name(&cfg.tun)
        .mtu(cfg.mtu)
        .packet_information(false)
        .offload(offload)
        .multi_queue(queues > 1)
        .tx_queue_len(queue_len)
        .enable(false)
        .build_sync()
        .map_err(|cause| {
            privileges::capability_error(&cause, "CAP_NET_ADMIN", "to create the TUN devices".into())
                .unwrap_or_else(|| err("create")(cause))
        })?;
    // Without this the kernel gives the device an IPv6 link-local address and
    // sends router solicitations through it, which the router would have to
    // count as spoofed. /proc/sys/net follows the calling thread's namespace.
    let sysctl = format!("/proc/sys/net/ipv6/conf/{}/addr_gen_mode", cfg.tun);
    if let Err(e) = std::fs::write(&sysctl, "1") {
        tracing::warn!(device = %cfg.tun, error = %e, "cannot disable IPv6 address generation");
    }
    dev.enabled(true).map_err(err("set link up"))?;
    dev.set_nonblocking(true).map_err(err("set non-blocking"))?;
    let mut all = Vec::with_capacity(queues.max(1));
    for _ in 1..queues {
        let q = dev.try_clone().map_err(err("attach queue"))?;
        q.set_nonblocking(true).map_err(err("set non-blocking"))?;
        all.push(q);
    }
    all.insert(0, dev);
    Ok(all)
}
