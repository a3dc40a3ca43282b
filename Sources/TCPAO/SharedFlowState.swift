import Synchronization

// State the workers share: touched when a connection is created, synchronized or removed,
// never per segment.

/// The connections in a synchronized state, across all workers, for RFC 5925 7.8: an ICMP
/// error can reach a different worker than the connection it quotes (a router sent it).
/// Written only when a connection becomes synchronized or ends, never per segment.
public final class SynchronizedFlows: Sendable {
    private let flows = Mutex<Set<FlowKey>>([])

    public init() {}

    public func insert(_ k: FlowKey) { flows.withLock { _ = $0.insert(k) } }
    public func remove(_ k: FlowKey) { flows.withLock { _ = $0.remove(k) } }
    public func contains(_ k: FlowKey) -> Bool { flows.withLock { $0.contains(k) } }
    public var count: Int { flows.withLock { $0.count } }
}

/// The daemon-wide bound on tracked connections, shared by the workers' tables: one worker may
/// hold most flows (NFQUEUE's queue balancing hashes addresses only), yet `max-flows` bounds
/// the sum. Touched when a flow is created or removed, never per segment.
public final class FlowBudget: Sendable {
    public let limit: Int
    private let used = Atomic<Int>(0)

    public init(limit: Int) { self.limit = limit }

    public var count: Int { used.load(ordering: .relaxed) }

    func acquire() -> Bool {
        var cur = used.load(ordering: .relaxed)
        while cur < limit {
            let (exchanged, now) = used.compareExchange(expected: cur, desired: cur + 1, ordering: .relaxed)
            if exchanged { return true }
            cur = now
        }
        return false
    }

    func release() { used.subtract(1, ordering: .relaxed) }
}
