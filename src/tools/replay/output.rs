//! The `--forwarded` / `--dropped` pcap files.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, TsResolution};

use super::capture::Record;
use super::error::ReplayError;

/// A `--forwarded` / `--dropped` file: pcap, nanosecond timestamps, the link
/// type of the first record written.
pub(super) struct Out {
    path: PathBuf,
    writer: Option<(DataLink, PcapWriter<BufWriter<File>>)>,
    file: Option<File>,
}

impl Out {
    pub(super) fn open(path: &Path) -> Result<Out, ReplayError> {
        let file =
            File::create(path).map_err(|e| ReplayError::Output { path: path.to_path_buf(), why: e.to_string() })?;
        Ok(Out { path: path.to_path_buf(), writer: None, file: Some(file) })
    }

    fn err(&self, why: String) -> ReplayError {
        ReplayError::Output { path: self.path.clone(), why }
    }

    fn start(&mut self, link: DataLink) -> Result<(), ReplayError> {
        if self.writer.is_some() {
            return Ok(());
        }
        let Some(file) = self.file.take() else { return Ok(()) };
        let header = PcapHeader { datalink: link, ts_resolution: TsResolution::NanoSecond, ..PcapHeader::default() };
        let w = PcapWriter::with_header(BufWriter::new(file), header).map_err(|e| self.err(e.to_string()))?;
        self.writer = Some((link, w));
        Ok(())
    }

    pub(super) fn write(&mut self, r: &Record<'_>) -> Result<(), ReplayError> {
        self.start(r.link)?;
        let Some((link, w)) = &mut self.writer else { return Ok(()) };
        if *link != r.link {
            let why = format!("link types {link:?} and {:?} cannot share one pcap file", r.link);
            return Err(ReplayError::Output { path: self.path.clone(), why });
        }
        w.write_packet(&PcapPacket::new(r.timestamp, r.orig_len, &r.data))
            .map(|_| ())
            .map_err(|e| ReplayError::Output { path: self.path.clone(), why: e.to_string() })
    }

    /// Writes what is buffered; an output that got no record is still a
    /// valid (empty) capture.
    pub(super) fn finish(mut self) -> Result<(), ReplayError> {
        self.start(DataLink::RAW)?;
        if let Some((_, w)) = self.writer.take() {
            use std::io::Write as _;
            w.into_writer().flush().map_err(|e| self.err(e.to_string()))?;
        }
        Ok(())
    }
}
