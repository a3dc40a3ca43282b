import Testing
import TCPAO
@testable import TCPAODaemon

/// The systemd watchdog is fed only while every packet worker turns its loop; systemd's STATUS=
/// line carries the counters.
@Suite struct WatchdogTests {
    @Test func aWorkerIsStalledOnlyWhenItsHeartbeatIsOlderThanTheLimit() {
        #expect(WorkerLiveness.stalled(heartbeats: [100, 100], now: 105, limit: 5) == [])
        #expect(WorkerLiveness.stalled(heartbeats: [100, 99], now: 105, limit: 5) == [1])
        #expect(WorkerLiveness.stalled(heartbeats: [90, 104, 80], now: 105, limit: 5) == [0, 2])
        #expect(WorkerLiveness.stalled(heartbeats: [], now: 105, limit: 5) == [])
    }

    @Test func theMonotonicSecondsMayWrap() {
        #expect(WorkerLiveness.stalled(heartbeats: [UInt32.max - 1], now: 2, limit: 5) == [])
        #expect(WorkerLiveness.stalled(heartbeats: [UInt32.max - 10], now: 2, limit: 5) == [0])
    }

    /// A heartbeat stamped after `now` was read (a worker racing the watchdog's clock read) is
    /// not a stall.
    @Test func aHeartbeatNewerThanTheClockReadIsAlive() {
        #expect(WorkerLiveness.stalled(heartbeats: [106], now: 105, limit: 5) == [])
    }

    @Test func theStatusLineSumsFlowsAndNamesTheDrops() {
        var q0 = IOStats(queue: 100), q1 = IOStats(queue: 101)
        q0.flows = 2
        q1.flows = 1
        let counters = CounterSnapshot(total: ["signed": 1200, "verified": 1180, "dropped-bad-mac": 1, "dropped-missing-ao": 2, "dropped-malformed": 0])
        let r = StatsReport(pid: 1, time: 0, uptime: 1, mode: "host", config: "/etc/tcpaod/tcpaod.yaml", reloads: 0, counters: counters,
                            queues: [q0, q1], kernelQueues: [], synchronizedFlows: 0)
        #expect(Daemon.statusLine(r, peers: 2) == "2 peer(s), 3 flows; 1200 signed, 1180 verified, 3 dropped (bad-mac 1, missing-ao 2)")
        let quiet = StatsReport(pid: 1, time: 0, uptime: 1, mode: "host", config: "", reloads: 0, counters: CounterSnapshot(total: [:]),
                                queues: [IOStats(queue: 100)], kernelQueues: [], synchronizedFlows: 0)
        #expect(Daemon.statusLine(quiet, peers: 1) == "1 peer(s), 0 flows; 0 signed, 0 verified, 0 dropped")
    }
}
