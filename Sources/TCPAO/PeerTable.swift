// Which configured peer a remote address belongs to, in a time that does not depend on the
// number of peers: a fleet may configure one peer per device (one MKT per peer pair), tens of
// thousands, and every queued segment asks.

/// The peers' prefixes as one open-addressing hash table keyed by (family, prefix length,
/// masked address), probed for each prefix length in use from the longest down: at most one
/// probe per distinct length (a handful in practice; 33 or 129 at the very most), never a scan
/// of the peers. Built once per `EngineConfig` (immutable, replaced on reload); a lookup makes
/// no heap allocation.
///
/// The answer is the one a scan of the peers in their order gives ("the first peer whose prefix
/// holds the address"): each entry stores the lowest peer index among the peers whose prefix
/// holds the entry's prefix, so even overlapping prefixes (which the configuration check
/// refuses) resolve as the scan would.
public struct PeerTable: Sendable {
    struct Entry: Sendable {
        var hi: UInt64 = 0
        var lo: UInt64 = 0
        /// 0: empty; else `tag(v6, length)`.
        var tag: UInt32 = 0
        var peer: Int32 = 0
    }

    let entries: ContiguousArray<Entry>
    let mask: Int
    /// The prefix lengths in use, longest first.
    let lengthsV4: ContiguousArray<UInt8>
    let lengthsV6: ContiguousArray<UInt8>

    public init(_ prefixes: [IPPrefix]) {
        // Distinct prefixes, each with the first peer that has it.
        var first: [IPPrefix: Int] = [:]
        for (i, p) in prefixes.enumerated() {
            let c = IPPrefix(address: p.masked(p.address), length: p.length)
            if first[c] == nil { first[c] = i }
        }
        var l4 = Set<Int>(), l6 = Set<Int>()
        for p in first.keys { if p.address.isV6 { l6.insert(p.length) } else { l4.insert(p.length) } }
        lengthsV4 = ContiguousArray(l4.sorted(by: >).map(UInt8.init))
        lengthsV6 = ContiguousArray(l6.sorted(by: >).map(UInt8.init))
        // Load factor at most 1/2: probe sequences stay short.
        var capacity = 8
        while capacity < 2 * first.count { capacity <<= 1 }
        mask = capacity - 1
        var table = ContiguousArray(repeating: Entry(), count: capacity)
        for (p, i) in first {
            // The scan's answer for any address in p: the lowest index among p and the
            // prefixes holding it (only a configuration with overlaps has any).
            var best = i
            for l in (p.address.isV6 ? l6 : l4) where l < p.length {
                let c = IPPrefix(address: IPPrefix(address: p.address, length: l).masked(p.address), length: l)
                if let j = first[c], j < best { best = j }
            }
            let tag = PeerTable.tag(p.address.isV6, p.length)
            var s = PeerTable.slot(p.address.hi, p.address.lo, tag) & mask
            while table[s].tag != 0 { s = (s + 1) & mask }
            table[s] = Entry(hi: p.address.hi, lo: p.address.lo, tag: tag, peer: Int32(best))
        }
        entries = table
    }

    @inline(__always)
    static func tag(_ v6: Bool, _ length: Int) -> UInt32 { (v6 ? 0x200 : 0x100) | UInt32(length) }

    /// murmur3's 64-bit finalizer over the key.
    @inline(__always)
    static func slot(_ hi: UInt64, _ lo: UInt64, _ tag: UInt32) -> Int {
        var h = hi &* 0x9E37_79B9_7F4A_7C15
        h ^= (lo << 29 | lo >> 35) ^ UInt64(tag) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        h = h &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 33
        return Int(truncatingIfNeeded: h)
    }

    /// The index of the first peer whose prefix holds `a`, or nil.
    @inline(__always)
    public func peer(for a: IPAddress) -> Int? {
        entries.withUnsafeBufferPointer { t -> Int? in
            if a.isV6 {
                for l in lengthsV6 {
                    let len = UInt64(l)
                    // Bits beyond the length cleared (smart shifts: a shift by 64 or more gives 0).
                    let hi = a.hi & ~(UInt64.max >> len)
                    let lo = len <= 64 ? 0 : a.lo & ~(UInt64.max >> (len - 64))
                    if let p = PeerTable.probe(t, mask, hi, lo, PeerTable.tag(true, Int(l))) { return p }
                }
            } else {
                for l in lengthsV4 {
                    let lo = a.lo & ~(UInt64(0xFFFF_FFFF) >> UInt64(l)) & 0xFFFF_FFFF
                    if let p = PeerTable.probe(t, mask, 0, lo, PeerTable.tag(false, Int(l))) { return p }
                }
            }
            return nil
        }
    }

    @inline(__always)
    static func probe(_ t: UnsafeBufferPointer<Entry>, _ mask: Int, _ hi: UInt64, _ lo: UInt64, _ tag: UInt32) -> Int? {
        var s = slot(hi, lo, tag) & mask
        while true {
            let e = t[s]
            if e.tag == 0 { return nil }
            if e.tag == tag && e.hi == hi && e.lo == lo { return Int(e.peer) }
            s = (s + 1) & mask
        }
    }
}
