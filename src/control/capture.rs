//! The capture writer: the packets the data plane did not forward, as they
//! arrived, in a pcap file (raw IP, real timestamps), rotated by size:
//! `dropped.pcap` becomes `dropped.pcap.1` and so on, `keep` files in all.
//! `tcpdump -r` and Wireshark read it, and `op25b replay` of it gives the
//! same verdicts.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;

use super::writer::{create_dir_of, Failures, WriterThread};
use crate::config::CaptureConfig;
use crate::dataplane::capture::{CaptureSource, SNAPLEN};
use crate::stats::{OutputFile, WriteErrors};

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
#[error("capture.dropped {path}: {cause}")]
pub struct CaptureError {
    path: PathBuf,
    cause: io::Error,
}

/// The file under the pcap writer, shared with the loop so that it can
/// flush whenever the queue runs empty (the writer has no flush of its own).
#[derive(Clone)]
struct Out(Rc<RefCell<BufWriter<File>>>);

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

fn create(path: &Path) -> io::Result<File> {
    create_dir_of(path)?;
    File::create(path)
}

/// A pcap writer (header written) over `file`, and its flushable end.
fn pcap(file: File) -> io::Result<(PcapWriter<Out>, Out)> {
    let out = Out(Rc::new(RefCell::new(BufWriter::new(file))));
    let header = PcapHeader { datalink: DataLink::RAW, snaplen: SNAPLEN as u32, ..PcapHeader::default() };
    let w = PcapWriter::with_header(out.clone(), header).map_err(io::Error::other)?;
    Ok((w, out))
}

/// `path` with `.n` appended.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// dropped.pcap -> .1 -> .2 ...; the oldest beyond `keep` files goes.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let last = keep.saturating_sub(1);
    if last == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..last).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    std::fs::rename(path, numbered(path, 1))
}

/// Creates the file of `cfg` and starts writing what arrives from the data
/// plane, until it stops (join the thread after it); failed writes are
/// counted in `errors`. `None` without `[capture] dropped`.
pub fn start(
    cfg: &CaptureConfig,
    source: CaptureSource,
    errors: Arc<WriteErrors>,
) -> Result<Option<WriterThread>, CaptureError> {
    let Some(path) = cfg.dropped.clone() else { return Ok(None) };
    let err = |cause| CaptureError { path: path.clone(), cause };
    let file = create(&path).map_err(err)?;
    let (max, keep) = (cfg.max_bytes, cfg.keep);
    let p = path.clone();
    let failures = Failures::new(OutputFile::Capture, path.clone(), errors);
    let thread = WriterThread::spawn("op25b-capture", move || write_loop(source, file, &p, (max, keep), failures))
        .map_err(err)?;
    Ok(Some(thread))
}

fn write_loop(source: CaptureSource, file: File, path: &Path, (max, keep): (u64, usize), mut failures: Failures) {
    // Forwarding goes on whatever fails here; the packets are lost, counted.
    let (mut writer, mut out) = match pcap(file) {
        Ok(w) => w,
        Err(e) => {
            failures.failed(&e);
            return drain(source, failures);
        }
    };
    // The pcap header is 24 bytes, each record 16 plus the data.
    let mut written: u64 = 24;
    while let Ok(first) = source.filled.recv() {
        let mut next = Some(first);
        while let Some(c) = next.take().or_else(|| source.filled.try_recv().ok()) {
            let record = 16 + c.len as u64;
            if written + record > max && written > 24 {
                let _ = out.flush();
                drop(writer);
                match rotate(path, keep).and_then(|()| create(path)).and_then(pcap) {
                    Ok((w, o)) => (writer, out) = (w, o),
                    Err(e) => {
                        failures.failed(&e);
                        let _ = source.free.try_send(c.buf);
                        return drain(source, failures);
                    }
                }
                written = 24;
            }
            let ts = c.at.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap_or_default();
            let orig_len = u32::try_from(c.orig_len).unwrap_or(u32::MAX);
            failures.check(writer.write_packet(&PcapPacket::new(ts, orig_len, &c.buf[..c.len])));
            written += record;
            let _ = source.free.try_send(c.buf);
        }
        // The queue ran empty: what was written is readable now.
        failures.check(out.flush());
        // Let the next burst gather: a worker's send wakes this thread only
        // while it waits in `recv`, so under load one wake-up serves a
        // batch instead of one per packet (the pool holds what arrives meanwhile).
        std::thread::sleep(BATCH);
    }
}

/// How long the writer lets packets gather after a batch.
const BATCH: std::time::Duration = std::time::Duration::from_millis(5);

/// After the file could not be made: hand every buffer back, so the workers
/// go on until the data plane stops; each packet not written is a failed write.
fn drain(source: CaptureSource, mut failures: Failures) {
    while let Ok(c) = source.filled.recv() {
        failures.failed(&"no capture file");
        let _ = source.free.try_send(c.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::capture::pool;
    use pcap_file::pcap::PcapReader;

    fn records(path: &Path) -> usize {
        let mut r = PcapReader::new(File::open(path).expect("capture file")).expect("a pcap file");
        assert_eq!(r.header().datalink, DataLink::RAW);
        let mut n = 0;
        while let Some(p) = r.next_packet() {
            p.expect("whole records");
            n += 1;
        }
        n
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("op25b-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("dropped.pcap");
        let cfg = CaptureConfig { dropped: Some(path.clone()), max_bytes: 4096, keep: 3 };
        let (sink, source) = pool();
        let writer = start(&cfg, source, Arc::default()).expect("starts").expect("configured");
        let packet = crate::testing::packets::syn("100.64.1.10", "203.0.113.25", 25);
        let mut offered = 0;
        for _ in 0..400 {
            // The pool may run empty while the writer catches up: count what went in.
            while !sink.offer(&packet, std::time::SystemTime::now()) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            offered += 1;
        }
        drop(sink);
        writer.join();
        let files: Vec<PathBuf> = [path.clone(), numbered(&path, 1), numbered(&path, 2)].into_iter().collect();
        for f in &files {
            assert!(f.exists(), "{}", f.display());
            assert!(std::fs::metadata(f).unwrap().len() <= 4096, "{} over max_bytes", f.display());
        }
        assert!(!numbered(&path, 3).exists(), "keep = 3 files in all");
        // Each record is 16 + 40 bytes: 72 fit in 4096 after the 24-byte header.
        assert_eq!(records(&numbered(&path, 1)), 72);
        assert!(records(&path) > 0 && offered == 400);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
