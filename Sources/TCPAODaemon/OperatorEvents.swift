import Logging
import TCPAO

/// One log line for an operator: a message and stable keys (peer, key, reason, count, ...).
public struct OperatorEvent: Sendable, Equatable {
    public var level: Logger.Level
    public var message: String
    public var metadata: [String: String]

    public init(_ level: Logger.Level, _ message: String, _ metadata: [String: String]) {
        self.level = level
        self.message = message
        self.metadata = metadata
    }
}

/// What an operator wants in the log, derived once a second from the counters and the key
/// chains, never on the packet path (the workers only count):
/// - drops, per peer and reason, rate-limited: the first drop of a (peer, reason) is logged at
///   once, later ones at most once per `dropInterval` seconds with the count since the last line;
/// - key events: a key becomes (or stops being) the preferred one for new connections, a key's
///   send or accept lifetime ends or begins, and a connection of the peer starts signing or
///   verifying with a key (the peer moved to RNextKeyID N, or its own current key).
/// Pure: the daemon feeds it counter snapshots and the time, and logs what it returns.
public struct OperatorEvents: Sendable {
    public var dropInterval: Int64 = 10
    /// Connections' key moves logged one line each per call (a second); beyond it, one line per
    /// peer, kind and KeyID with the number of connections (a rotation moves them all at once).
    public var keyMoveLines = 20
    /// Per peer and reason: total already reported, when the last line was written.
    private var drops: [String: (reported: UInt64, at: Int64)] = [:]
    private var used: [String: (signed: UInt64, verified: UInt64)] = [:]
    private var preferred: [String: UInt64?] = [:]
    private var validity: [String: (send: Bool, accept: Bool)] = [:]
    private var primed = false
    /// The configuration generation of the last full look and when a key's lifetime next
    /// begins or ends: until then, with the same configuration and a clock that did not step
    /// back, no key event can happen, so a call looks only at the peers with counters (a
    /// fleet's idle peers cost nothing once a second).
    private var generation: UInt64?
    private var positions: [String: Int] = [:]
    private var nextChange: Int64 = .min
    private var lastNow: Int64 = .min

    public init() {}

    /// Events since the last call. Counters are compared with 0 at the first call (a new
    /// process's counters start there); key preference and lifetimes are only learnt then.
    /// `generation` changes whenever `peers` may have (the daemon's configuration
    /// generation); nil: unknown, every call looks at every peer.
    public mutating func observe(_ c: CounterSnapshot, peers: [PeerPolicy], now: Int64, generation g: UInt64? = nil) -> [OperatorEvent] {
        var out: [OperatorEvent] = []
        let first = !primed
        primed = true
        let changed = g == nil || g != generation
        if changed {
            generation = g
            positions = [:]
            for (i, p) in peers.enumerated() where positions[p.name] == nil { positions[p.name] = i }
        }
        let keysDue = first || changed || now >= nextChange || now < lastNow
        lastNow = now
        let looked: [Int]
        if keysDue {
            looked = Array(peers.indices)
            nextChange = .max
        } else {
            // The peers with counters, in the configuration's order.
            looked = Set(c.peers.keys).union(c.keys.keys).compactMap { positions[$0] }.sorted()
        }
        for i in looked {
            let p = peers[i]
            // Drops, per reason.
            for (name, total) in (c.peers[p.name] ?? [:]) where name.hasPrefix("dropped-") {
                let reason = String(name.dropFirst(8))
                let id = p.name + "\u{0}" + reason
                // A new process's counters start at 0: drops seen at the first look are new too.
                let prev = drops[id] ?? (reported: 0, at: Int64.min / 2)
                guard total > prev.reported else {
                    if drops[id] == nil { drops[id] = prev }
                    continue
                }
                if now - prev.at >= dropInterval {
                    let n = total - prev.reported
                    let since = prev.at == Int64.min / 2 ? "" : " in the last \(now - prev.at) s"
                    out.append(OperatorEvent(.warning, "dropped \(n) segment(s) of peer \(p.name): \(reason)\(since) (\(total) in all)",
                                             ["peer": p.name, "reason": reason, "count": "\(n)", "total": "\(total)"]))
                    drops[id] = (reported: total, at: now)
                } else if drops[id] == nil {
                    drops[id] = prev
                }
            }
            if keysDue { keyEvents(p, now: now, first: first, into: &out) }
            // A key's first segment signed, and first verified: a connection moved to it (on
            // the peer's RNextKeyID, RFC 5925 7.5) or started with it.
            for (key, d) in (c.keys[p.name] ?? [:]).sorted(by: { $0.key < $1.key }) {
                let id = p.name + "\u{0}" + key
                let now = (signed: d["signed"] ?? 0, verified: d["verified"] ?? 0)
                do {
                    let before = used[id] ?? (signed: 0, verified: 0)
                    if before.signed == 0 && now.signed > 0 {
                        out.append(OperatorEvent(.info, "peer \(p.name): first segment signed with key \(key)",
                                                 ["peer": p.name, "key": key, "event": "signing"]))
                    }
                    if before.verified == 0 && now.verified > 0 {
                        out.append(OperatorEvent(.info, "peer \(p.name): first segment from the peer verified with key \(key)",
                                                 ["peer": p.name, "key": key, "event": "peer-signing"]))
                    }
                }
                used[id] = now
            }
        }
        return out
    }

