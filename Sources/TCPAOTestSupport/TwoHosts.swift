import TCPAO

/// Two protected hosts, each behind its own engine, joined by a "wire" the test can tamper with.
/// Host A is the client side (`a` builder), host B the server.
public struct TwoHosts: ~Copyable {
    public var engineA: AOEngine
    public var engineB: AOEngine
    public var clock: EngineClock

    public init(configA: EngineConfig, configB: EngineConfig, wall: Int64 = 1_790_000_000) {
        engineA = AOEngine(config: configA)
        engineB = AOEngine(config: configB)
        clock = EngineClock(wall: wall, mono: 100)
    }

    public enum Side { case a, b }

    /// A host of `from` sends `packet`: its engine signs it (egress); if that succeeds, the
    /// `wire` closure may alter it; then the other engine verifies and strips it (ingress).
    /// Returns both verdicts, the bytes on the wire and what the receiving host gets (nil if dropped).
    public mutating func send(_ packet: [UInt8], from: Side, wire: ((inout [UInt8]) -> Void)? = nil)
        -> (egress: Verdict, ingress: Verdict?, onWire: [UInt8]?, delivered: [UInt8]?) {
        let b = PacketBuffer(packet)
        let ev: Verdict = from == .a
            ? engineA.process(b.pointer, length: b.length, capacity: b.capacity, hint: .egress, clock: clock)
            : engineB.process(b.pointer, length: b.length, capacity: b.capacity, hint: .egress, clock: clock)
        switch ev {
        case .drop: return (ev, nil, nil, nil)
        case .acceptModified(let n): b.setLength(n)
        case .accept: break
        }
        var onWire = b.bytes
        wire?(&onWire)
        let r = PacketBuffer(onWire)
        let iv: Verdict = from == .a
            ? engineB.process(r.pointer, length: r.length, capacity: r.capacity, hint: .ingress, clock: clock)
            : engineA.process(r.pointer, length: r.length, capacity: r.capacity, hint: .ingress, clock: clock)
        switch iv {
        case .drop: return (ev, iv, onWire, nil)
        case .acceptModified(let n): r.setLength(n)
        case .accept: break
        }
        return (ev, iv, onWire, r.bytes)
    }

    /// Injects a packet straight into a host's ingress (an attacker on the wire).
    public mutating func inject(_ packet: [UInt8], to: Side) -> (Verdict, [UInt8]?) {
        let r = PacketBuffer(packet)
        let v: Verdict = to == .a
            ? engineA.process(r.pointer, length: r.length, capacity: r.capacity, hint: .ingress, clock: clock)
            : engineB.process(r.pointer, length: r.length, capacity: r.capacity, hint: .ingress, clock: clock)
        switch v {
        case .drop: return (v, nil)
        case .acceptModified(let n): r.setLength(n); return (v, r.bytes)
        case .accept: return (v, r.bytes)
        }
    }
}

/// A one-key chain for tests.
public func testChain(_ name: String = "test", sendID: UInt8 = 1, recvID: UInt8 = 1, algorithm: AOAlgorithm = .hmacSHA1_96,
                      secret: String = "correct horse battery", includeOptions: Bool = true) -> KeyChain {
    KeyChain(name: name, keys: [MKT(chainKeyID: 1, sendID: sendID, recvID: recvID, algorithm: algorithm, includeOptions: includeOptions,
                                    secret: Secret(Array(secret.utf8)))])
}

public func testConfig(peer prefix: String, chain: KeyChain, ports: [UInt16] = [], acceptKeyMismatch: Bool = false,
                       limits: FlowLimits = FlowLimits()) -> EngineConfig {
    EngineConfig(peers: [PeerPolicy(name: "peer", prefix: IPPrefix(prefix)!, ports: ports, keyChain: chain,
                                    acceptKeyMismatch: acceptKeyMismatch)], limits: limits)
}
