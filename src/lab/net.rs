//! Links, addresses, routes and sysctls inside a lab namespace, over
//! rtnetlink (what `ip link set up`, `ip addr add ... nodad` and `ip route
//! add` do), from a thread that has entered the namespace.

use std::future::Future;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::{RouteAttribute, RouteMetric};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{netns, LabError};

/// A route out of a device: `ip route add DST/LEN dev DEV [src SRC] [advmss N]`.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// Destination prefix (`0.0.0.0/0` or `::/0` for the default route).
    pub dst: (IpAddr, u8),
    /// The device.
    pub dev: &'a str,
    /// The preferred source address.
    pub src: Option<IpAddr>,
    /// The MSS to advertise on connections over the route.
    pub advmss: Option<u32>,
}

fn nl(what: &str, e: rtnetlink::Error) -> LabError {
    LabError::Netlink(format!("{what}: {e}"))
}

/// Runs `f` with a netlink handle on a thread inside namespace `ns`.
pub(super) fn with_handle<T, F, Fut>(ns: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, LabError>>,
{
    netns::within(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| LabError::Netlink(format!("runtime: {e}")))?;
        rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| LabError::Netlink(format!("netlink socket in {ns}: {e}")))?;
            let task = tokio::spawn(conn);
            let out = f(handle).await;
            task.abort();
            out
        })
    })
}

pub(super) async fn index_of(handle: &Handle, dev: &str) -> Result<Option<(u32, LinkFlags)>, LabError> {
    match handle.link().get().match_name(dev).execute().try_next().await {
        Ok(Some(m)) => Ok(Some((m.header.index, m.header.flags))),
        Ok(None) => Ok(None),
        // No such device.
        Err(rtnetlink::Error::NetlinkError(e)) if e.to_io().raw_os_error() == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl(&format!("looking up {dev}"), e)),
    }
}

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;

/// Sets `lo` up in `ns` and puts `addrs` on it (host routes: /32 and /128,
/// IPv6 without duplicate address detection).
pub fn loopback(ns: &str, addrs: &[IpAddr]) -> Result<(), LabError> {
    let addrs = addrs.to_vec();
    with_handle(ns, |handle| async move {
        let (lo, _) = index_of(&handle, "lo").await?.ok_or_else(|| LabError::Netlink(format!("no lo in {ns}")))?;
        handle.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await.map_err(|e| nl("lo up", e))?;
        for a in addrs {
            let len = if a.is_ipv4() { 32 } else { 128 };
            let mut req = handle.address().add(lo, a, len);
            if a.is_ipv6() {
                req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute().await.map_err(|e| nl(&format!("address {a} on lo in {ns}"), e))?;
        }
        Ok(())
    })
}

/// Whether `dev` exists in `ns` and is administratively up.
pub fn link_up(ns: &str, dev: &str) -> Result<bool, LabError> {
    with_handle(ns, |handle| async move {
        Ok(index_of(&handle, dev).await?.is_some_and(|(_, flags)| flags.contains(LinkFlags::Up)))
    })
}

/// Adds `routes` in `ns`.
pub fn routes(ns: &str, routes: &[Route<'_>]) -> Result<(), LabError> {
    with_handle(ns, |handle| async move {
        for r in routes {
            let (index, _) = index_of(&handle, r.dev)
                .await?
                .ok_or_else(|| LabError::Netlink(format!("no device {} in {ns}", r.dev)))?;
            let mut b = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(r.dst.0, r.dst.1)
                .map_err(|e| LabError::Netlink(format!("route {:?}: {e}", r.dst)))?
                .output_interface(index);
            if let Some(src) = r.src {
                b = b.pref_source(src).map_err(|e| LabError::Netlink(format!("route source {src}: {e}")))?;
            }
            let mut msg = b.build();
            if let Some(mss) = r.advmss {
                msg.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Advmss(mss)]));
            }
            handle
                .route()
                .add(msg)
                .execute()
                .await
                .map_err(|e| nl(&format!("route {}/{} dev {} in {ns}", r.dst.0, r.dst.1, r.dev), e))?;
        }
        Ok(())
    })
}

/// Writes a sysctl of namespace `ns` (`net.ipv4.ip_forward` style key, or
/// its /proc/sys path below net/): /proc/sys/net is the opening thread's
/// namespace's.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if !path.starts_with("/proc/sys/net/") || key.contains("..") {
        return Err(LabError::Netlink(format!("{key}: only net.* sysctls are per namespace")));
    }
    netns::within(ns, || std::fs::write(&path, value).map_err(|e| LabError::io(std::path::Path::new(&path), e)))
}
