//! virtio-net feature bits: what a vhost-user port offers, and their names for `port show`.

pub const NET_F_CSUM: u64 = 1 << 0;
pub const NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const NET_F_HOST_TSO4: u64 = 1 << 11;
pub const NET_F_HOST_TSO6: u64 = 1 << 12;
pub const NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const NET_F_MQ: u64 = 1 << 22;
pub const F_NOTIFY_ON_EMPTY: u64 = 1 << 24;
pub const F_ANY_LAYOUT: u64 = 1 << 27;
pub const RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: rings start disabled and are enabled by message.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const F_VERSION_1: u64 = 1 << 32;

/// What a port offers. Not offered: packed rings (`virtio-queue` has split rings only), an
/// IOMMU, UDP segmentation (`HOST_USO`/`GUEST_USO*`), the control queue (QEMU keeps it).
pub const OFFERED: u64 = F_VERSION_1
    | F_PROTOCOL_FEATURES
    | RING_F_EVENT_IDX
    | RING_F_INDIRECT_DESC
    | F_NOTIFY_ON_EMPTY
    | F_ANY_LAYOUT
    | NET_F_MRG_RXBUF
    | NET_F_CSUM
    | NET_F_GUEST_CSUM
    | NET_F_HOST_TSO4
    | NET_F_HOST_TSO6
    | NET_F_GUEST_TSO4
    | NET_F_GUEST_TSO6
    | NET_F_MQ;

const NAMES: &[(u64, &str)] = &[
    (NET_F_CSUM, "CSUM"),
    (NET_F_GUEST_CSUM, "GUEST_CSUM"),
    (NET_F_GUEST_TSO4, "GUEST_TSO4"),
    (NET_F_GUEST_TSO6, "GUEST_TSO6"),
    (NET_F_HOST_TSO4, "HOST_TSO4"),
    (NET_F_HOST_TSO6, "HOST_TSO6"),
    (NET_F_MRG_RXBUF, "MRG_RXBUF"),
    (NET_F_MQ, "MQ"),
    (F_NOTIFY_ON_EMPTY, "NOTIFY_ON_EMPTY"),
    (F_ANY_LAYOUT, "ANY_LAYOUT"),
    (RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
    (RING_F_EVENT_IDX, "EVENT_IDX"),
    (F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    (F_VERSION_1, "VERSION_1"),
];

/// The names of the known bits set in `features`, in bit order (`CSUM`, `MRG_RXBUF`, ...).
pub fn names(features: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .filter(|(bit, _)| features & bit != 0)
        .map(|&(_, name)| name)
        .collect()
}

/// Length of the virtio-net header on a connection with `features`: 12 bytes
/// (`virtio_net_hdr_mrg_rxbuf`, with `num_buffers`) with `VERSION_1` or `MRG_RXBUF`, else 10.
pub fn header_len(features: u64) -> usize {
    if features & (F_VERSION_1 | NET_F_MRG_RXBUF) != 0 {
        12
    } else {
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_the_features() {
        assert_eq!(header_len(F_VERSION_1), 12);
        assert_eq!(header_len(NET_F_MRG_RXBUF), 12);
        assert_eq!(header_len(NET_F_CSUM), 10);
    }

    #[test]
    fn names_of_a_linux_guest() {
        let acked = F_VERSION_1 | NET_F_CSUM | NET_F_GUEST_CSUM | NET_F_MRG_RXBUF;
        assert_eq!(
            names(acked),
            ["CSUM", "GUEST_CSUM", "MRG_RXBUF", "VERSION_1"]
        );
    }
}
