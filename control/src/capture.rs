//! The files `tapswitch capture` writes: pcapng (default) or pcap, read by tcpdump, tshark and
//! Wireshark, written with the pcap-file crate.
//!
//! A capture has one link type: Ethernet frames, or, for an underlay capture, the tunnels'
//! outer IPv4 packets (`LINKTYPE_IPV4`). (libpcap, and so tcpdump, reads no pcapng whose
//! interfaces differ in link type.) pcapng names its interface after the port (`tapswitch`
//! for every port); each packet carries its direction (`epb_flags`: inbound or outbound) and,
//! for a dropped frame, a comment `drop: STAGE: REASON`. A record of the other link type is
//! left out and counted.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use serde_json::Value;

use crate::trace::from_hex;

/// pcapng's `epb_flags` direction bits.
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

/// The writer under a capture file, shared so that it can be flushed between packets (the
/// pcap writer does not lend its writer out).
struct Shared<W>(Rc<RefCell<W>>);

impl<W: Write> Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

pub struct CaptureFile<W: Write> {
    format: Format<W>,
    out: Rc<RefCell<W>>,
}

enum Format<W: Write> {
    Ng {
        writer: PcapNgWriter<Shared<W>>,
        /// The file's link type: Ethernet, or IPv4 for an underlay capture.
        ipv4: bool,
    },
    Pcap {
        writer: PcapWriter<Shared<W>>,
        /// The one link type of the file: Ethernet, or IPv4 for an underlay capture.
        ipv4: bool,
    },
}

impl<W: Write> CaptureFile<W> {
    /// Starts a file: pcapng (`ng`) with interfaces named after `name`, or pcap.
    pub fn new(out: W, ng: bool, name: &str, snaplen: u32, underlay: bool) -> Result<Self, String> {
        let out = Rc::new(RefCell::new(out));
        let format = Self::start(Shared(Rc::clone(&out)), ng, name, snaplen, underlay)?;
        Ok(CaptureFile { format, out })
    }

    fn start(
        out: Shared<W>,
        ng: bool,
        name: &str,
        snaplen: u32,
        underlay: bool,
    ) -> Result<Format<W>, String> {
        let e = |e: pcap_file::PcapError| format!("capture file: {e}");
        let (link, suffix) = if underlay {
            (DataLink::IPV4, " underlay")
        } else {
            (DataLink::ETHERNET, "")
        };
        if ng {
            let mut w = PcapNgWriter::new(out).map_err(e)?;
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: link,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(format!("{name}{suffix}"))),
                    // Timestamps in nanoseconds, as pcap-file writes them.
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })
            .map_err(e)?;
            Ok(Format::Ng {
                writer: w,
                ipv4: underlay,
            })
        } else {
            let header = PcapHeader {
                snaplen,
                datalink: link,
                ..PcapHeader::default()
            };
            Ok(Format::Pcap {
                writer: PcapWriter::with_header(out, header).map_err(e)?,
                ipv4: underlay,
            })
        }
    }

    /// Pushes what is written to the file or pipe.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.borrow_mut().flush()
    }

    /// Writes one record of a `tap_poll` answer. Returns false for one this file cannot hold
    /// (the other link type).
    pub fn write(&mut self, record: &Value) -> Result<bool, String> {
        let data = from_hex(record["hex"].as_str().unwrap_or_default())?;
        let ts = Duration::from_nanos(record["ts_ns"].as_u64().unwrap_or(0));
        let len = record["len"].as_u64().unwrap_or(data.len() as u64) as u32;
        let ipv4 = record["link"] == "ipv4";
        let e = |e: pcap_file::PcapError| format!("capture file: {e}");
        match &mut self.format {
            Format::Ng {
                writer: w,
                ipv4: file,
            } => {
                if *file != ipv4 {
                    return Ok(false);
                }
                let mut options = vec![EnhancedPacketOption::Flags(
                    if record["direction"] == "out" {
                        OUTBOUND
                    } else {
                        INBOUND
                    },
                )];
                if let Some(c) = record["comment"].as_str() {
                    options.push(EnhancedPacketOption::Comment(Cow::Owned(format!(
                        "drop: {c}"
                    ))));
                }
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp: ts,
                    original_len: len,
                    data: Cow::Owned(data),
                    options,
                })
                .map_err(e)?;
                Ok(true)
            }
            Format::Pcap { writer, ipv4: file } => {
                if *file != ipv4 {
                    return Ok(false);
                }
                writer
                    .write_packet(&PcapPacket {
                        timestamp: ts,
                        orig_len: len,
                        data: Cow::Owned(data),
                    })
                    .map_err(e)?;
                Ok(true)
            }
        }
    }
}
