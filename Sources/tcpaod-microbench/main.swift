// Micro-benchmark of the TCP-AO core: sign+insert and verify+strip of a 1448-byte segment with
// each algorithm, and the whole engine path, in ns per segment, with the heap allocations per
// segment counted exactly (CMallocCounter interposes malloc). Run: scripts/microbench
//
//   tcpaod-microbench [ITERATIONS]            the benchmark (IPv4), figures for the README
//   tcpaod-microbench --check-allocations [N] the zero-allocation test (scripts/test): every path
//       (sign+insert, verify+strip, engine egress, engine ingress), every algorithm, IPv4 and
//       IPv6, must make no heap allocation in N steady-state segments (default 5000); one line
//       per case; exit 1 naming each case that allocated. A control case that allocates on
//       purpose must be caught, or the check itself is broken (exit 2).
//       TCPAOD_MICROBENCH_INJECT_ALLOCATION="PATH ALGORITHM FAMILY" (e.g. "verify+strip
//       AES-128-CMAC-96 IPv6") adds one allocation per segment to that case, to show the check
//       fails when the measured path allocates.
//   tcpaod-microbench --connections [N]       only the whole-connection figures (N connections per
//       algorithm), e.g. to profile what a connection costs under perf
import CMallocCounter
import Foundation
import TCPAO
import TCPAOTestSupport

let arguments = Array(CommandLine.arguments.dropFirst())
let connectionsOnly = arguments.first == "--connections"
let checkAllocations = arguments.first == "--check-allocations"
let iterations = Int((checkAllocations || connectionsOnly ? arguments.dropFirst() : arguments[...]).first ?? "") ?? (checkAllocations ? 5000 : 200_000)
guard iterations > 0 else { print("usage: tcpaod-microbench [ITERATIONS] | --check-allocations [SEGMENTS] | --connections [CONNECTIONS]"); exit(2) }
let injectInto = ProcessInfo.processInfo.environment["TCPAOD_MICROBENCH_INJECT_ALLOCATION"] ?? ""

@inline(never) func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Where the deliberate allocations go (a global, so the optimizer can neither drop them nor put
/// them on the stack).
nonisolated(unsafe) var allocationSink: [UInt8] = []
@inline(never) func allocateOnPurpose(_ seed: UInt8) { allocationSink = [UInt8](repeating: seed, count: 64 + Int(seed & 7)) }

struct Row: Encodable {
    let name: String; let algorithm: String; let family: String
    let nsPerSegment: Double; let allocationsPerSegment: Double; let allocations: UInt
}
var rows: [Row] = []

/// Runs `body` for a warm-up, then `iterations` times with the heap allocations counted (and
/// timed). The warm-up takes the lazily made state (keyed MAC contexts, flow entries, caches)
/// out of the count: what is left is the steady state.
@MainActor func measure(_ name: String, _ alg: String, _ family: String, _ body: () -> Void) {
    let inject = !injectInto.isEmpty && injectInto == "\(name) \(alg) \(family)"
    for _ in 0..<max(iterations / 10, 100) { body() }
    let m0 = tcpaod_malloc_count()
    let t0 = now()
    if inject {
        for i in 0..<iterations { body(); allocateOnPurpose(UInt8(truncatingIfNeeded: i)) }
    } else {
        for _ in 0..<iterations { body() }
    }
    let t1 = now()
    let m1 = tcpaod_malloc_count()
    rows.append(Row(name: name, algorithm: alg, family: family, nsPerSegment: Double(t1 - t0) / Double(iterations),
                    allocationsPerSegment: Double(m1 - m0) / Double(iterations), allocations: m1 - m0))
}

// The counter must see allocations, or its zeros below would prove nothing. (The probe's
// allocation is kept by storing it in a global: a local array the optimizer could put on the
// stack, and a malloc/free pair it could delete.)
do {
    let before = tcpaod_malloc_count()
    allocateOnPurpose(UInt8.random(in: 0...255))
    guard tcpaod_malloc_count() >= before + 1, !allocationSink.isEmpty else {
        print("FAIL: the malloc counter is not interposed; allocation counts would be meaningless")
        exit(2)
    }
}

let payload = [UInt8](repeating: 0x5A, count: 1448)
let capacity = 2048
let buf = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
let tmpl = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)

