import TCPAO

// MARK: lifetimes (RFC 8177) and the rotation checks

extension ConfigLoader {
    /// RFC 8177 lifetime: `always: true`, or start-date-time with one of end-date-time,
    /// no-end-time, duration (seconds). Start defaults to the beginning of time.
    mutating func lifetime(_ n: ConfigNode, _ path: @autoclosure () -> String) -> Lifetime? {
        guard let f = fields(n, path(), allowed: ["always", "start-date-time", "end-date-time", "no-end-time", "duration"]) else { return nil }
        if let a = f["always"]?.value {
            guard f.count == 1 else {
                report(.error, n, path(), "`always` cannot be combined with dates", fix: "use `always: true` alone"); return nil
            }
            return bool(a, "\(path()).always") == true ? .always : nil
        }
        var l = Lifetime.always
        if let s = f["start-date-time"]?.value {
            guard let t = date(s, "\(path()).start-date-time") else { return nil }
            l.start = t
        }
        let ends = ["end-date-time", "no-end-time", "duration"].filter { f[$0] != nil }
        if ends.count > 1 {
            report(.error, n, path(), "more than one end (\(ends.joined(separator: ", ")))", fix: "keep one of end-date-time, no-end-time, duration")
            return nil
        }
        if let e = f["end-date-time"]?.value {
            guard let t = date(e, "\(path()).end-date-time") else { return nil }
            l.end = t
        } else if let d = f["duration"]?.value {
            guard l.start != .min else {
                report(.error, d, "\(path()).duration", "a duration needs a start-date-time", fix: "add start-date-time"); return nil
            }
            guard let v = int(d, "\(path()).duration", 1...Int(UInt32.max), what: "duration (seconds)") else { return nil }
            l.end = l.start + Int64(v)
        } else if let ne = f["no-end-time"]?.value {
            guard bool(ne, "\(path()).no-end-time") == true else {
                report(.error, ne, "\(path()).no-end-time", "`no-end-time` can only be true", fix: "write `no-end-time: true` or give an end-date-time")
                return nil
            }
        }
        if l.end <= l.start {
            report(.error, n, path(), "the lifetime ends (\(RFC3339.format(l.end))) before it starts (\(RFC3339.format(l.start)))",
                   fix: "put end-date-time after start-date-time")
            return nil
        }
        return l
    }

    mutating func date(_ n: ConfigNode, _ path: @autoclosure () -> String) -> Int64? {
        guard let s = n.text, let t = RFC3339.parse(s) else {
            report(.error, n, path(), "`\(n.text ?? "?")` is not an RFC 3339 date-time", fix: "write it like 2026-01-01T00:00:00Z")
            return nil
        }
        return t
    }

    func overlap(_ a: Lifetime, _ b: Lifetime) -> Bool { a.start < b.end && b.start < a.end }

    /// "No key valid now" and "lifetimes that leave a gap", for sending and for accepting.
    mutating func checkCoverage(_ c: KeyChain, node: ConfigNode?) {
        for (what, lifetimes) in [("send", c.keys.map(\.sendLifetime)), ("accept", c.keys.map(\.acceptLifetime))] {
            let fixNow = what == "send" ? "extend a key's send-lifetime to cover now, or add a key valid now"
                                        : "extend a key's accept-lifetime to cover now"
            if !lifetimes.contains(where: { $0.contains(now) }) {
                report(.error, node, "key-chains[\(c.name)]", "no key may be used to \(what) now (\(RFC3339.format(now)))", fix: fixNow)
                continue
            }
            // Walk forward from now through the union of the lifetimes.
            var t = now
            while true {
                guard let covering = lifetimes.filter({ $0.contains(t) }).map(\.end).max() else {
                    let next = lifetimes.map(\.start).filter { $0 > t }.min()
                    if let next {
                        report(.error, node, "key-chains[\(c.name)]",
                               "no key may be used to \(what) from \(RFC3339.format(t)) until \(RFC3339.format(next))",
                               fix: "extend a key's \(what)-lifetime, or start the next key earlier, so the lifetimes meet")
                    } else if what == "accept" {
                        report(.warning, node, "key-chains[\(c.name)]", "every key's \(what)-lifetime ends by \(RFC3339.format(t))",
                               fix: "add the next key before then")
                    } // The end of sending is reported on the last key, by checkRotation.
                    break
                }
                if covering == .max { break }
                t = covering
            }
        }
        checkRotation(c, node: node)
    }

