//! Nexthop objects and resilient nexthop groups (what `ip nexthop add id N
//! dev DEV` and `ip nexthop replace id G group A/B type resilient` do) inside
//! a lab namespace. rtnetlink 0.24 carries a route's nexthop id
//! (`RTA_NH_ID`) and multipath routes, but has no nexthop message
//! (`RTM_NEWNEXTHOP`): the message is built here on the netlink-packet-core
//! and netlink-sys it re-exports, and sent from a thread inside the
//! namespace. Layouts: linux/nexthop.h.

use rtnetlink::packet_core::{
    DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    Nla, NlasIterator, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{netns, LabError};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_GETNEXTHOP: u16 = 106;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_OIF: u16 = 5;
const NHA_RES_GROUP: u16 = 12;
const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_GROUP_IDLE_TIMER: u16 = 2;
const NHA_RES_GROUP_UNBALANCED_TIMER: u16 = 3;
const NEXTHOP_GRP_TYPE_RES: u16 = 1;
/// The timers' unit: clock_t at USER_HZ (100 per second).
const USER_HZ: u32 = 100;
/// `RTPROT_STATIC`: routes and nexthops an administrator made.
const RTPROT_STATIC: u8 = 4;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The `nhmsg` header before the attributes.
const NHMSG_LEN: usize = 8;

/// A nexthop message: the `nhmsg` header's family and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NexthopMessage {
    kind: u16,
    family: u8,
    attrs: Vec<DefaultNla>,
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        NHMSG_LEN + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        // family, scope, protocol, reserved, flags (u32); the kernel refuses
        // a get or delete with anything but the family set.
        let protocol = if self.kind == RTM_NEWNEXTHOP { RTPROT_STATIC } else { 0 };
        buffer[..NHMSG_LEN].copy_from_slice(&[self.family, 0, protocol, 0, 0, 0, 0, 0]);
        self.attrs.as_slice().emit(&mut buffer[NHMSG_LEN..]);
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = LabError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, LabError> {
        let short = || LabError::Netlink(format!("a nexthop message of {} bytes", payload.len()));
        let family = *payload.first().ok_or_else(short)?;
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(payload.get(NHMSG_LEN..).ok_or_else(short)?) {
            let nla = nla.map_err(|e| LabError::Netlink(format!("a nexthop attribute: {e}")))?;
            attrs.push(DefaultNla::new(nla.kind(), nla.value().to_vec()));
        }
        Ok(NexthopMessage { kind: header.message_type, family, attrs })
    }
}

fn u32_attr(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_ne_bytes().to_vec())
}