@MainActor func load(_ bytes: [UInt8]) { bytes.withUnsafeBytes { tmpl.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) } }

struct Family { let name: String, client: String, server: String, clientPrefix: String, serverPrefix: String }
let ipv4 = Family(name: "IPv4", client: "192.0.2.10", server: "198.51.100.20", clientPrefix: "192.0.2.0/24", serverPrefix: "198.51.100.0/24")
let ipv6 = Family(name: "IPv6", client: "2001:db8:a::10", server: "2001:db8:b::20", clientPrefix: "2001:db8:a::/48", serverPrefix: "2001:db8:b::/48")
let algorithms: [AOAlgorithm] = [.hmacSHA1_96, .aes128CMAC_96, .hmacSHA256_96, .hmacSHA256_128]

/// Every measured path of one address family, each algorithm.
@MainActor func measureAll(_ f: Family) {
    let client = PacketBuilder(src: f.client, dst: f.server, srcPort: 50000, dstPort: 830)
    let unsigned = client.segment(seq: 0x1000_0001, ack: 0x2000_0001, flags: 0x18, options: PacketBuilder.tsOptions(), payload: payload)

    // Baseline: copying the packet into the buffer and parsing it, which every loop below also does.
    load(unsigned)
    measure("copy+parse (baseline)", "-", f.name) {
        buf.copyMemory(from: tmpl, byteCount: unsigned.count)
        _ = try? TCPSegment.parse(buf, count: unsigned.count)
    }

    for alg in algorithms {
        let key = MACKey(algorithm: alg, bytes: Array("traffic key material!!!!".utf8.prefix(alg.kind.outputLength)))
        load(unsigned)
        var signedLength = 0
        measure("sign+insert", alg.description, f.name) {
            buf.copyMemory(from: tmpl, byteCount: unsigned.count)
            guard let seg = try? TCPSegment.parse(buf, count: unsigned.count),
                  let s = try? AOOption.insert(buf, capacity: capacity, seg, macLength: alg.macLength, keyID: 1, rnextKeyID: 1) else { fatalError() }
            AOMAC.sign(buf, s, key: key, sne: 0, includeOptions: true)
            signedLength = s.length
        }
        let signed = Array(UnsafeRawBufferPointer(start: buf, count: signedLength))
        load(signed)
        measure("verify+strip", alg.description, f.name) {
            buf.copyMemory(from: tmpl, byteCount: signed.count)
            guard let seg = try? TCPSegment.parse(buf, count: signed.count),
                  AOMAC.verify(buf, seg, key: key, sne: 0, includeOptions: true) else { fatalError("verify failed") }
            _ = AOOption.strip(buf, seg)
        }

        // The whole engine: flow lookup, key selection, SNE, insert/sign and verify/strip.
        let chain = testChain(algorithm: alg)
        var a = AOEngine(config: testConfig(peer: f.serverPrefix, chain: chain))
        var b = AOEngine(config: testConfig(peer: f.clientPrefix, chain: chain))
        let clock = EngineClock(wall: 1_790_000_000, mono: 1)
        @MainActor func run(_ e: inout AOEngine, _ bytes: [UInt8], _ d: Direction) -> [UInt8] {
            bytes.withUnsafeBytes { buf.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            switch e.process(buf, length: bytes.count, capacity: capacity, hint: d, clock: clock) {
            case .acceptModified(let n): return Array(UnsafeRawBufferPointer(start: buf, count: n))
            case .accept: return bytes
            case .drop(let r): fatalError("dropped: \(r)")
            }
        }
        let server = client.reversed
        _ = run(&b, run(&a, client.segment(seq: 0x1000_0000, flags: 0x02, options: PacketBuilder.synOptions()), .egress), .ingress)
        _ = run(&a, run(&b, server.segment(seq: 0x2000_0000, ack: 0x1000_0001, flags: 0x12, options: PacketBuilder.synOptions()), .egress), .ingress)
        let onWire = run(&a, unsigned, .egress)
        load(unsigned)
        measure("engine egress (lookup+sign)", alg.description, f.name) {
            buf.copyMemory(from: tmpl, byteCount: unsigned.count)
            guard case .acceptModified = a.process(buf, length: unsigned.count, capacity: capacity, hint: .egress, clock: clock) else { fatalError() }
        }
        load(onWire)
        measure("engine ingress (lookup+verify)", alg.description, f.name) {
            buf.copyMemory(from: tmpl, byteCount: onWire.count)
            guard case .acceptModified = b.process(buf, length: onWire.count, capacity: capacity, hint: .ingress, clock: clock) else { fatalError() }
        }
    }
}

/// A whole connection through two engines, as connection churn makes them: SYN, SYN-ACK, ACK,
/// a request, a response, FIN, FIN-ACK, ACK, each signed by one engine and verified by the
/// other, a new client port per connection. Its traffic keys and MAC contexts (three per side,
/// RFC 5925 5.2) are made inside the loop, so this shows what a connection costs beyond its
/// segments. Per connection, not in the allocation check (a new flow allocates its keys).
@MainActor func measureConnections(_ f: Family, count: Int) -> [(String, Double, Double)] {
    var out: [(String, Double, Double)] = []
    for alg in [AOAlgorithm.hmacSHA1_96, .aes128CMAC_96] {
        // Every segment built beforehand, with whether the client sends it: the loop times the
        // engines only.
        var packets: [(bytes: [UInt8], fromClient: Bool)] = []
        packets.reserveCapacity(count * 8)
        let request = [UInt8](repeating: 0x41, count: 200), response = [UInt8](repeating: 0x42, count: 300)
        for c in 0..<count {
            let cl = PacketBuilder(src: f.client, dst: f.server, srcPort: UInt16(10_000 + c), dstPort: 830), sv = cl.reversed
            let ci = UInt32(truncatingIfNeeded: 0x1000_0000 &+ c &* 7919), si = UInt32(truncatingIfNeeded: 0x7000_0000 &+ c &* 104_729)
            packets.append((cl.segment(seq: ci, flags: 0x02, options: PacketBuilder.synOptions()), true))
            packets.append((sv.segment(seq: si, ack: ci &+ 1, flags: 0x12, options: PacketBuilder.synOptions()), false))
            packets.append((cl.segment(seq: ci &+ 1, ack: si &+ 1, flags: 0x10, options: PacketBuilder.tsOptions()), true))
            packets.append((cl.segment(seq: ci &+ 1, ack: si &+ 1, flags: 0x18, options: PacketBuilder.tsOptions(), payload: request), true))
            packets.append((sv.segment(seq: si &+ 1, ack: ci &+ 201, flags: 0x18, options: PacketBuilder.tsOptions(), payload: response), false))
            packets.append((cl.segment(seq: ci &+ 201, ack: si &+ 301, flags: 0x11, options: PacketBuilder.tsOptions()), true))
            packets.append((sv.segment(seq: si &+ 301, ack: ci &+ 202, flags: 0x11, options: PacketBuilder.tsOptions()), false))
            packets.append((cl.segment(seq: ci &+ 202, ack: si &+ 302, flags: 0x10, options: PacketBuilder.tsOptions()), true))
        }
        let chain = testChain(algorithm: alg)
        let limits = FlowLimits(maxFlows: 2 * count + 1024)
        let clock = EngineClock(wall: 1_790_000_000, mono: 1)
        // The fastest of five rounds, each with new engines: this machine's timing is noisy.
        var best = UInt64.max, allocations = UInt(0)
        for _ in 0..<5 {
            var client = AOEngine(config: testConfig(peer: f.serverPrefix, chain: chain, limits: limits))
            var server = AOEngine(config: testConfig(peer: f.clientPrefix, chain: chain, limits: limits))
            let m0 = tcpaod_malloc_count()
            let t0 = now()
            for (n, (bytes, fromClient)) in packets.enumerated() {
                let length = bytes.withUnsafeBytes { b in buf.copyMemory(from: b.baseAddress!, byteCount: b.count); return b.count }
                guard case .acceptModified(let signed) = fromClient
                        ? client.process(buf, length: length, capacity: capacity, hint: .egress, clock: clock)
                        : server.process(buf, length: length, capacity: capacity, hint: .egress, clock: clock),
                      case .acceptModified = fromClient
                        ? server.process(buf, length: signed, capacity: capacity, hint: .ingress, clock: clock)
                        : client.process(buf, length: signed, capacity: capacity, hint: .ingress, clock: clock)
                else { fatalError("connection \(n / 8) segment \(n & 7) with \(alg) was not signed and verified") }
            }
            let t1 = now()
            best = min(best, t1 - t0)
            allocations = tcpaod_malloc_count() - m0
        }
        out.append((alg.description, Double(best) / Double(count), Double(allocations) / Double(count)))
        // The part of it that is key making: three traffic keys and MAC contexts per side.
        let master = chain.keys[0].master
        let ctx = KDFContext(src: IPAddress(f.client)!, dst: IPAddress(f.server)!, srcPort: 10_000, dstPort: 830, srcISN: 1, dstISN: 2)
        var bestKeys = UInt64.max
        for _ in 0..<5 {
            let k0 = now()
            for _ in 0..<(count * 6) {
                let k = MACKey(algorithm: alg, key: master.deriveTrafficKey(ctx))
                withUnsafeTemporaryAllocation(byteCount: 32, alignment: 16) { o in k.compute(UnsafeRawBufferPointer(start: buf, count: 64), UnsafeRawBufferPointer(start: nil, count: 0), into: o.baseAddress!) }
            }
            bestKeys = min(bestKeys, now() - k0)
        }
        out.append(("  of which 6 x (traffic key + MAC context)", Double(bestKeys) / Double(count), 0))
    }
    return out
}

func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: max(n, s.count), withPad: " ", startingAt: 0) }

