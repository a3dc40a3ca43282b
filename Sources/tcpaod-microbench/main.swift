// Micro-benchmark of the TCP-AO core: sign+insert and verify+strip of a 1448-byte segment with
// each algorithm, and the whole engine path, in ns per segment, with the heap allocations per
// segment counted exactly (CMallocCounter interposes malloc). Run: scripts/microbench
import CMallocCounter
import Foundation
import TCPAO
import TCPAOTestSupport

let iterations = Int(CommandLine.arguments.dropFirst().first ?? "") ?? 200_000

@inline(never) func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

struct Row: Encodable { let name: String; let algorithm: String; let nsPerSegment: Double; let allocationsPerSegment: Double }
var rows: [Row] = []

/// Times `body` over `iterations` runs after a warm-up; counts allocations in the timed part.
@MainActor func measure(_ name: String, _ alg: String, _ body: () -> Void) {
    for _ in 0..<(iterations / 10) { body() } // warm-up: caches, lazily keyed contexts
    let m0 = tcpaod_malloc_count()
    let t0 = now()
    for _ in 0..<iterations { body() }
    let t1 = now()
    let m1 = tcpaod_malloc_count()
    rows.append(Row(name: name, algorithm: alg, nsPerSegment: Double(t1 - t0) / Double(iterations),
                    allocationsPerSegment: Double(m1 - m0) / Double(iterations)))
}

// The counter must see allocations, or its zeros below would prove nothing.
do {
    let before = tcpaod_malloc_count()
    let probe = [UInt8](repeating: 1, count: Int.random(in: 1000...2000))
    let o = OpaquePointer(malloc(64)); free(UnsafeMutableRawPointer(o))
    guard tcpaod_malloc_count() >= before + 2, probe.count > 0 else {
        print("FAIL: the malloc counter is not interposed; allocation counts would be meaningless")
        exit(2)
    }
}

let payload = [UInt8](repeating: 0x5A, count: 1448)
let client = PacketBuilder(src: "192.0.2.10", dst: "198.51.100.20", srcPort: 50000, dstPort: 830)
let unsigned = client.segment(seq: 0x1000_0001, ack: 0x2000_0001, flags: 0x18, options: PacketBuilder.tsOptions(), payload: payload)
let capacity = 2048
let buf = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
let tmpl = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)

@MainActor func load(_ bytes: [UInt8]) { bytes.withUnsafeBytes { tmpl.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) } }

// Baseline: copying the packet into the buffer and parsing it, which every loop below also does.
load(unsigned)
measure("copy+parse (baseline)", "-") {
    buf.copyMemory(from: tmpl, byteCount: unsigned.count)
    _ = try? TCPSegment.parse(buf, count: unsigned.count)
}

for alg in [AOAlgorithm.hmacSHA1_96, .aes128CMAC_96, .hmacSHA256_96, .hmacSHA256_128] {
    let key = MACKey(algorithm: alg, bytes: Array("traffic key material!!!!".utf8.prefix(alg.kind.outputLength)))
    load(unsigned)
    var signedLength = 0
    measure("sign+insert", alg.description) {
        buf.copyMemory(from: tmpl, byteCount: unsigned.count)
        guard let seg = try? TCPSegment.parse(buf, count: unsigned.count),
              let s = try? AOOption.insert(buf, capacity: capacity, seg, macLength: alg.macLength, keyID: 1, rnextKeyID: 1) else { fatalError() }
        AOMAC.sign(buf, s, key: key, sne: 0, includeOptions: true)
        signedLength = s.length
    }
    let signed = Array(UnsafeRawBufferPointer(start: buf, count: signedLength))
    load(signed)
    measure("verify+strip", alg.description) {
        buf.copyMemory(from: tmpl, byteCount: signed.count)
        guard let seg = try? TCPSegment.parse(buf, count: signed.count),
              AOMAC.verify(buf, seg, key: key, sne: 0, includeOptions: true) else { fatalError("verify failed") }
        _ = AOOption.strip(buf, seg)
    }

    // The whole engine: flow lookup, key selection, SNE, insert/sign and verify/strip.
    let chain = testChain(algorithm: alg)
    var a = AOEngine(config: testConfig(peer: "198.51.100.0/24", chain: chain))
    var b = AOEngine(config: testConfig(peer: "192.0.2.0/24", chain: chain))
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
    measure("engine egress (lookup+sign)", alg.description) {
        buf.copyMemory(from: tmpl, byteCount: unsigned.count)
        guard case .acceptModified = a.process(buf, length: unsigned.count, capacity: capacity, hint: .egress, clock: clock) else { fatalError() }
    }
    load(onWire)
    measure("engine ingress (lookup+verify)", alg.description) {
        buf.copyMemory(from: tmpl, byteCount: onWire.count)
        guard case .acceptModified = b.process(buf, length: onWire.count, capacity: capacity, hint: .ingress, clock: clock) else { fatalError() }
    }
}

print("tcpaod micro-benchmark: 1448-byte payload (1500-byte IPv4 packet with timestamps), \(iterations) iterations each")
print("CPU: \((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?.split(separator: "\n").first { $0.hasPrefix("model name") }?.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "?")")
print("")
print("operation".padding(toLength: 32, withPad: " ", startingAt: 0) + "algorithm".padding(toLength: 18, withPad: " ", startingAt: 0) + "ns/segment   allocations/segment")
for r in rows {
    print(r.name.padding(toLength: 32, withPad: " ", startingAt: 0) + r.algorithm.padding(toLength: 18, withPad: " ", startingAt: 0)
          + String(format: "%10.0f   %.4f", r.nsPerSegment, r.allocationsPerSegment))
}
if let path = ProcessInfo.processInfo.environment["MICROBENCH_JSON"] {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try enc.encode(rows).write(to: URL(fileURLWithPath: path))
}
let allocating = rows.filter { $0.allocationsPerSegment > 0 }
if !allocating.isEmpty {
    print("\nFAIL: heap allocations in steady state: \(allocating.map { "\($0.name) \($0.algorithm)" })")
    exit(1)
}
print("\nno heap allocation per segment in steady state")
