//! Longest-prefix-match routing table (FIB) for IPv4 and IPv6.
//!
//! # Structure
//!
//! Each address family has its own multibit trie with a fixed stride of 8 bits and controlled
//! prefix expansion (a "stride trie", as in DIR-style lookup tables). A trie over `N` address
//! bytes has up to `N` levels; the node at level `l` is indexed by address byte `l`. Nodes live
//! in an arena `Vec` and refer to each other by `u32` index; node 0 is the root and is never
//! freed, so a child index of 0 means "no child".
//!
//! A prefix of length `L` lives in the node at level `max(0, ceil(L/8) - 1)` reached by its
//! leading full bytes, and is expanded over the `2^(8 * (level + 1) - L)` slots of that node that
//! it covers. A slot keeps the longest prefix covering it *at that level*; longer prefixes live
//! deeper and override it during the walk. `/0` is the root node expanded over all 256 slots.
//!
//! Each node also keeps the list of prefixes that live in it (value, byte, bits within the
//! level), so that a removal can recompute the slots it covered and so that [`Fib::get`] and
//! [`Fib::iter`] see exactly the prefixes that were inserted.
//!
//! # Memory
//!
//! A slot is 8 bytes: a `u32` whose low 31 bits are the child node index (0 = none) and whose
//! top bit says "a route is stored here", plus the `u32` route value (so every `u32` value,
//! including `u32::MAX`, can be stored). A separate 256-byte array holds each slot's stored
//! prefix length within the level, which only updates read. A node is therefore 256 × 8 bytes of
//! slots + 256 bytes of lengths + a small header (the prefix list's `Vec`, the node's path bytes,
//! its level and child count): 2336 bytes for IPv4 and 2352 bytes for IPv6, plus 8 bytes per
//! prefix in its list. [`Fib::memory_bytes`] reports the total including spare `Vec` capacity.
//! The 31-bit child index cannot overflow: 2^31 nodes would need over 4 TiB.
//!
//! # Cost
//!
//! * Lookup visits at most one node per address byte: at most 4 for IPv4 and 16 for IPv6, one
//!   8-byte slot read per visited node, independent of the number of routes. It walks down from
//!   the root by address byte, remembering the last route seen, and stops where there is no
//!   child. It never allocates and never panics.
//! * Insert walks (and creates, if needed) at most `N - 1` nodes, scans the node's prefix list
//!   (at most 511 entries) and writes at most 256 slots: bounded, independent of the table size,
//!   apart from the amortized growth of the arena and the per-node lists.
//! * Remove does the same walk, scans the prefix list once more to find the next longest prefix
//!   covering the removed one, rewrites at most 256 slots, and returns nodes left with neither
//!   prefixes nor children to a free list that later inserts reuse.
//!
//! Updates are control-plane work: the table is meant to be built (or cloned and modified) by
//! control and read by workers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// Why a [`Fib`] update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FibError {
    /// The prefix length exceeds the address width (32 for IPv4, 128 for IPv6).
    #[error("prefix length {0} is too long for the address family")]
    BadPrefixLen(u8),
}

/// A longest-prefix-match table from IPv4 and IPv6 prefixes to caller-chosen `u32` values
/// (typically route indices). See the [module documentation](self) for the structure and costs.
///
/// IPv4 and IPv6 routes are kept in separate tries: an IPv4-mapped IPv6 address is looked up as
/// IPv6.
#[derive(Clone, Default)]
pub struct Fib {
    v4: Trie<4>,
    v6: Trie<16>,
}

impl Fib {
    /// An empty table.
    pub fn new() -> Fib {
        Fib::default()
    }

    /// Inserts or replaces the route for `addr/len`; host bits of `addr` are ignored. Returns the
    /// previous value of exactly that prefix, or [`FibError::BadPrefixLen`] if `len` is longer
    /// than the address (32 for IPv4, 128 for IPv6).
    pub fn insert(&mut self, addr: IpAddr, len: u8, value: u32) -> Result<Option<u32>, FibError> {
        match addr {
            IpAddr::V4(a) => self.v4.insert(a.octets(), len, value),
            IpAddr::V6(a) => self.v6.insert(a.octets(), len, value),
        }
    }

    /// Removes exactly the prefix `addr/len` (host bits ignored) and returns its value. The
    /// addresses it covered fall back to the next longest prefix. Returns `None` if the prefix is
    /// not present or `len` is too long.
    pub fn remove(&mut self, addr: IpAddr, len: u8) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.v4.remove(a.octets(), len),
            IpAddr::V6(a) => self.v6.remove(a.octets(), len),
        }
    }

    /// The value of the longest IPv4 prefix containing `addr`: at most 4 node visits.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<u32> {
        self.v4.lookup(&addr.octets())
    }

    /// The value of the longest IPv6 prefix containing `addr`: at most 16 node visits.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<u32> {
        self.v6.lookup(&addr.octets())
    }

    /// The value of the longest prefix of the address's family containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// The value of exactly the prefix `addr/len` (host bits ignored), if present.
    pub fn get(&self, addr: IpAddr, len: u8) -> Option<u32> {
        match addr {
            IpAddr::V4(a) => self.v4.get(a.octets(), len),
            IpAddr::V6(a) => self.v6.get(a.octets(), len),
        }
    }

    /// The number of prefixes of both families.
    pub fn len(&self) -> usize {
        self.v4.count + self.v6.count
    }

    /// Whether the table holds no prefix at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All prefixes as `(masked address, length, value)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, u8, u32)> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|(a, len, v)| (IpAddr::V4(Ipv4Addr::from(a)), len, v));
        let v6 = self
            .v6
            .iter()
            .map(|(a, len, v)| (IpAddr::V6(Ipv6Addr::from(a)), len, v));
        v4.chain(v6)
    }

    /// Approximate heap bytes used: node arenas (including spare capacity), prefix lists and
    /// free lists of both families.
    pub fn memory_bytes(&self) -> usize {
        self.v4.memory_bytes() + self.v6.memory_bytes()
    }
}