/// The per-segment peer lookup (`EngineConfig.peerIndex`, a longest-prefix match) with a few
/// peers and with a fleet: one key chain per peer, IPv6 /128s in 2001:db8:ffff::/48 plus an IPv4
/// /24 and an IPv6 /48; the addresses looked up hit the last peer, a /24, and miss. Its cost
/// must not depend on the number of peers.
@MainActor func peerConfig(_ n: Int) -> EngineConfig {
    let chain = testChain(algorithm: .hmacSHA1_96)
    var peers = [PeerPolicy(name: "v4", prefix: IPPrefix("198.51.100.0/24")!, ports: [830], keyChain: chain),
                 PeerPolicy(name: "v6", prefix: IPPrefix("2001:db8:a::/48")!, keyChain: chain)]
    for i in 0..<(n - 2) {
        peers.append(PeerPolicy(name: "dev\(i)", prefix: IPPrefix(address: IPAddress(v6hi: 0x2001_0db8_ffff_0000, lo: UInt64(i + 1)), length: 128),
                                keyChain: KeyChain(name: "k\(i)", keys: chain.keys)))
    }
    return EngineConfig(peers: peers)
}

nonisolated(unsafe) var lookupSink = 0
@MainActor func measurePeerLookups() -> [(Int, [String: Double])] {
    var out: [(Int, [String: Double])] = []
    for n in [10, 50_000] {
        let c = peerConfig(n)
        let last = IPAddress(v6hi: 0x2001_0db8_ffff_0000, lo: UInt64(n - 2))
        let v4 = IPAddress("198.51.100.7")!, miss = IPAddress("2001:db8:eeee::1")!
        var row: [String: Double] = [:]
        for (what, a) in [("hit /128", last), ("hit IPv4 /24", v4), ("miss", miss)] {
            measure("lookup \(n) peers \(what)", "-", a.isV6 ? "IPv6" : "IPv4") {
                if let i = c.peerIndex(remote: a, ports: 50000, 830) { lookupSink &+= i }
            }
            row[what] = rows.last!.nsPerSegment
        }
        if !checkAllocations {
            // The scan of the peers it replaced, for comparison (not in the allocation check).
            measure("scan \(n) peers (before)", "-", "IPv6") {
                if let i = c.peerIndexByScan(remote: last, ports: 50000, 830) { lookupSink &+= i }
            }
            row["scan (before), hit /128"] = rows.removeLast().nsPerSegment
        }
        out.append((n, row))
    }
    return out
}

