//! Types shared by the IPv4 and IPv6 headers and the transports above them: the IP protocol
//! number and the bounded option bytes of an IPv4 or TCP header.

use super::{Result, WireError};

/// The protocol number of an IPv4 header or the next header of an IPv6 header (IANA "Assigned
/// Internet Protocol Numbers"). Values this switch does not look into are carried as
/// `Unknown`, including IPv6 extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    Icmp,
    /// IPv4-in-IP encapsulation (RFC 2003).
    IpIp,
    Tcp,
    Udp,
    Icmpv6,
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            4 => IpProtocol::IpIp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::IpIp => 4,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// The most option bytes an IPv4 header (IHL 15) or a TCP header (data offset 15) can carry.
pub const MAX_OPTIONS_LEN: usize = 40;

/// The option bytes of an IPv4 or TCP header, kept as bytes without interpreting them: at most
/// [`MAX_OPTIONS_LEN`] bytes and a multiple of 4, so that they fill whole header words.
/// Owned and `Copy`, so that a `Repr` holding them needs no lifetime and no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderOptions {
    // Invariant: bytes[len..] are zero, so the derived equality compares only the options.
    bytes: [u8; MAX_OPTIONS_LEN],
    len: u8,
}

impl HeaderOptions {
    /// No options.
    pub const EMPTY: HeaderOptions = HeaderOptions {
        bytes: [0; MAX_OPTIONS_LEN],
        len: 0,
    };

    /// Copies `options`: `Malformed` if longer than [`MAX_OPTIONS_LEN`] or not a multiple of 4
    /// (pad with End-of-Option-List zero bytes first).
    pub fn new(options: &[u8]) -> Result<HeaderOptions> {
        if options.len() > MAX_OPTIONS_LEN || options.len() % 4 != 0 {
            return Err(WireError::Malformed);
        }
        let mut bytes = [0u8; MAX_OPTIONS_LEN];
        bytes[..options.len()].copy_from_slice(options);
        Ok(HeaderOptions {
            bytes,
            len: options.len() as u8,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub const fn len(&self) -> usize {
        self.len as usize
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for HeaderOptions {
    fn default() -> Self {
        HeaderOptions::EMPTY
    }
}

impl core::fmt::Debug for HeaderOptions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.as_bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_round_trip() {
        for n in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(n)), n);
        }
        assert_eq!(IpProtocol::from(1), IpProtocol::Icmp);
        assert_eq!(IpProtocol::from(4), IpProtocol::IpIp);
        assert_eq!(IpProtocol::from(6), IpProtocol::Tcp);
        assert_eq!(IpProtocol::from(17), IpProtocol::Udp);
        assert_eq!(IpProtocol::from(58), IpProtocol::Icmpv6);
        assert_eq!(IpProtocol::from(0), IpProtocol::Unknown(0));
    }

    #[test]
    fn header_options_bounds() {
        assert!(HeaderOptions::new(&[]).unwrap().is_empty());
        let opts = HeaderOptions::new(&[0x94, 0x04, 0x00, 0x00]).unwrap();
        assert_eq!(opts.as_bytes(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(opts.len(), 4);
        assert_eq!(HeaderOptions::new(&[1, 2, 3]), Err(WireError::Malformed));
        assert_eq!(HeaderOptions::new(&[0; 44]), Err(WireError::Malformed));
        assert_eq!(HeaderOptions::new(&[0; 40]).unwrap().len(), 40);
    }
}