    /// Preference and lifetime events of one peer's keys; notes when the next can happen.
    private mutating func keyEvents(_ p: PeerPolicy, now: Int64, first: Bool, into out: inout [OperatorEvent]) {
        let chain = p.keyChain
        // The preferred key (new connections start with it; RNextKeyID advertises it).
        let pref = chain.preferredSendKey(at: now).map { chain.keys[$0].chainKeyID }
        if !first, let old = preferred[p.name], old != pref {
            if let k = pref, let mkt = chain.keys.first(where: { $0.chainKeyID == k }) {
                out.append(OperatorEvent(.notice, "peer \(p.name): \(mkt) is now the preferred key: new connections start with it and every connection advertises it in RNextKeyID",
                                         ["peer": p.name, "key": "\(k)", "event": "preferred"]))
            } else {
                out.append(OperatorEvent(.error, "peer \(p.name): no key may send now: new connections cannot be protected and established ones stop sending",
                                         ["peer": p.name, "event": "no-send-key"]))
            }
        }
        preferred[p.name] = pref
        // Lifetimes beginning and ending.
        for k in chain.keys {
            let id = p.name + "\u{0}\(k.chainKeyID)"
            let v = (send: k.sendLifetime.contains(now), accept: k.acceptLifetime.contains(now))
            if !first, let old = validity[id] {
                if old.send != v.send {
                    out.append(OperatorEvent(.notice, "peer \(p.name): \(k) \(v.send ? "may now send (send-lifetime began)" : "no longer sends (send-lifetime ended)")",
                                             ["peer": p.name, "key": "\(k.chainKeyID)", "event": v.send ? "send-start" : "send-end"]))
                }
                if old.accept != v.accept {
                    out.append(OperatorEvent(v.accept ? .notice : .warning, "peer \(p.name): \(k) \(v.accept ? "is now accepted (accept-lifetime began)" : "is no longer accepted (accept-lifetime ended): segments with RecvID \(k.recvID) are dropped")",
                                             ["peer": p.name, "key": "\(k.chainKeyID)", "event": v.accept ? "accept-start" : "accept-end"]))
                }
            }
            validity[id] = v
        }
        for k in chain.keys {
            for t in [k.sendLifetime.start, k.sendLifetime.end, k.acceptLifetime.start, k.acceptLifetime.end] where t > now {
                nextChange = min(nextChange, t)
            }
        }
    }

    /// One line per connection whose keys moved (`FlowKeyEvent`, taken from the workers once a
    /// second): the KeyID it sends with, the peer's KeyID and the peer's RNextKeyID. At most
    /// `keyMoveLines` lines; the rest summed per peer, kind and KeyID; events lost by a full
    /// buffer counted.
    public func keyMoves(_ moves: [FlowKeyEvent], lost: UInt64, peers: [PeerPolicy]) -> [OperatorEvent] {
        var out: [OperatorEvent] = []
        var rest: [String: (peer: String, kind: FlowKeyEvent.Kind, to: UInt8, n: Int)] = [:]
        for m in moves {
            let peer = m.peer >= 0 && Int(m.peer) < peers.count ? peers[Int(m.peer)].name : "?"
            guard out.count < keyMoveLines else {
                let id = "\(peer)\u{0}\(m.kind.rawValue)\u{0}\(m.to)"
                rest[id, default: (peer, m.kind, m.to, 0)].n += 1
                continue
            }
            let what: String
            let event: String
            switch m.kind {
            case .sending:
                what = "now sends with KeyID \(m.to) (was \(m.from))" + (m.followsPeer ? ": the peer's RNextKeyID (RFC 5925 7.5)" : ": KeyID \(m.from) may no longer send")
                event = "send-key"
            case .peerSending:
                what = "the peer now sends with KeyID \(m.to) (was \(m.from))"
                event = "peer-key"
            case .peerAsks:
                what = "the peer moved to RNextKeyID \(m.to) (was \(m.from)): it asks for KeyID \(m.to)"
                event = "peer-rnext"
            }
            out.append(OperatorEvent(.info, "connection \(m.key) of peer \(peer): \(what)",
                                     ["peer": peer, "flow": "\(m.key)", "key_id": "\(m.to)", "previous": "\(m.from)", "event": event]))
        }
        for (_, r) in rest.sorted(by: { $0.key < $1.key }) {
            let what = switch r.kind {
            case .sending: "now send with KeyID \(r.to)"
            case .peerSending: "receive KeyID \(r.to) from the peer"
            case .peerAsks: "got RNextKeyID \(r.to) from the peer"
            }
            out.append(OperatorEvent(.info, "and \(r.n) more connection(s) of peer \(r.peer) \(what)",
                                     ["peer": r.peer, "key_id": "\(r.to)", "count": "\(r.n)", "event": "key-moves"]))
        }
        if lost > 0 {
            out.append(OperatorEvent(.info, "\(lost) more key move(s) of connections not logged (more than \(FlowKeyEventBuffer.capacity) per second per queue; `tcpaod flows` shows every connection's keys)",
                                     ["count": "\(lost)", "event": "key-moves-lost"]))
        }
        return out
    }
}