/// A request to namespace `ns`'s kernel: the answers (one unless a dump),
/// or the error it gave, named with `what`.
fn request(ns: &str, what: &str, msg: NexthopMessage, flags: u16) -> Result<Vec<NexthopMessage>, LabError> {
    let fail = |e: std::io::Error| LabError::Netlink(format!("{what} in {ns}: {e}"));
    netns::within(ns, || {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        sock.bind_auto().map_err(fail)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        req.header.sequence_number = 1;
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        sock.send(&buf, 0).map_err(fail)?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = sock.recv_from_full().map_err(fail)?;
            let mut at = 0;
            while at < data.len() {
                let reply = NetlinkMessage::<NexthopMessage>::deserialize(&data[at..])
                    .map_err(|e| LabError::Netlink(format!("{what} in {ns}: an answer: {e}")))?;
                at += (reply.header.length as usize).max(16).next_multiple_of(4);
                match reply.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(fail(e.to_io())),
                    // The acknowledgement ends every request.
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    })
}

/// Adds nexthop `id` out of device `ifindex` of namespace `ns`, for IPv4 or
/// IPv6 routes (`ip [-6] nexthop add id ID dev DEV`); an existing one is replaced.
pub fn add_device(ns: &str, id: u32, ifindex: u32, v6: bool) -> Result<(), LabError> {
    let msg = NexthopMessage {
        kind: RTM_NEWNEXTHOP,
        family: if v6 { AF_INET6 } else { AF_INET },
        attrs: vec![u32_attr(NHA_ID, id), u32_attr(NHA_OIF, ifindex)],
    };
    request(ns, &format!("nexthop {id} dev #{ifindex}"), msg, NLM_F_CREATE | NLM_F_REPLACE).map(drop)
}

/// A resilient group's settings (`buckets N idle_timer S unbalanced_timer S`).
#[derive(Debug, Clone, Copy)]
pub struct Resilient {
    /// Number of buckets (fixed for the group's life).
    pub buckets: u16,
    /// Seconds a bucket must be idle before it moves to an underweight member.
    pub idle_timer_secs: u32,
    /// Seconds after which an unbalanced group moves even busy buckets (0: never).
    pub unbalanced_timer_secs: u32,
}

/// Makes group `id` of `members` (each of weight 1) a resilient group,
/// creating it or replacing its members (`ip nexthop replace id ID group
/// A/B/.. type resilient ...`): a replaced group keeps its buckets and moves
/// only what the new members need.
pub fn set_group(ns: &str, id: u32, members: &[u32], res: Resilient) -> Result<(), LabError> {
    // struct nexthop_grp: id (u32), weight - 1 (u8), weight_high (u8), reserved (u16).
    let group: Vec<u8> = members.iter().flat_map(|m| [m.to_ne_bytes(), [0; 4]].concat()).collect();
    let timers = [
        DefaultNla::new(NHA_RES_GROUP_BUCKETS, res.buckets.to_ne_bytes().to_vec()),
        u32_attr(NHA_RES_GROUP_IDLE_TIMER, res.idle_timer_secs * USER_HZ),
        u32_attr(NHA_RES_GROUP_UNBALANCED_TIMER, res.unbalanced_timer_secs * USER_HZ),
    ];
    let mut nested = vec![0; timers.as_slice().buffer_len()];
    timers.as_slice().emit(&mut nested);
    let msg = NexthopMessage {
        kind: RTM_NEWNEXTHOP,
        family: AF_UNSPEC,
        attrs: vec![
            u32_attr(NHA_ID, id),
            DefaultNla::new(NHA_GROUP, group),
            DefaultNla::new(NHA_GROUP_TYPE, NEXTHOP_GRP_TYPE_RES.to_ne_bytes().to_vec()),
            DefaultNla::new(NHA_RES_GROUP | NLA_F_NESTED, nested),
        ],
    };
    request(ns, &format!("nexthop group {id} {members:?}"), msg, NLM_F_CREATE | NLM_F_REPLACE).map(drop)
}

/// The members of group `id` in namespace `ns` (`ip nexthop get id ID`),
/// `None` when there is no such nexthop (the kernel removes a group with its
/// last member).
pub fn members(ns: &str, id: u32) -> Result<Option<Vec<u32>>, LabError> {
    let msg = NexthopMessage { kind: RTM_GETNEXTHOP, family: AF_UNSPEC, attrs: vec![u32_attr(NHA_ID, id)] };
    let answers = match request(ns, &format!("nexthop {id}"), msg, 0) {
        Ok(a) => a,
        Err(LabError::Netlink(e)) if e.ends_with(&std::io::Error::from_raw_os_error(ENOENT).to_string()) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let group = answers.iter().flat_map(|m| &m.attrs).find(|a| a.kind() == NHA_GROUP);
    let Some(group) = group else { return Ok(Some(Vec::new())) };
    let mut value = vec![0; group.value_len()];
    group.emit_value(&mut value);
    Ok(Some(value.chunks_exact(8).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nexthop_message_is_laid_out_as_the_kernel_reads_it() {
        let msg = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            family: AF_INET6,
            attrs: vec![u32_attr(NHA_ID, 7), u32_attr(NHA_OIF, 3)],
        };
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        let id = 7u32.to_ne_bytes();
        let oif = 3u32.to_ne_bytes();
        let mut expected = vec![AF_INET6, 0, RTPROT_STATIC, 0, 0, 0, 0, 0];
        expected.extend_from_slice(&[8, 0, NHA_ID as u8, 0]);
        expected.extend_from_slice(&id);
        expected.extend_from_slice(&[8, 0, NHA_OIF as u8, 0]);
        expected.extend_from_slice(&oif);
        // Length and type are native-endian u16s (little-endian here and on every CI machine).
        if cfg!(target_endian = "little") {
            assert_eq!(buf, expected);
        }
        let mut header = NetlinkHeader::default();
        header.message_type = RTM_NEWNEXTHOP;
        assert_eq!(NexthopMessage::deserialize(&header, &buf).expect("parses"), msg);
        assert!(NexthopMessage::deserialize(&header, &[]).is_err());
        assert!(NexthopMessage::deserialize(&header, &buf[..NHMSG_LEN + 3]).is_err());
    }
}