if checkAllocations {
    // The control: the same measuring loop around a body that allocates once per segment must
    // count at least one allocation per segment, or zeros below would prove nothing.
    measure("control (allocates on purpose)", "-", "-") { allocateOnPurpose(buf.load(as: UInt8.self)) }
    let control = rows.removeLast()
    guard control.allocations >= UInt(iterations) else {
        print("FAIL: the control case allocated \(control.allocations) times in \(iterations) segments; the allocation check cannot see allocations")
        exit(2)
    }
    measureAll(ipv4)
    measureAll(ipv6)
    _ = measurePeerLookups()
    print("heap allocations in \(iterations) steady-state segments (1448-byte payload), \(rows.count) cases; control case: \(control.allocations)")
    for r in rows {
        print((r.allocations == 0 ? "ok    " : "FAIL  ") + pad(r.name, 32) + pad(r.algorithm, 18) + pad(r.family, 6)
              + "  \(r.allocations) allocations")
    }
    let allocating = rows.filter { $0.allocations > 0 }
    if !allocating.isEmpty {
        print("")
        for r in allocating {
            print("FAIL: \(r.name) with \(r.algorithm) over \(r.family) made \(r.allocations) heap allocations in \(iterations) steady-state segments "
                  + String(format: "(%.3f per segment); the packet path must not allocate", r.allocationsPerSegment))
        }
        exit(1)
    }
    print("no heap allocation per segment in steady state: every path, every algorithm, IPv4 and IPv6")
    exit(0)
}

