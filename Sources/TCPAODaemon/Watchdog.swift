import Dispatch
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Which packet workers have stopped turning their loop. A worker's loop wakes at least every
/// 100 ms (the receive timeout) and stamps its heartbeat once a second (coarse monotonic
/// seconds), so a heartbeat older than `limit` seconds means the worker is stuck: in a
/// syscall, a lock, or a loop that never ends. Pure: the daemon feeds it the stamps.
public enum WorkerLiveness {
    /// Indexes of the workers whose last heartbeat is more than `limit` seconds before `now`.
    public static func stalled(heartbeats: [UInt32], now: UInt32, limit: UInt32) -> [Int] {
        heartbeats.indices.filter { now &- heartbeats[$0] > limit && now &- heartbeats[$0] < UInt32.max / 2 }
    }
}

/// The systemd watchdog (sd_watchdog_enabled(3), WatchdogSec= in the unit): WATCHDOG=1 every
/// half interval, but only while every packet worker is alive. A stuck worker stops the pings,
/// and systemd restarts the service (Restart=on-failure), which takes the rules over in place
/// and restores the connections from their conntrack labels.
final class SystemdWatchdog: @unchecked Sendable {
    private let timer: DispatchSourceTimer
    private var reported: Set<Int> = []

    /// nil when systemd asked for no watchdog (no WATCHDOG_USEC, or it is meant for another PID).
    init?(workers: [Worker], log: Logger) {
        guard let usec = SystemdWatchdog.intervalMicroseconds() else { return nil }
        let period = max(usec / 2, 100_000)
        // Stuck: no heartbeat for half the watchdog interval (at least 2 s: the stamps are in
        // whole seconds), so systemd still gets a ping in time whenever the workers are fine.
        let limit = UInt32(max(2, usec / 2_000_000))
        let q = DispatchQueue(label: "tcpaod.watchdog")
        timer = DispatchSource.makeTimerSource(queue: q)
        timer.schedule(deadline: .now(), repeating: .microseconds(Int(period)))
        timer.setEventHandler { [unowned self] in
            let now = Worker.clock().mono
            let stalled = WorkerLiveness.stalled(heartbeats: workers.map { $0.heartbeat.load(ordering: .relaxed) }, now: now, limit: limit)
            if stalled.isEmpty {
                reported.removeAll()
                SystemdNotify.send("WATCHDOG=1")
                return
            }
            for i in stalled where !reported.contains(i) {
                reported.insert(i)
                log.critical("worker for queue \(workers[i].socket.queue) has not run its loop for more than \(limit) s: no longer feeding the systemd watchdog, so systemd restarts tcpaod")
            }
        }
        log.info("systemd watchdog: every \(usec / 1000) ms, fed while every packet worker runs")
    }

    func start() { timer.resume() }
    func stop() { timer.cancel() }

    /// WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID unset or ours).
    static func intervalMicroseconds() -> UInt64? {
        guard let u = getenv("WATCHDOG_USEC").flatMap({ UInt64(String(cString: $0)) }), u > 0 else { return nil }
        if let p = getenv("WATCHDOG_PID").flatMap({ Int32(String(cString: $0)) }), p != getpid() { return nil }
        return u
    }
}