impl fmt::Debug for Fib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fib")
            .field("v4_prefixes", &self.v4.count)
            .field("v6_prefixes", &self.v6.count)
            .finish_non_exhaustive()
    }
}

/// Slots per node: one per value of an address byte.
const FANOUT: usize = 256;
/// The root node's index; as a child index it means "no child".
const ROOT: u32 = 0;
/// Set in [`Slot::meta`] when the slot stores a route.
const ROUTE_FLAG: u32 = 1 << 31;
/// The child index bits of [`Slot::meta`].
const CHILD_MASK: u32 = ROUTE_FLAG - 1;

/// One slot of a node: what a lookup reads at each level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Child node index in the low 31 bits (0 = none), [`ROUTE_FLAG`] if `value` is valid.
    meta: u32,
    /// The route of the longest prefix covering this slot at this level.
    value: u32,
}

impl Slot {
    const EMPTY: Slot = Slot { meta: 0, value: 0 };

    #[inline]
    fn child(self) -> u32 {
        self.meta & CHILD_MASK
    }

    #[inline]
    fn has_route(self) -> bool {
        self.meta & ROUTE_FLAG != 0
    }
}

/// A prefix stored in a node: `bits` (0..=8, 0 only at the root) of `byte` within the node's
/// level, the rest of the prefix being the node's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    value: u32,
    /// The address byte at the node's level, masked to `bits`.
    byte: u8,
    bits: u8,
}

impl Prefix {
    /// The node slots this prefix expands over.
    fn slots(self) -> Range<usize> {
        let start = usize::from(self.byte);
        start..start + (1usize << (8 - self.bits))
    }

    /// Whether this prefix covers `byte` at its level.
    fn covers(self, byte: u8) -> bool {
        byte & byte_mask(self.bits) == self.byte
    }
}

#[derive(Clone)]
struct Node<const N: usize> {
    slots: [Slot; FANOUT],
    /// Bits within this level of the prefix stored in each slot (meaningful if it has a route).
    lens: [u8; FANOUT],
    /// The prefixes that live in this node.
    prefixes: Vec<Prefix>,
    /// The address bytes leading to this node (`base[..level]`), zero after.
    base: [u8; N],
    level: u8,
    /// How many slots have a child.
    children: u16,
}

impl<const N: usize> Node<N> {
    fn new(level: u8, base: [u8; N]) -> Node<N> {
        Node {
            slots: [Slot::EMPTY; FANOUT],
            lens: [0; FANOUT],
            prefixes: Vec::new(),
            base,
            level,
            children: 0,
        }
    }
}

/// A stride-8 trie over `N`-byte addresses.
#[derive(Clone)]
struct Trie<const N: usize> {
    /// The node arena; `nodes[0]` is the root.
    nodes: Vec<Node<N>>,
    /// Indices of unused nodes in `nodes`, reset to empty.
    free: Vec<u32>,
    /// The number of prefixes stored.
    count: usize,
}

impl<const N: usize> Default for Trie<N> {
    fn default() -> Self {
        Trie {
            nodes: vec![Node::new(0, [0; N])],
            free: Vec::new(),
            count: 0,
        }
    }
}

/// The mask of the top `bits` (0..=8) bits of a byte.
fn byte_mask(bits: u8) -> u8 {
    (0xff00u16 >> bits.min(8)) as u8
}

/// `addr` with every bit after the first `len` cleared.
fn masked<const N: usize>(mut addr: [u8; N], len: u8) -> [u8; N] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = usize::from(len).saturating_sub(i * 8).min(8) as u8;
        *byte &= byte_mask(bits);
    }
    addr
}

/// The level of the node a prefix of length `len` lives in, and its bits within that level.
fn locate(len: u8) -> (usize, u8) {
    let level = usize::from(len.saturating_sub(1) / 8);
    (level, len - 8 * level as u8)
}

impl<const N: usize> Trie<N> {
    const MAX_LEN: u8 = (N * 8) as u8;

    #[inline]
    fn lookup(&self, addr: &[u8; N]) -> Option<u32> {
        let mut best = None;
        let mut index = ROOT as usize;
        for &byte in addr {
            let Some(node) = self.nodes.get(index) else {
                break;
            };
            let slot = node.slots[usize::from(byte)];
            if slot.has_route() {
                best = Some(slot.value);
            }
            let child = slot.child();
            if child == ROOT {
                break;
            }
            index = child as usize;
        }
        best
    }

