/// One connection's entry: its key, its peer, its TCP-AO state, and the keyed MAC contexts of
/// its two directions (RFC 5925 5.3: traffic keys "can be cached after computation").
struct FlowEntry: ~Copyable {
    var key: FlowKey
    var hash: UInt32
    var peer: Int32
    var state: FlowState
    /// Send_other_traffic_key context, and the serial of the MKT it was derived from.
    var send: MACKey? = nil
    var sendSerial: UInt32 = 0
    /// Receive_other_traffic_key context, its MKT's serial.
    var recv: MACKey? = nil
    var recvSerial: UInt32 = 0

    init(key: FlowKey, hash: UInt32, peer: Int, state: FlowState) {
        self.key = key
        self.hash = hash
        self.peer = Int32(peer)
        self.state = state
    }

    mutating func dropKeys() {
        send = nil
        recv = nil
    }
}

/// An open-addressing hash table (linear probing, backward-shift deletion) over one
/// preallocated array of entries. Bounded: `insert` fails when `limit` entries are live.
/// Hashing uses the standard library's per-process random seed (SipHash), so crafted 4-tuples
/// cannot force long probe chains.
struct FlowTable: ~Copyable {
    let capacity: Int
    let mask: Int
    let limit: Int
    let slots: UnsafeMutablePointer<FlowEntry>
    let used: UnsafeMutablePointer<Bool>
    private(set) var count = 0

    init(limit: Int) {
        self.limit = max(limit, 1)
        var cap = 16
        while cap < self.limit + self.limit / 3 + 1 { cap <<= 1 } // load factor <= 0.75
        capacity = cap
        mask = cap - 1
        slots = .allocate(capacity: cap) // untouched pages stay out of the resident set
        used = .allocate(capacity: cap)
        used.initialize(repeating: false, count: cap)
    }

    deinit {
        for i in 0..<capacity where used[i] { (slots + i).deinitialize(count: 1) }
        slots.deallocate()
        used.deallocate()
    }

    @inline(__always)
    static func hash(_ k: FlowKey) -> UInt32 {
        var h = Hasher()
        h.combine(k)
        return UInt32(truncatingIfNeeded: h.finalize())
    }

    @inline(__always)
    func find(_ k: FlowKey, hash: UInt32) -> Int? {
        var i = Int(hash) & mask
        while used[i] {
            if slots[i].hash == hash && slots[i].key == k { return i }
            i = (i + 1) & mask
        }
        return nil
    }

    mutating func insert(_ e: consuming FlowEntry) -> Int? {
        guard count < limit else { return nil }
        var i = Int(e.hash) & mask
        while used[i] { i = (i + 1) & mask }
        (slots + i).initialize(to: e)
        used[i] = true
        count += 1
        return i
    }

    /// Removes the entry at `i` (its keys are wiped by MACKey's deinit) and shifts later
    /// entries of the probe run back, so lookups never cross a hole.
    mutating func remove(at i: Int) {
        (slots + i).deinitialize(count: 1)
        used[i] = false
        count -= 1
        var hole = i
        var j = (i + 1) & mask
        while used[j] {
            let home = Int(slots[j].hash) & mask
            if (j - home) & mask >= (j - hole) & mask {
                (slots + hole).moveInitialize(from: slots + j, count: 1)
                used[hole] = true
                used[j] = false
                hole = j
            }
            j = (j + 1) & mask
        }
    }
}
