/// Events counted by an engine, besides the drops (one counter per `DropReason`).
public enum Counter: Int, CaseIterable, Sendable {
    case packets
    case signed
    case verified
    case passedUnmatched
    case passedUnsigned
    case passedICMP
    case mssClamped
    case optionsTrimmed
    case flowsCreated
    case flowsExpired
    case flowsEvicted
    /// Connections taken over from their stored label (after a restart or a failover) once a
    /// segment verified with it, or we signed one with it.
    case flowsRestored
    /// A stored label whose state did not verify the segment (forged, stale): dropped.
    case restoreFailed
    /// Labels written (state changes only) and writes that failed.
    case statesSaved
    case stateSaveFailed

    public var label: String {
        switch self {
        case .packets: "packets"
        case .signed: "signed"
        case .verified: "verified"
        case .passedUnmatched: "passed-unmatched"
        case .passedUnsigned: "passed-unsigned"
        case .passedICMP: "passed-icmp"
        case .mssClamped: "mss-clamped"
        case .optionsTrimmed: "options-trimmed"
        case .flowsCreated: "flows-created"
        case .flowsExpired: "flows-expired"
        case .flowsEvicted: "flows-evicted"
        case .flowsRestored: "flows-restored"
        case .restoreFailed: "restore-failed"
        case .statesSaved: "states-saved"
        case .stateSaveFailed: "state-save-failed"
        }
    }
}

/// Per-key counters.
public enum KeyCounter: Int, CaseIterable, Sendable {
    case signed, verified, badMAC

    public var label: String {
        switch self {
        case .signed: "signed"
        case .verified: "verified"
        case .badMAC: "bad-mac"
        }
    }
}

/// One engine's counters in a flat, preallocated buffer: a block for all traffic, a block per
/// peer, and a block per (peer, key). Only the engine's own worker writes them; others read
/// snapshots taken on that worker.
public struct CounterBlock: ~Copyable {
    public static let perBlock = Counter.allCases.count + DropReason.allCases.count
    let buffer: UnsafeMutablePointer<UInt64>
    let peerCount: Int
    /// Offset of each peer's per-key block.
    let keyBase: [Int]
    let total: Int

    public init(config: EngineConfig) {
        peerCount = config.peers.count
        var bases: [Int] = []
        var off = CounterBlock.perBlock * (1 + peerCount)
        for p in config.peers {
            bases.append(off)
            off += p.keyChain.keys.count * KeyCounter.allCases.count
        }
        keyBase = bases
        total = off
        buffer = .allocate(capacity: max(total, 1))
        buffer.initialize(repeating: 0, count: max(total, 1))
    }

    deinit { buffer.deallocate() }

    @inline(__always)
    func bump(_ c: Counter, peer: Int) {
        buffer[c.rawValue] &+= 1
        if peer >= 0 { buffer[CounterBlock.perBlock * (1 + peer) + c.rawValue] &+= 1 }
    }

    @inline(__always)
    func bump(_ r: DropReason, peer: Int) {
        let i = Counter.allCases.count + r.rawValue
        buffer[i] &+= 1
        if peer >= 0 { buffer[CounterBlock.perBlock * (1 + peer) + i] &+= 1 }
    }

    @inline(__always)
    func bump(_ c: KeyCounter, peer: Int, key: Int) {
        buffer[keyBase[peer] + key * KeyCounter.allCases.count + c.rawValue] &+= 1
    }

    /// Above this many peers a snapshot leaves out the peers, and the keys, whose counters are
    /// all zero: the daemon reports every second (stats file, events, metrics), and a fleet of
    /// 50,000 mostly idle peers made that 55 MB of JSON and a busy core. Readers take a missing
    /// peer or key as zeros. Up to this many, every peer and key is listed, as before.
    public static let sparseAbove = 1000

    /// A copy, labelled with the configuration's peer names and key ids.
    public func snapshot(config: EngineConfig) -> CounterSnapshot {
        let sparse = peerCount > CounterBlock.sparseAbove
        func zero(_ from: Int, _ count: Int) -> Bool {
            for i in from..<(from + count) where buffer[i] != 0 { return false }
            return true
        }
        func block(_ b: Int) -> [String: UInt64] {
            var d: [String: UInt64] = [:]
            for c in Counter.allCases { d[c.label] = buffer[b * CounterBlock.perBlock + c.rawValue] }
            for r in DropReason.allCases { d["dropped-" + r.label] = buffer[b * CounterBlock.perBlock + Counter.allCases.count + r.rawValue] }
            return d
        }
        var peers: [String: [String: UInt64]] = [:]
        var keys: [String: [String: [String: UInt64]]] = [:]
        for (i, p) in config.peers.enumerated() where i < peerCount {
            let keyCount = p.keyChain.keys.count * KeyCounter.allCases.count
            if sparse && zero(CounterBlock.perBlock * (1 + i), CounterBlock.perBlock) && zero(keyBase[i], keyCount) { continue }
            peers[p.name] = block(1 + i)
            var kd: [String: [String: UInt64]] = [:]
            for (j, k) in p.keyChain.keys.enumerated() {
                if sparse && zero(keyBase[i] + j * KeyCounter.allCases.count, KeyCounter.allCases.count) { continue }
                var d: [String: UInt64] = [:]
                for c in KeyCounter.allCases { d[c.label] = buffer[keyBase[i] + j * KeyCounter.allCases.count + c.rawValue] }
                kd["\(k.chainKeyID)"] = d
            }
            keys[p.name] = kd
        }
        return CounterSnapshot(total: block(0), peers: peers, keys: keys)
    }
}

/// Counters as plain dictionaries, for reports and for summing across workers and reloads.
public struct CounterSnapshot: Sendable, Equatable, Codable {
    public var total: [String: UInt64]
    public var peers: [String: [String: UInt64]]
    /// peer name -> key id -> counter.
    public var keys: [String: [String: [String: UInt64]]]

    public init(total: [String: UInt64] = [:], peers: [String: [String: UInt64]] = [:], keys: [String: [String: [String: UInt64]]] = [:]) {
        self.total = total
        self.peers = peers
        self.keys = keys
    }

    public mutating func add(_ o: CounterSnapshot) {
        total.merge(o.total, uniquingKeysWith: +)
        for (p, d) in o.peers { peers[p, default: [:]].merge(d, uniquingKeysWith: +) }
        for (p, kd) in o.keys {
            for (k, d) in kd { keys[p, default: [:]][k, default: [:]].merge(d, uniquingKeysWith: +) }
        }
    }

    public subscript(_ label: String) -> UInt64 { total[label] ?? 0 }
}