    /// The node at `level` on the path of `addr`, if it exists.
    fn find_node(&self, addr: &[u8; N], level: usize) -> Option<usize> {
        let mut index = ROOT as usize;
        for &byte in &addr[..level] {
            let child = self.nodes.get(index)?.slots[usize::from(byte)].child();
            if child == ROOT {
                return None;
            }
            index = child as usize;
        }
        Some(index)
    }

    fn get(&self, addr: [u8; N], len: u8) -> Option<u32> {
        if len > Self::MAX_LEN {
            return None;
        }
        let addr = masked(addr, len);
        let (level, bits) = locate(len);
        let node = &self.nodes[self.find_node(&addr, level)?];
        let byte = addr[level];
        node.prefixes
            .iter()
            .find(|p| p.byte == byte && p.bits == bits)
            .map(|p| p.value)
    }

    fn insert(&mut self, addr: [u8; N], len: u8, value: u32) -> Result<Option<u32>, FibError> {
        if len > Self::MAX_LEN {
            return Err(FibError::BadPrefixLen(len));
        }
        let addr = masked(addr, len);
        let (level, bits) = locate(len);

        let mut index = ROOT;
        for (l, &byte) in addr[..level].iter().enumerate() {
            let byte = usize::from(byte);
            let child = self.nodes[index as usize].slots[byte].child();
            index = if child != ROOT {
                child
            } else {
                let new = self.alloc(l + 1, &addr);
                let parent = &mut self.nodes[index as usize];
                parent.slots[byte].meta |= new;
                parent.children += 1;
                new
            };
        }

        let node = &mut self.nodes[index as usize];
        let byte = addr[level];
        if let Some(p) = node
            .prefixes
            .iter_mut()
            .find(|p| p.byte == byte && p.bits == bits)
        {
            let old = p.value;
            p.value = value;
            for s in p.slots() {
                // A slot in range holding a route of the same length is owned by this prefix.
                if node.slots[s].has_route() && node.lens[s] == bits {
                    node.slots[s].value = value;
                }
            }
            return Ok(Some(old));
        }

        let prefix = Prefix { value, byte, bits };
        node.prefixes.push(prefix);
        for s in prefix.slots() {
            let slot = &mut node.slots[s];
            if !slot.has_route() || node.lens[s] < bits {
                slot.meta |= ROUTE_FLAG;
                slot.value = value;
                node.lens[s] = bits;
            }
        }
        self.count += 1;
        Ok(None)
    }

    fn remove(&mut self, addr: [u8; N], len: u8) -> Option<u32> {
        if len > Self::MAX_LEN {
            return None;
        }
        let addr = masked(addr, len);
        let (level, bits) = locate(len);

        // path[l] is the node at level l on the way down.
        let mut path = [ROOT; N];
        let mut index = ROOT;
        for (l, &byte) in addr[..level].iter().enumerate() {
            path[l] = index;
            let child = self.nodes[index as usize].slots[usize::from(byte)].child();
            if child == ROOT {
                return None;
            }
            index = child;
        }
        path[level] = index;

        let node = &mut self.nodes[index as usize];
        let byte = addr[level];
        let pos = node
            .prefixes
            .iter()
            .position(|p| p.byte == byte && p.bits == bits)?;
        let removed = node.prefixes.swap_remove(pos);
        // Every slot the removed prefix owned falls back to the longest shorter prefix of this
        // node covering it; any such prefix covers the removed prefix's whole range.
        let fallback = node
            .prefixes
            .iter()
            .filter(|p| p.bits < bits && p.covers(byte))
            .max_by_key(|p| p.bits)
            .copied();
        for s in removed.slots() {
            let slot = &mut node.slots[s];
            if slot.has_route() && node.lens[s] == bits {
                match fallback {
                    Some(f) => {
                        slot.value = f.value;
                        node.lens[s] = f.bits;
                    }
                    None => {
                        slot.meta &= CHILD_MASK;
                        slot.value = 0;
                        node.lens[s] = 0;
                    }
                }
            }
        }
        self.count -= 1;

        // Free the nodes left with neither prefixes nor children, bottom up (never the root).
        let mut l = level;
        while l > 0 {
            let index = path[l];
            let node = &self.nodes[index as usize];
            if !node.prefixes.is_empty() || node.children != 0 {
                break;
            }
            self.nodes[index as usize] = Node::new(0, [0; N]);
            self.free.push(index);
            let parent = &mut self.nodes[path[l - 1] as usize];
            parent.slots[usize::from(addr[l - 1])].meta &= ROUTE_FLAG;
            parent.children -= 1;
            l -= 1;
        }
        Some(removed.value)
    }

    /// A node at `level` on the path of `addr`, reused from the free list if possible.
    fn alloc(&mut self, level: usize, addr: &[u8; N]) -> u32 {
        let mut base = [0; N];
        base[..level].copy_from_slice(&addr[..level]);
        if let Some(index) = self.free.pop() {
            let node = &mut self.nodes[index as usize];
            node.base = base;
            node.level = level as u8;
            index
        } else {
            // Fits in 31 bits: memory runs out long before 2^31 nodes of over 2 KiB.
            let index = self.nodes.len() as u32;
            debug_assert!(index <= CHILD_MASK);
            self.nodes.push(Node::new(level as u8, base));
            index
        }
    }

