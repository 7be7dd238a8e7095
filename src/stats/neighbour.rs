//! The counters of an Ethernet upstream's neighbour table (ARP and NDP,
//! `state::neighbour`), in the snapshot as [`super::Stats::neighbours`].

/// The neighbour table of an Ethernet upstream (`[upstream] interface`):
/// ARP and neighbour discovery, one figure per event. Written under the
/// table's lock by whichever queue holds it; read with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighbourStats {
    /// ARP requests and solicitations for own addresses answered.
    pub answered: u64,
    /// ARP requests and NS sent (first resolutions and re-probes).
    pub probes: u64,
    /// Entries resolved by an answer to a probe.
    pub resolved: u64,
    /// Resolved entries whose trust expired and which were probed again
    /// (their MAC still in use meanwhile).
    pub reprobes: u64,
    /// On-link entries forgotten after a reachable time unused.
    pub expired: u64,
    /// Next hops given up after the last probe.
    pub failed: u64,
    /// Replies and advertisements that no probe asked for (ignored, no entry made).
    pub unsolicited: u64,
    /// Requests and solicitations for someone else's address (ignored).
    pub not_ours: u64,
    /// ARP/NDP frames that did not parse or had a wrong hop limit.
    pub malformed: u64,
    /// Packets held for an unresolved next hop.
    pub held: u64,
    /// Packets dropped because the hop's or the table's place was full.
    pub held_dropped: u64,
    /// Held packets returned as unreachable (their senders get ICMP host unreachable).
    pub unreachable: u64,
    /// New next hops that met a full table (an on-link entry evicted for
    /// each, or the packet dropped when none could go).
    pub table_full: u64,
    /// On-link entries evicted to make room.
    pub evicted: u64,
    /// Entries in the table when read, gateways included (a gauge).
    pub entries: u64,
}

impl NeighbourStats {
    /// The counters by name (the `neighbour_NAME` counters of [`super::Stats::pairs`]), the gauge left out.
    pub fn pairs(&self) -> [(&'static str, u64); 14] {
        [
            ("answered", self.answered),
            ("probes", self.probes),
            ("resolved", self.resolved),
            ("reprobes", self.reprobes),
            ("expired", self.expired),
            ("failed", self.failed),
            ("unsolicited", self.unsolicited),
            ("not_ours", self.not_ours),
            ("malformed", self.malformed),
            ("held", self.held),
            ("held_dropped", self.held_dropped),
            ("unreachable", self.unreachable),
            ("table_full", self.table_full),
            ("evicted", self.evicted),
        ]
    }
}