    /// The rotation schedule's warnings (`RotationSchedule`), each on the key to change: a
    /// hand-over that cannot be hitless (the new key not accepted long enough before it sends,
    /// the old one not long enough after it can last be sent), and the last key that may send
    /// when its send lifetime ends with no key after it. Only hand-overs after `now`: one that is
    /// over is history. (A gap between keys is an error of `checkCoverage`.)
    mutating func checkRotation(_ c: KeyChain, node: ConfigNode?) {
        let s = RotationSchedule(chain: c, now: now)
        let margin = RotationSchedule.span(RotationSchedule.minimumMargin)
        func name(_ i: Int) -> String { "key \(c.keys[i].chainKeyID)" }
        func when(_ t: Int64) -> String { "\(RFC3339.format(t)) (\(s.relative(t)))" }
        for h in s.shortOverlaps {
            guard let to = h.to else { continue }
            let both: String
            switch h.bothAccepted {
            case nil: both = "they are never both accepted"
            case let b? where h.overlap == .max: both = b.start == .min ? "both are always accepted" : "both are accepted from \(RFC3339.format(b.start)) on"
            case _?: both = "both are accepted for \(RotationSchedule.span(h.overlap))"
            }
            let head = "the hand-over from \(name(h.from)) to \(name(to)) at \(when(h.at)) is not hitless (\(both))"
            if h.lead < RotationSchedule.minimumMargin {
                let why: String
                switch h.lead {
                case .min: why = "\(name(to)) is no longer accepted when it starts sending (its accept-lifetime ends \(RFC3339.format(h.newAcceptedUntil)))"
                case ..<0: why = "\(name(to)) is accepted only from \(RFC3339.format(h.newAcceptedFrom)), \(RotationSchedule.span(-h.lead)) after it starts sending"
                default: why = "\(name(to)) is accepted only from \(RFC3339.format(h.newAcceptedFrom)), \(RotationSchedule.span(h.lead)) before it starts sending"
                }
                report(.warning, keyNode(node, to, "accept-lifetime"), "key-chains[\(c.name)].keys[\(to)].accept-lifetime",
                       "\(head): \(why); both ends must accept a key before either sends with it (RFC 5925 6.1), and their clocks differ",
                       fix: "start \(name(to))'s accept-lifetime at least \(margin) before \(RFC3339.format(h.at)); the NETCONF/gNMI draft's monthly rotation: 12 h before, for 24 h of overlap")
            }
            if h.tail < RotationSchedule.minimumMargin {
                let why: String
                if h.tail == .min {
                    why = "\(name(h.from)) may be sent with no end but is accepted only until \(RFC3339.format(h.oldAcceptedUntil)): a connection still using it then (one idle since the hand-over) fails"
                } else {
                    let last = h.oldSentUntil == h.at ? "it stops sending" : "it can last be sent (\(RFC3339.format(h.oldSentUntil)))"
                    let rel = h.tail < 0 ? "\(RotationSchedule.span(-h.tail)) before" : "\(RotationSchedule.span(h.tail)) after"
                    why = "\(name(h.from)) is accepted only until \(RFC3339.format(h.oldAcceptedUntil)), \(rel) \(last): a peer whose clock runs behind, or a connection idle since, still sends with it"
                }
                report(.warning, keyNode(node, h.from, "accept-lifetime"), "key-chains[\(c.name)].keys[\(h.from)].accept-lifetime",
                       "\(head): \(why); keep accepting a key until neither end can send with it (RFC 5925 6.1)",
                       fix: h.oldSentUntil == .max
                           ? "end \(name(h.from))'s send-lifetime at \(RFC3339.format(h.at)) and its accept-lifetime at least \(margin) later"
                           : "end \(name(h.from))'s accept-lifetime at least \(margin) after \(RFC3339.format(h.oldSentUntil)); the NETCONF/gNMI draft's monthly rotation: 12 h after, for 24 h of overlap")
            }
        }
        if let h = s.lastSend {
            report(.warning, keyNode(node, h.from, "send-lifetime"), "key-chains[\(c.name)].keys[\(h.from)].send-lifetime",
                   "\(name(h.from)) is the last key that may send: its send-lifetime ends \(when(h.at)) and no key follows, so the chain's peers cannot be sent to from then",
                   fix: "add the next key (accepted at least \(margin) before it sends), or make \(name(h.from))'s send-lifetime no-end-time until the next rotation adds one")
        }
    }

    /// The node of key `i` of a chain (its `field` when given, else the key), for a
    /// diagnostic's location; the chain's node when the key cannot be found.
    func keyNode(_ chain: ConfigNode?, _ i: Int, _ field: String) -> ConfigNode? {
        guard let keys = chain?["keys"]?.sequence, keys.indices.contains(i) else { return chain }
        let k = keys[i]
        return k[field] ?? k["send-accept-lifetime"] ?? k
    }
}
