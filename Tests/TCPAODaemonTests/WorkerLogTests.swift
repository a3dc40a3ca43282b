import Foundation
import Testing
@testable import TCPAODaemon

@Suite struct WorkerLogTests {
    @Test func logLimiterLogsFirstThenAtMostEveryTenSeconds() {
        var l = LogLimiter()
        #expect(l.due(count: 1, now: 100)! == (1, nil))
        #expect(l.due(count: 5, now: 105) == nil)
        #expect(l.due(count: 9, now: 109) == nil)
        #expect(l.due(count: 12, now: 110)! == (11, 10))
        #expect(l.due(count: 13, now: 119) == nil)
        #expect(l.due(count: 20, now: 200)! == (8, 90))
    }

    @Test func logLimiterSurvivesTheClockWrapping() {
        var l = LogLimiter()
        #expect(l.due(count: 1, now: UInt32.max - 2) != nil)
        #expect(l.due(count: 2, now: 3) == nil)
        #expect(l.due(count: 3, now: 8)! == (2, 11))
    }

    @Test func statsFromAnOlderDaemonReadTheNewCountersAsZero() throws {
        let old = #"{"queue": 3, "batches": 2, "packets": 10, "accepted": 9, "modified": 0, "dropped": 1, "truncated": 0, "enobufs": 0, "sendErrors": 0, "foreignMessages": 1, "flows": 4}"#
        let s = try JSONDecoder().decode(IOStats.self, from: Data(old.utf8))
        #expect(s.queue == 3 && s.packets == 10 && s.dropped == 1 && s.foreignMessages == 1 && s.flows == 4)
        #expect(s.malformedMessages == 0 && s.netlinkErrors == 0 && s.receiveErrors == 0)
    }

    @Test func statsRoundTripWithTheNewCounters() throws {
        var s = IOStats(queue: 1)
        s.malformedMessages = 2
        s.netlinkErrors = 3
        s.receiveErrors = 4
        let data = try JSONEncoder().encode(s)
        let json = String(decoding: data, as: UTF8.self)
        #expect(json.contains("\"malformedMessages\":2") && json.contains("\"netlinkErrors\":3"))
        let back = try JSONDecoder().decode(IOStats.self, from: data)
        #expect(back.malformedMessages == 2 && back.netlinkErrors == 3 && back.receiveErrors == 4)
    }
}
