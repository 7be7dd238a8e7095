//! Probes of `op25b lab demo`, from the calling thread's namespace: a UDP
//! traceroute (the ICMP errors read from the socket's error queue, as
//! `traceroute` does without privileges) and an ICMP echo (a raw socket:
//! the lab runs as root). Each waits at most [`WAIT`] for its answer.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use nix::sys::time::TimeVal;

/// How long a probe waits for its answer.
const WAIT: Duration = Duration::from_secs(1);
/// The first UDP port a traceroute aims at (as traceroute's).
const TRACE_PORT: u16 = 33434;

/// Polls `f` every 10 ms until it answers or [`WAIT`] has passed.
fn until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() >= WAIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The hops from `src` to `dst` (an address, or `*` where nothing answered),
/// up to `max` or to `dst` itself.
pub fn traceroute(src: IpAddr, dst: IpAddr, max: u8) -> Vec<String> {
    let mut hops = Vec::new();
    for ttl in 1..=max {
        let hop = hop(src, dst, ttl);
        hops.push(hop.map_or_else(|| "*".to_string(), |(a, _)| a.to_string()));
        if hop.is_some_and(|(a, reached)| reached || a == dst) {
            break;
        }
    }
    hops
}

/// Who answered a datagram sent with this TTL, and whether it was the end
/// (destination unreachable, not time exceeded).
fn hop(src: IpAddr, dst: IpAddr, ttl: u8) -> Option<(IpAddr, bool)> {
    let sock = UdpSocket::bind(SocketAddr::new(src, 0)).ok()?;
    let set = match dst {
        IpAddr::V4(_) => socket::setsockopt(&sock, sockopt::Ipv4Ttl, &ttl.into())
            .and_then(|()| socket::setsockopt(&sock, sockopt::Ipv4RecvErr, &true)),
        IpAddr::V6(_) => socket::setsockopt(&sock, sockopt::Ipv6Ttl, &ttl.into())
            .and_then(|()| socket::setsockopt(&sock, sockopt::Ipv6RecvErr, &true)),
    };
    set.ok()?;
    sock.send_to(b"op25b lab traceroute", SocketAddr::new(dst, TRACE_PORT + u16::from(ttl))).ok()?;
    until(|| {
        let mut buf = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let msg = socket::recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags).ok()?;
        let found = msg.cmsgs().ok()?.find_map(|c| match c {
            // ICMP: 11 time exceeded, 3 destination unreachable.
            ControlMessageOwned::Ipv4RecvErr(e, Some(a)) => {
                Some((IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))), e.ee_type == 3))
            }
            // ICMPv6: 3 time exceeded, 1 destination unreachable.
            ControlMessageOwned::Ipv6RecvErr(e, Some(a)) => {
                Some((IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)), e.ee_type == 1))
            }
            _ => None,
        });
        found
    })
}

/// The internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Milliseconds until `dst` answered an ICMP echo request, if it did.
pub fn ping(dst: IpAddr) -> Option<f64> {
    use socket::{AddressFamily, SockFlag, SockProtocol, SockType};
    let (family, proto, request, reply) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8, 0),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128, 129),
    };
    let fd = socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto).ok()?;
    let id = (std::process::id() as u16).to_be_bytes();
    let mut echo = [request, 0, 0, 0, id[0], id[1], 0, 1, b'o', b'p', b'2', b'5', b'b', b'!', b'!', b'!'];
    // The kernel sums ICMPv6 itself (it needs the pseudo-header); ICMP is ours.
    if dst.is_ipv4() {
        let sum = checksum(&echo);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    let to = SockaddrStorage::from(SocketAddr::new(dst, 0));
    // Blocking reads of at most 100 ms, so the time measured is the answer's.
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000)).ok()?;
    let t0 = Instant::now();
    socket::sendto(fd.as_raw_fd(), &echo, &to, MsgFlags::empty()).ok()?;
    let mut buf = [0u8; 1500];
    while t0.elapsed() < WAIT {
        let n = match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            Err(_) => return None,
        };
        // An IPv4 raw socket hands over the IP header too.
        let icmp = if dst.is_ipv4() { buf.get(usize::from(buf[0] & 0x0f) * 4..n).unwrap_or(&[]) } else { &buf[..n] };
        if icmp.len() >= 8 && icmp[0] == reply && icmp[4..6] == id {
            return Some(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_of_an_echo_request() {
        // RFC 1071's example words, and an echo request that sums to zero with its checksum.
        assert_eq!(super::checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        let mut echo = [8, 0, 0, 0, 0x12, 0x34, 0, 1, 1];
        let c = super::checksum(&echo).to_be_bytes();
        echo[2..4].copy_from_slice(&c);
        assert_eq!(super::checksum(&echo), 0);
    }
}
