use std::time::Duration;

use std::borrow::Cow;
use std::io::BufReader;

use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::DataLink;

use super::capture::*;

#[test]
fn finds_ip_in_each_link_type() {
    let mut eth = vec![0u8; 12];
    eth.extend_from_slice(&[0x81, 0x00, 0, 5, 0x86, 0xdd, 0x60]);
    assert_eq!(ip_offset(DataLink::ETHERNET, &eth), Some(18));
    let mut arp = vec![0u8; 12];
    arp.extend_from_slice(&[0x08, 0x06]);
    assert_eq!(ip_offset(DataLink::ETHERNET, &arp), None);
    let mut sll = vec![0u8; 14];
    sll.extend_from_slice(&[0x08, 0x00, 0x45]);
    assert_eq!(ip_offset(DataLink::LINUX_SLL, &sll), Some(16));
    assert_eq!(ip_offset(DataLink::RAW, &[0x45]), Some(0));
    assert_eq!(ip_offset(DataLink::ETHERNET, &[0u8; 5]), None);
}

fn pcapng(tsresol: Option<u8>) -> Vec<u8> {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    let mut w = pcap_file::pcapng::PcapNgWriter::new(Vec::new()).unwrap();
    let options = tsresol.map(InterfaceDescriptionOption::IfTsResol).into_iter().collect();
    w.write_pcapng_block(InterfaceDescriptionBlock { linktype: DataLink::RAW, snaplen: 0, options }).unwrap();
    for i in 0..3u64 {
        let data = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 100, 64, 1, 10, 203, 0, 113, 25];
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(1_000 + i),
            original_len: 20,
            data: Cow::Owned(data.to_vec()),
            options: vec![],
        };
        w.write_pcapng_block(epb).unwrap();
    }
    w.into_inner()
}

/// Every record of `bytes`, or where reading stopped.
fn read_all(bytes: &[u8]) -> Result<Vec<(DataLink, Duration, usize)>, String> {
    let mut c = Capture::open(BufReader::new(bytes))?;
    let mut out = Vec::new();
    while let Some(r) = c.next_record() {
        let r = r?;
        out.push((r.link, r.timestamp, r.data.len()));
    }
    Ok(out)
}

#[test]
fn pcapng_timestamps_follow_if_tsresol() {
    // No option: microseconds; 9: nanoseconds; 0x80 | 10: 2^-10 s.
    for (tsresol, first) in [
        (None, Duration::from_millis(1)),
        (Some(6), Duration::from_millis(1)),
        (Some(9), Duration::from_micros(1)),
        (Some(0x80 | 10), Duration::from_nanos(1_000 * 1_000_000_000 / 1024)),
    ] {
        let records = read_all(&pcapng(tsresol)).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], (DataLink::RAW, first, 20), "{tsresol:?}");
    }
}

/// A cut or damaged capture is an error string or fewer records, never a
/// panic (a bounded, deterministic sample; the fuzz targets go further).
#[test]
fn damaged_captures_do_not_panic() {
    let good = pcapng(None);
    for cut in 0..good.len() {
        let _ = read_all(&good[..cut]);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..1_000 {
        let mut bad = good.clone();
        for _ in 0..1 + x % 4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % bad.len() as u64) as usize;
            bad[at] = (x >> 32) as u8;
        }
        let _ = read_all(&bad);
    }
    // The last record cut short is an error, not a quiet end.
    let cut = read_all(&good[..good.len() - 1]);
    assert!(cut.is_err(), "{cut:?}");
}