    fn iter(&self) -> impl Iterator<Item = ([u8; N], u8, u32)> + '_ {
        self.nodes.iter().flat_map(|node| {
            node.prefixes.iter().map(move |p| {
                let mut addr = node.base;
                addr[usize::from(node.level)] = p.byte;
                (addr, node.level * 8 + p.bits, p.value)
            })
        })
    }

    fn memory_bytes(&self) -> usize {
        let lists: usize = self
            .nodes
            .iter()
            .map(|n| n.prefixes.capacity() * size_of::<Prefix>())
            .sum();
        self.nodes.capacity() * size_of::<Node<N>>() + lists + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("test address"))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().expect("test address"))
    }

    fn live_nodes<const N: usize>(trie: &Trie<N>) -> usize {
        trie.nodes.len() - trie.free.len()
    }

    /// Checks the trie's internal invariants: child counts, free nodes empty, and every slot
    /// holding the longest prefix of its node covering it.
    fn check_invariants<const N: usize>(trie: &Trie<N>) {
        let free: HashSet<u32> = trie.free.iter().copied().collect();
        assert_eq!(free.len(), trie.free.len(), "duplicate free node");
        assert!(!free.contains(&ROOT));
        let mut count = 0;
        let mut referenced = HashSet::new();
        for (i, node) in trie.nodes.iter().enumerate() {
            if free.contains(&(i as u32)) {
                assert!(node.prefixes.is_empty() && node.children == 0);
                assert!(node.slots.iter().all(|s| *s == Slot::EMPTY));
                continue;
            }
            count += node.prefixes.len();
            if i != 0 {
                assert!(
                    !node.prefixes.is_empty() || node.children != 0,
                    "empty live node"
                );
            }
            let mut children = 0;
            for (s, slot) in node.slots.iter().enumerate() {
                let byte = s as u8;
                if slot.child() != ROOT {
                    children += 1;
                    assert!(referenced.insert(slot.child()), "child referenced twice");
                    let child = &trie.nodes[slot.child() as usize];
                    assert_eq!(child.level, node.level + 1);
                    let l = usize::from(node.level);
                    assert_eq!(child.base[..l], node.base[..l]);
                    assert_eq!(child.base[l], byte);
                }
                let best = node
                    .prefixes
                    .iter()
                    .filter(|p| p.covers(byte))
                    .max_by_key(|p| p.bits);
                match best {
                    Some(p) => {
                        assert!(slot.has_route());
                        assert_eq!(slot.value, p.value);
                        assert_eq!(node.lens[s], p.bits);
                    }
                    None => assert!(!slot.has_route()),
                }
            }
            assert_eq!(children, node.children);
        }
        assert_eq!(count, trie.count);
        assert_eq!(referenced.len() + free.len() + 1, trie.nodes.len());
    }

    #[test]
    fn fib_default_route() {
        let mut fib = Fib::new();
        assert!(fib.is_empty());
        assert_eq!(fib.lookup(v4("1.2.3.4")), None);
        assert_eq!(fib.insert(v4("0.0.0.0"), 0, 7), Ok(None));
        for a in ["0.0.0.0", "1.2.3.4", "255.255.255.255", "10.0.0.1"] {
            assert_eq!(fib.lookup(v4(a)), Some(7), "{a}");
        }
        assert_eq!(fib.lookup(v6("::1")), None);
        assert_eq!(fib.insert(v6("::"), 0, 9), Ok(None));
        assert_eq!(fib.lookup(v6("::1")), Some(9));
        assert_eq!(
            fib.lookup(v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(9)
        );
        assert_eq!(fib.lookup(v4("1.2.3.4")), Some(7));
        assert_eq!(fib.len(), 2);
        assert_eq!(fib.remove(v4("0.0.0.0"), 0), Some(7));
        assert_eq!(fib.lookup(v4("1.2.3.4")), None);
        assert_eq!(fib.lookup(v6("::1")), Some(9));
        check_invariants(&fib.v4);
        check_invariants(&fib.v6);
    }

    #[test]
    fn fib_nested_prefixes_v4() {
        let mut fib = Fib::new();
        fib.insert(v4("10.0.0.0"), 8, 8).unwrap();
        fib.insert(v4("10.1.0.0"), 16, 16).unwrap();
        fib.insert(v4("10.1.2.0"), 24, 24).unwrap();
        fib.insert(v4("10.1.2.3"), 32, 32).unwrap();
        fib.insert(v4("10.1.128.0"), 17, 17).unwrap();
        fib.insert(v4("10.1.2.4"), 31, 31).unwrap();
        fib.insert(v4("10.64.0.0"), 10, 10).unwrap();
        let cases = [
            ("9.255.255.255", None),
            ("10.0.0.1", Some(8)),
            ("10.255.0.1", Some(8)),
            ("10.64.0.1", Some(10)),
            ("10.127.255.255", Some(10)),
            ("10.128.0.0", Some(8)),
            ("10.1.0.1", Some(16)),
            ("10.1.127.255", Some(16)),
            ("10.1.128.0", Some(17)),
            ("10.1.255.255", Some(17)),
            ("10.1.2.1", Some(24)),
            ("10.1.2.3", Some(32)),
            ("10.1.2.4", Some(31)),
            ("10.1.2.5", Some(31)),
            ("10.1.2.6", Some(24)),
            ("10.1.3.0", Some(16)),
            ("11.0.0.0", None),
        ];
        for (a, want) in cases {
            assert_eq!(fib.lookup(v4(a)), want, "{a}");
            let IpAddr::V4(a4) = v4(a) else {
                unreachable!()
            };
            assert_eq!(fib.lookup_v4(a4), want, "{a}");
        }
        assert_eq!(fib.len(), 7);
        assert_eq!(fib.get(v4("10.1.2.0"), 24), Some(24));
        assert_eq!(fib.get(v4("10.1.2.0"), 23), None);
        check_invariants(&fib.v4);
    }

    #[test]
    fn fib_host_bits_are_masked() {
        let mut fib = Fib::new();
        assert_eq!(fib.insert(v4("10.1.2.3"), 8, 1), Ok(None));
        assert_eq!(fib.get(v4("10.0.0.0"), 8), Some(1));
        assert_eq!(fib.get(v4("10.200.0.0"), 8), Some(1));
        assert_eq!(fib.insert(v4("10.9.9.9"), 8, 2), Ok(Some(1)));
        let all: Vec<_> = fib.iter().collect();
        assert_eq!(all, vec![(v4("10.0.0.0"), 8, 2)]);
        assert_eq!(fib.remove(v4("10.255.255.255"), 8), Some(2));
        assert!(fib.is_empty());
    }

    #[test]
    fn fib_replace() {
        let mut fib = Fib::new();
        fib.insert(v4("10.0.0.0"), 8, 1).unwrap();
        fib.insert(v4("10.0.0.0"), 9, 2).unwrap();
        fib.insert(v4("10.0.0.0"), 24, 3).unwrap();
        assert_eq!(fib.insert(v4("10.0.0.0"), 8, 4), Ok(Some(1)));
        assert_eq!(fib.len(), 3);
        assert_eq!(fib.lookup(v4("10.200.0.1")), Some(4));
        assert_eq!(fib.lookup(v4("10.1.0.1")), Some(2));
        assert_eq!(fib.lookup(v4("10.0.0.1")), Some(3));
        assert_eq!(fib.insert(v4("10.0.0.0"), 9, 5), Ok(Some(2)));
        assert_eq!(fib.lookup(v4("10.1.0.1")), Some(5));
        assert_eq!(fib.lookup(v4("10.200.0.1")), Some(4));
        // Every u32 is a valid value.
        assert_eq!(fib.insert(v4("10.0.0.0"), 24, u32::MAX), Ok(Some(3)));
        assert_eq!(fib.lookup(v4("10.0.0.1")), Some(u32::MAX));
        check_invariants(&fib.v4);
    }

    #[test]
    fn fib_remove_falls_back_to_shorter_prefix() {
        let mut fib = Fib::new();
        fib.insert(v4("0.0.0.0"), 0, 0).unwrap();
        fib.insert(v4("10.0.0.0"), 8, 8).unwrap();
        fib.insert(v4("10.0.0.0"), 9, 9).unwrap();
        fib.insert(v4("10.0.0.0"), 12, 12).unwrap();
        fib.insert(v4("10.0.0.0"), 16, 16).unwrap();
        fib.insert(v4("10.0.1.0"), 24, 24).unwrap();
        let probe = v4("10.0.1.1");
        assert_eq!(fib.lookup(probe), Some(24));
        assert_eq!(fib.remove(probe, 24), Some(24));
        assert_eq!(fib.lookup(probe), Some(16));
        // Within one node: /16 falls back to /12, then /9.
        assert_eq!(fib.remove(probe, 16), Some(16));
        assert_eq!(fib.lookup(probe), Some(12));
        assert_eq!(fib.lookup(v4("10.15.0.0")), Some(12));
        assert_eq!(fib.lookup(v4("10.16.0.0")), Some(9));
        assert_eq!(fib.remove(probe, 12), Some(12));
        assert_eq!(fib.lookup(probe), Some(9));
        assert_eq!(fib.lookup(v4("10.128.0.0")), Some(8));
        assert_eq!(fib.remove(probe, 9), Some(9));
        assert_eq!(fib.lookup(probe), Some(8));
        assert_eq!(fib.remove(probe, 8), Some(8));
        assert_eq!(fib.lookup(probe), Some(0));
        assert_eq!(fib.remove(probe, 0), Some(0));
        assert_eq!(fib.lookup(probe), None);
        assert!(fib.is_empty());
        check_invariants(&fib.v4);
    }

    #[test]
    fn fib_remove_missing() {
        let mut fib = Fib::new();
        assert_eq!(fib.remove(v4("10.0.0.0"), 8), None);
        fib.insert(v4("10.1.0.0"), 16, 1).unwrap();
        assert_eq!(fib.remove(v4("10.0.0.0"), 8), None);
        assert_eq!(fib.remove(v4("10.1.0.0"), 17), None);
        assert_eq!(fib.remove(v4("10.1.2.0"), 24), None);
        assert_eq!(fib.remove(v4("10.1.0.0"), 33), None);
        assert_eq!(fib.remove(v6("::"), 16), None);
        assert_eq!(fib.len(), 1);
        check_invariants(&fib.v4);
    }

    #[test]
    fn fib_remove_frees_nodes_and_reinsert_works() {
        let mut fib = Fib::new();
        fib.insert(v4("10.0.0.0"), 8, 8).unwrap();
        assert_eq!(live_nodes(&fib.v4), 1);
        fib.insert(v4("10.1.2.3"), 32, 32).unwrap();
        assert_eq!(live_nodes(&fib.v4), 4);
        let arena = fib.v4.nodes.len();
        assert_eq!(fib.remove(v4("10.1.2.3"), 32), Some(32));
        assert_eq!(live_nodes(&fib.v4), 1);
        assert_eq!(fib.v4.free.len(), 3);
        check_invariants(&fib.v4);
        assert_eq!(fib.lookup(v4("10.1.2.3")), Some(8));

        // A different path reuses the freed nodes.
        fib.insert(v4("192.168.7.0"), 25, 25).unwrap();
        assert_eq!(fib.v4.nodes.len(), arena);
        assert_eq!(live_nodes(&fib.v4), 4);
        assert_eq!(fib.lookup(v4("192.168.7.1")), Some(25));
        assert_eq!(fib.lookup(v4("192.168.7.128")), None);
        assert_eq!(fib.lookup(v4("10.1.2.3")), Some(8));
        check_invariants(&fib.v4);

        // A node with a child stays; it goes once the child goes.
        fib.insert(v4("192.168.0.0"), 20, 20).unwrap();
        assert_eq!(fib.remove(v4("192.168.0.0"), 20), Some(20));
        assert_eq!(live_nodes(&fib.v4), 4);
        assert_eq!(fib.remove(v4("192.168.7.0"), 25), Some(25));
        assert_eq!(live_nodes(&fib.v4), 1);
        assert_eq!(fib.lookup(v4("192.168.7.1")), None);
        check_invariants(&fib.v4);
    }

    #[test]
    fn fib_v6_prefixes() {
        let mut fib = Fib::new();
        fib.insert(v6("::"), 0, 0).unwrap();
        fib.insert(v6("2001:db8:1::"), 48, 48).unwrap();
        fib.insert(v6("2001:db8:1:2::"), 64, 64).unwrap();
        fib.insert(v6("2001:db8:1:2::5"), 128, 128).unwrap();
        fib.insert(v6("2001:db8:1:2::"), 127, 127).unwrap();
        fib.insert(v6("2001:db8:1:2::"), 65, 65).unwrap();
        let cases = [
            ("::1", Some(0)),
            ("2001:db8::1", Some(0)),
            ("2001:db8:1::1", Some(48)),
            ("2001:db8:1:ffff::1", Some(48)),
            ("2001:db8:1:2:8000::1", Some(64)),
            ("2001:db8:1:2::", Some(127)),
            ("2001:db8:1:2::1", Some(127)),
            ("2001:db8:1:2::2", Some(65)),
            ("2001:db8:1:2::4", Some(65)),
            ("2001:db8:1:2::5", Some(128)),
            ("2001:db8:1:2::6", Some(65)),
            ("2001:db8:2::", Some(0)),
        ];
        for (a, want) in cases {
            assert_eq!(fib.lookup(v6(a)), want, "{a}");
        }
        assert_eq!(fib.lookup(v4("1.2.3.4")), None);
        assert_eq!(fib.get(v6("2001:db8:1::"), 48), Some(48));
        assert_eq!(fib.len(), 6);
        check_invariants(&fib.v6);
        assert_eq!(fib.remove(v6("2001:db8:1:2::5"), 128), Some(128));
        assert_eq!(fib.lookup(v6("2001:db8:1:2::5")), Some(65));
        assert_eq!(fib.remove(v6("2001:db8:1:2::"), 65), Some(65));
        assert_eq!(fib.remove(v6("2001:db8:1:2::"), 127), Some(127));
        assert_eq!(fib.lookup(v6("2001:db8:1:2::5")), Some(64));
        assert_eq!(fib.remove(v6("2001:db8:1:2::"), 64), Some(64));
        assert_eq!(fib.remove(v6("2001:db8:1::"), 48), Some(48));
        assert_eq!(fib.lookup(v6("2001:db8:1:2::5")), Some(0));
        assert_eq!(live_nodes(&fib.v6), 1);
        check_invariants(&fib.v6);
    }

    #[test]
    fn fib_bad_prefix_len() {
        let mut fib = Fib::new();
        assert_eq!(
            fib.insert(v4("10.0.0.0"), 33, 1),
            Err(FibError::BadPrefixLen(33))
        );
        assert_eq!(
            fib.insert(v6("::"), 129, 1),
            Err(FibError::BadPrefixLen(129))
        );
        assert_eq!(
            fib.insert(v4("10.0.0.0"), 255, 1),
            Err(FibError::BadPrefixLen(255))
        );
        assert_eq!(fib.insert(v6("::"), 33, 1), Ok(None));
        assert_eq!(fib.insert(v4("1.2.3.4"), 32, 2), Ok(None));
        assert_eq!(fib.get(v4("1.2.3.4"), 33), None);
        assert_eq!(fib.remove(v4("1.2.3.4"), 33), None);
        assert_eq!(fib.get(v6("::"), 200), None);
        assert_eq!(fib.len(), 2);
        assert_eq!(
            FibError::BadPrefixLen(33).to_string(),
            "prefix length 33 is too long for the address family"
        );
    }

    #[test]
    fn fib_iter_clone_debug() {
        let mut fib = Fib::new();
        fib.insert(v4("0.0.0.0"), 0, 1).unwrap();
        fib.insert(v4("10.1.2.128"), 25, 2).unwrap();
        fib.insert(v6("2001:db8::"), 32, 3).unwrap();
        fib.insert(v6("2001:db8::1"), 128, 4).unwrap();
        let mut all: Vec<_> = fib.iter().collect();
        all.sort();
        let mut want = vec![
            (v4("0.0.0.0"), 0, 1),
            (v4("10.1.2.128"), 25, 2),
            (v6("2001:db8::"), 32, 3),
            (v6("2001:db8::1"), 128, 4),
        ];
        want.sort();
        assert_eq!(all, want);

        let copy = fib.clone();
        fib.remove(v4("0.0.0.0"), 0);
        assert_eq!(copy.lookup(v4("1.1.1.1")), Some(1));
        assert_eq!(fib.lookup(v4("1.1.1.1")), None);
        assert_eq!(
            format!("{copy:?}"),
            "Fib { v4_prefixes: 2, v6_prefixes: 2, .. }"
        );
        assert!(copy.memory_bytes() > 0);
    }

    /// xorshift64*: small, deterministic, good enough for tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn u128(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    /// The mask of the first `len` bits of a `width`-bit address held in a u128.
    fn prefix_mask(width: u8, len: u8) -> u128 {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        if len == 0 {
            0
        } else {
            (u128::MAX << (width - len)) & all
        }
    }

    /// The obvious linear-scan reference.
    struct Naive {
        width: u8,
        routes: HashMap<(u128, u8), u32>,
    }

    impl Naive {
        fn lookup(&self, addr: u128) -> Option<u32> {
            self.routes
                .iter()
                .filter(|((a, len), _)| addr & prefix_mask(self.width, *len) == *a)
                .max_by_key(|((_, len), _)| *len)
                .map(|(_, v)| *v)
        }
    }

    fn to_ip(width: u8, a: u128) -> IpAddr {
        if width == 32 {
            IpAddr::V4(Ipv4Addr::from(a as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }

    fn from_ip(a: IpAddr) -> u128 {
        match a {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// A random prefix near one of the `pool` bases, so that prefixes nest and share nodes.
    fn random_prefix(rng: &mut Rng, width: u8, pool: &[u128]) -> (u128, u8) {
        let len = if rng.below(2) == 0 {
            // Around byte boundaries, where the levels meet.
            let k = rng.below(u64::from(width / 8) + 1) as i32 * 8 + rng.below(3) as i32 - 1;
            k.clamp(0, i32::from(width)) as u8
        } else {
            rng.below(u64::from(width) + 1) as u8
        };
        let base = pool[rng.below(pool.len() as u64) as usize];
        // Share the base's first `keep` bits, mostly nearly all of the prefix.
        let keep = if rng.below(4) == 0 {
            rng.below(u64::from(len) + 1) as u8
        } else {
            len.saturating_sub(rng.below(4) as u8)
        };
        let addr = (base & prefix_mask(width, keep)) | (rng.u128() & !prefix_mask(width, keep));
        (addr & prefix_mask(width, len), len)
    }

    fn check_against(fib: &Fib, naive: &Naive, rng: &mut Rng, pool: &[u128]) {
        let width = naive.width;
        let all = prefix_mask(width, width);
        let mut addrs = Vec::new();
        for _ in 0..500 {
            addrs.push(rng.u128() & all);
            let base = pool[rng.below(pool.len() as u64) as usize];
            let keep = rng.below(u64::from(width) + 1) as u8;
            addrs.push(
                (base & prefix_mask(width, keep)) | (rng.u128() & all & !prefix_mask(width, keep)),
            );
        }
        let prefixes: Vec<_> = naive.routes.keys().copied().collect();
        for _ in 0..400.min(prefixes.len()) {
            let (a, len) = prefixes[rng.below(prefixes.len() as u64) as usize];
            let last = a | (all & !prefix_mask(width, len));
            addrs.extend([a, last, a.wrapping_sub(1) & all, last.wrapping_add(1) & all]);
        }
        for a in addrs {
            let want = naive.lookup(a);
            assert_eq!(
                fib.lookup(to_ip(width, a)),
                want,
                "lookup {}",
                to_ip(width, a)
            );
        }

        assert_eq!(fib.len(), naive.routes.len());
        for (&(a, len), &v) in &naive.routes {
            assert_eq!(fib.get(to_ip(width, a), len), Some(v));
        }
        let listed: HashMap<(u128, u8), u32> = fib
            .iter()
            .map(|(a, len, v)| ((from_ip(a), len), v))
            .collect();
        assert_eq!(listed, naive.routes);
        check_invariants(&fib.v4);
        check_invariants(&fib.v6);
    }

    fn differential(width: u8, seed: u64) {
        let mut rng = Rng(seed);
        let all = prefix_mask(width, width);
        let pool: Vec<u128> = (0..4).map(|_| rng.u128() & all).collect();
        let mut fib = Fib::new();
        let mut naive = Naive {
            width,
            routes: HashMap::new(),
        };
        let mut next_value = 0u32;

        for _phase in 0..12 {
            for _ in 0..500 {
                let (a, len) = if !naive.routes.is_empty() && rng.below(10) < 4 {
                    // An existing prefix, to remove or replace.
                    let keys: Vec<_> = naive.routes.keys().copied().collect();
                    keys[rng.below(keys.len() as u64) as usize]
                } else {
                    random_prefix(&mut rng, width, &pool)
                };
                // Insert with random host bits set, to check masking.
                let noisy = a | (rng.u128() & all & !prefix_mask(width, len));
                if rng.below(10) < 3 {
                    assert_eq!(
                        fib.remove(to_ip(width, noisy), len),
                        naive.routes.remove(&(a, len))
                    );
                } else {
                    next_value = next_value.wrapping_add(1);
                    assert_eq!(
                        fib.insert(to_ip(width, noisy), len, next_value),
                        Ok(naive.routes.insert((a, len), next_value))
                    );
                }
            }
            check_against(&fib, &naive, &mut rng, &pool);
        }

        // Drain in random order, checking along the way; every node but the root is freed.
        let mut keys: Vec<_> = naive.routes.keys().copied().collect();
        for i in (1..keys.len()).rev() {
            keys.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (i, (a, len)) in keys.into_iter().enumerate() {
            assert_eq!(
                fib.remove(to_ip(width, a), len),
                naive.routes.remove(&(a, len))
            );
            if i % 500 == 0 {
                check_against(&fib, &naive, &mut rng, &pool);
            }
        }
        check_against(&fib, &naive, &mut rng, &pool);
        assert!(fib.is_empty());
        assert_eq!(live_nodes(&fib.v4), 1);
        assert_eq!(live_nodes(&fib.v6), 1);
    }

    #[test]
    fn fib_differential_v4() {
        differential(32, 0x9e37_79b9_7f4a_7c15);
        differential(32, 42);
    }

    #[test]
    fn fib_differential_v6() {
        differential(128, 0xdead_beef_cafe_f00d);
        differential(128, 7);
    }

    #[test]
    fn fib_scale_100k_v4() {
        // 100,000 distinct /24s from 10.0.0.0/24 on (10.0.0.0/8 holds only 65,536 of them, so
        // they continue into 11.0.0.0/8), inserted in random order, plus a /32 in every 16th.
        const COUNT: u32 = 100_000;
        let mut rng = Rng(0x1234_5678_9abc_def0);
        let mut order: Vec<u32> = (0..COUNT).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let net = |i: u32| 0x0a00_0000 + (i << 8);
        let host = |i: u32| net(i) + 1 + i % 200;
        let mut fib = Fib::new();
        for &i in &order {
            let addr = IpAddr::V4(Ipv4Addr::from(net(i)));
            assert_eq!(fib.insert(addr, 24, i), Ok(None));
            if i % 16 == 0 {
                let addr = IpAddr::V4(Ipv4Addr::from(host(i)));
                assert_eq!(fib.insert(addr, 32, COUNT + i), Ok(None));
            }
        }
        assert_eq!(fib.len(), (COUNT + COUNT / 16) as usize);

        for _ in 0..5000 {
            let i = rng.below(u64::from(COUNT)) as u32;
            let a = net(i) + rng.below(256) as u32;
            let want = if i % 16 == 0 && a == host(i) {
                COUNT + i
            } else {
                i
            };
            assert_eq!(fib.lookup_v4(Ipv4Addr::from(a)), Some(want));
            if i % 16 == 0 {
                assert_eq!(fib.lookup_v4(Ipv4Addr::from(host(i))), Some(COUNT + i));
            }
        }
        assert_eq!(fib.lookup_v4(Ipv4Addr::from(net(COUNT))), None);
        assert_eq!(fib.lookup_v4(Ipv4Addr::new(9, 255, 255, 255)), None);
        fib.insert(v4("0.0.0.0"), 0, u32::MAX).unwrap();
        assert_eq!(fib.lookup_v4(Ipv4Addr::from(net(COUNT))), Some(u32::MAX));
        assert_eq!(fib.lookup_v4(Ipv4Addr::from(net(7) + 9)), Some(7));

        let bytes = fib.memory_bytes();
        let nodes = live_nodes(&fib.v4);
        eprintln!(
            "fib: {} prefixes, {nodes} IPv4 nodes of {} bytes, memory_bytes() = {bytes} ({:.1} MiB)",
            fib.len(),
            size_of::<Node<4>>(),
            bytes as f64 / (1024.0 * 1024.0)
        );
        // 1 root + 2 level-1 + 391 level-2 + 6250 level-3 nodes.
        assert_eq!(nodes, 1 + 2 + 391 + 6250);
        assert!(bytes < 64 << 20, "memory_bytes() = {bytes}");
    }
}
