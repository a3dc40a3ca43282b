#if canImport(Glibc)
import Glibc
#endif

/// One connection's entry: its key, its peer, its TCP-AO state, and the keyed MAC contexts of
/// its two directions (RFC 5925 5.3: traffic keys "can be cached after computation").
struct FlowEntry: ~Copyable {
    var key: FlowKey
    var hash: UInt32
    var peer: Int32
    var state: FlowState
    /// Send_other_traffic_key context, and the serial and algorithm of the MKT it was derived
    /// from: reused only for that MKT (serials are never reused, `MKT.serial`) and algorithm.
    var send: MACKey? = nil
    var sendSerial: UInt64 = 0
    var sendAlgorithm = AOAlgorithm.hmacSHA1_96
    /// Receive_other_traffic_key context, its MKT's serial and algorithm.
    var recv: MACKey? = nil
    var recvSerial: UInt64 = 0
    var recvAlgorithm = AOAlgorithm.hmacSHA1_96
    /// The label last handed to the state store (written again only when it changes).
    var savedLabel: FlowLabel? = nil
    /// Monotonic second from which a label that failed to be written is tried again (0: none).
    var saveRetryAt: UInt32 = 0
    /// Monotonic second the engine started tracking the connection (created or restored).
    var createdAt: UInt32
    /// This connection's segments signed, verified, and dropped (those dropped once the flow
    /// existed): `tcpaod flows`. Incremented beside the engine's counters, nothing else.
    var signed: UInt64 = 0
    var verified: UInt64 = 0
    var dropped: UInt64 = 0
    /// The connection's own MKT, when an agent installed one (`installConnectionKey`); one
    /// reference, so flows without one pay 8 bytes.
    var connectionKey: ConnectionKey? = nil

    init(key: FlowKey, hash: UInt32, peer: Int, state: FlowState) {
        self.key = key
        self.hash = hash
        self.peer = Int32(peer)
        self.state = state
        createdAt = state.lastSeen
    }

    mutating func dropKeys() {
        send = nil
        recv = nil
    }
}

/// The flows of one worker: entries in a dense slab (allocated in order, freed slots reused
/// first, so resident memory follows the number of live flows), found through an
/// open-addressing index of 8-byte slots (hash and entry number; linear probing,
/// backward-shift deletion, so no tombstones). Both arrays are reserved once, zero pages from
/// calloc: nothing is allocated on the packet path and untouched memory is not resident.
/// The 4-tuple hash is keyed with a per-process random seed. Bounded: `insert` fails at `limit` live entries.
struct FlowTable: ~Copyable {
    let limit: Int
    let indexMask: Int
    /// 0 = empty, else hash << 32 | (entry number + 1).
    let index: UnsafeMutablePointer<UInt64>
    let entries: UnsafeMutablePointer<FlowEntry>
    let live: UnsafeMutablePointer<Bool>
    /// Entry numbers freed by `remove`, reused last-in first-out.
    let free: UnsafeMutablePointer<Int32>
    var freeCount = 0
    /// Entries below this number have been used at least once.
    private(set) var highWater = 0
    private(set) var count = 0
    /// The hash key, copied from the process-wide seed so lookups need no lazy global.
    let seed0: UInt64
    let seed1: UInt64

    init(limit: Int) {
        self.limit = max(limit, 1)
        var cap = 16
        while cap < self.limit + self.limit / 3 + 1 { cap <<= 1 } // index load factor <= 0.75
        indexMask = cap - 1
        index = calloc(cap, 8)!.bindMemory(to: UInt64.self, capacity: cap)
        entries = .allocate(capacity: self.limit)
        live = calloc(self.limit, 1)!.bindMemory(to: Bool.self, capacity: self.limit)
        free = .allocate(capacity: self.limit)
        (seed0, seed1) = FlowTable.seed
    }

    deinit {
        for i in 0..<highWater where live[i] { (entries + i).deinitialize(count: 1) } // wipes keys
        Glibc.free(index)
        entries.deallocate()
        Glibc.free(live)
        free.deallocate()
    }

    /// Per-process random seed of the flow hash.
    static let seed: (UInt64, UInt64) = {
        var g = SystemRandomNumberGenerator()
        return (g.next() | 1, g.next())
    }()

    /// A keyed multiply-mix hash of the 4-tuple (the wyhash "mum" step), several times cheaper
    /// than SipHash. Crafting collisions would need the random seed, and flows are only created
    /// by the protected side's own SYNs or by SYNs with a valid MAC.
    @inline(__always)
    func hash(_ k: FlowKey) -> UInt32 { FlowTable.hash(k, seed0, seed1) }

    @inline(__always)
    static func hash(_ k: FlowKey) -> UInt32 { hash(k, seed.0, seed.1) }

    @inline(__always)
    static func hash(_ k: FlowKey, _ s0: UInt64, _ s1: UInt64) -> UInt32 {
        @inline(__always) func mum(_ a: UInt64, _ b: UInt64) -> UInt64 {
            let r = a.multipliedFullWidth(by: b)
            return r.high ^ r.low
        }
        let ports = UInt64(k.localPort) << 16 | UInt64(k.remotePort) | (k.local.isV6 ? 1 << 40 : 0)
        var h = mum(k.local.hi ^ s0, k.local.lo ^ s1)
        h = mum(h ^ k.remote.hi ^ 0x9E37_79B9_7F4A_7C15, k.remote.lo ^ s0)
        h = mum(h ^ ports, s1 ^ 0xA076_1D64_78BD_642F)
        return UInt32(truncatingIfNeeded: h ^ (h >> 32))
    }

    /// The entry number of `k`, if present.
    @inline(__always)
    func find(_ k: FlowKey, hash: UInt32) -> Int? {
        var s = Int(hash) & indexMask
        while true {
            let v = index[s]
            if v == 0 { return nil }
            if UInt32(truncatingIfNeeded: v >> 32) == hash {
                let e = Int(UInt32(truncatingIfNeeded: v)) - 1
                if entries[e].key == k { return e }
            }
            s = (s + 1) & indexMask
        }
    }

    /// Adds an entry; nil when `limit` entries are live.
    mutating func insert(_ e: consuming FlowEntry) -> Int? {
        guard count < limit else { return nil }
        let n: Int
        if freeCount > 0 {
            freeCount -= 1
            n = Int(free[freeCount])
        } else {
            n = highWater
            highWater += 1
        }
        var s = Int(e.hash) & indexMask
        while index[s] != 0 { s = (s + 1) & indexMask }
        index[s] = UInt64(e.hash) << 32 | UInt64(n + 1)
        (entries + n).initialize(to: e)
        live[n] = true
        count += 1
        return n
    }

    /// Removes entry `n` (its keys are wiped by MACKey's deinit) and closes the gap in the
    /// index by shifting later slots of the probe run back.
    mutating func remove(at n: Int) {
        let want = UInt64(n + 1)
        var hole = Int(entries[n].hash) & indexMask
        while index[hole] & 0xFFFF_FFFF != want { hole = (hole + 1) & indexMask }
        index[hole] = 0
        var j = (hole + 1) & indexMask
        while index[j] != 0 {
            let home = Int(UInt32(truncatingIfNeeded: index[j] >> 32)) & indexMask
            if (j - home) & indexMask >= (j - hole) & indexMask {
                index[hole] = index[j]
                index[j] = 0
                hole = j
            }
            j = (j + 1) & indexMask
        }
        (entries + n).deinitialize(count: 1)
        live[n] = false
        free[freeCount] = Int32(n)
        freeCount += 1
        count -= 1
    }
}