func printConnections(_ rows: [(String, Double, Double)]) {
    for (what, ns, allocs) in rows {
        print(pad(what, 44) + String(format: "%10.0f ns", ns) + (allocs > 0 ? String(format: "   %.1f allocations", allocs) : ""))
    }
}

if connectionsOnly {
    printConnections(measureConnections(ipv4, count: min(iterations, 30_000)))
    exit(0)
}
measureAll(ipv4)
let lookups = measurePeerLookups()
let connections = measureConnections(ipv4, count: max(2_000, min(iterations / 10, 30_000)))
print("tcpaod micro-benchmark: 1448-byte payload (1500-byte IPv4 packet with timestamps), \(iterations) iterations each")
print("CPU: \((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n").first { $0.hasPrefix("model name") }?.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "?")")
print("")
print(pad("operation", 32) + pad("algorithm", 18) + "ns/segment   allocations/segment")
for r in rows {
    print(pad(r.name, 32) + pad(r.algorithm, 18) + String(format: "%10.0f   %.4f", r.nsPerSegment, r.allocationsPerSegment))
}
print("")
print("peer lookup (EngineConfig.peerIndex, longest-prefix match), ns per lookup:")
print(pad("", 24) + lookups.map { pad("\($0.0) peers", 16) }.joined())
for what in ["hit /128", "hit IPv4 /24", "miss", "scan (before), hit /128"] {
    print(pad(what, 24) + lookups.map { pad(String(format: "%.1f", $0.1[what] ?? 0), 16) }.joined())
}
print("")
print("a whole connection through two engines (8 segments, each signed and verified), per connection, fastest of 5 rounds:")
printConnections(connections)
if let path = ProcessInfo.processInfo.environment["MICROBENCH_JSON"] {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try enc.encode(rows).write(to: URL(fileURLWithPath: path))
}
let allocating = rows.filter { $0.allocations > 0 }
if !allocating.isEmpty {
    print("\nFAIL: heap allocations in steady state: \(allocating.map { "\($0.name) \($0.algorithm)" })")
    exit(1)
}
print("\nno heap allocation per segment in steady state")
