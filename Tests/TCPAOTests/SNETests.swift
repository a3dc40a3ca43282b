import Testing
@testable import TCPAO

/// RFC 5925 6.2 / RFC 9187: SNE inference across the 2^32 wrap.
@Suite struct SNETests {
    struct Row: Sendable, CustomTestStringConvertible {
        let name: String
        /// (sequence number of a segment, expected SNE), applied in order; each one advances the
        /// reference as a sent or verified segment does.
        let steps: [(UInt32, UInt32)]
        let isn: UInt32
        var testDescription: String { name }
    }

    static let rows: [Row] = [
        Row(name: "no wrap", steps: [(1000, 0), (2448, 0), (1_000_000, 0)], isn: 999),
        Row(name: "forward across the wrap", steps: [(0xFFFF_F000, 0), (0xFFFF_FA00, 0), (0x0000_0100, 1), (0x0000_0700, 1)], isn: 0xFFFF_0000),
        Row(name: "retransmission from before the wrap, after it", steps: [(0xFFFF_FA00, 0), (0x0000_0100, 1), (0xFFFF_FA00, 0), (0x0000_0200, 1)], isn: 0xFFFF_F000),
        Row(name: "reordering around the wrap", steps: [(0x0000_0010, 1), (0xFFFF_FFF0, 0), (0x0000_0020, 1)], isn: 0xFFFF_FF00),
        Row(name: "ISN 0xFFFFFFFF: SYN has SNE 0, the first byte SNE 1", steps: [(0xFFFF_FFFF, 0), (0x0000_0000, 1), (0x0000_05A8, 1)], isn: 0xFFFF_FFFF),
        Row(name: "ISN 0xFFFFFFFE", steps: [(0xFFFF_FFFE, 0), (0xFFFF_FFFF, 0), (0x0000_0000, 1)], isn: 0xFFFF_FFFE),
        Row(name: "ISN 0", steps: [(0, 0), (1, 0), (0x8000_0000, 0), (0xFFFF_FFFF, 0), (5, 1)], isn: 0),
        Row(name: "two wraps", steps: [(0x7000_0000, 0), (0xE000_0000, 0), (0x5000_0000, 1), (0xC000_0000, 1), (0x3000_0000, 2), (0xF000_0000, 1)], isn: 0x1000_0000),
        Row(name: "just under half the space back is still the past", steps: [(0x0000_1000, 1), (0x8000_1001, 0)], isn: 0xF000_0000),
    ]

    @Test(arguments: rows)
    func table(_ row: Row) {
        var t = SNETracker(isn: row.isn)
        for (seq, want) in row.steps {
            let got = t.sne(for: seq)
            #expect(got == want, "seq \(String(seq, radix: 16)): SNE \(got), want \(want)")
            t.advance(to: seq, sne: got)
        }
    }

    @Test func referenceOnlyMovesForward() {
        var t = SNETracker(isn: 0xFFFF_FF00)
        t.advance(to: 0x10, sne: 1)
        t.advance(to: 0xFFFF_FFF0, sne: 0) // an old retransmission does not pull it back
        #expect(t.seq == 0x10 && t.sne == 1)
    }

    /// A long stream through several wraps, with every segment retransmitted once a little later:
    /// the SNE always equals the high 32 bits of the true 64-bit sequence number.
    @Test func longStreamWithRetransmissions() {
        let isn: UInt32 = 0xFFFF_0000
        var t = SNETracker(isn: isn)
        var true64 = UInt64(isn)
        var history: [UInt64] = []
        for step in 0..<20_000 {
            true64 += UInt64(0x8_0000 + (step % 7) * 1448)
            history.append(true64)
            for s in [true64] + (history.count > 3 ? [history[history.count - 4]] : []) {
                let seq = UInt32(truncatingIfNeeded: s)
                let sne = t.sne(for: seq)
                #expect(UInt64(sne) == s >> 32)
                t.advance(to: seq, sne: sne)
            }
        }
        #expect(true64 >> 32 >= 2)
    }
}
