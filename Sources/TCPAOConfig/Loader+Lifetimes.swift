import TCPAO
import Yams

// MARK: lifetimes (RFC 8177) and the rotation checks

extension ConfigLoader {
    /// RFC 8177 lifetime: `always: true`, or start-date-time with one of end-date-time,
    /// no-end-time, duration (seconds). Start defaults to the beginning of time.
    mutating func lifetime(_ n: Node, _ path: String) -> Lifetime? {
        guard let f = fields(n, path, allowed: ["always", "start-date-time", "end-date-time", "no-end-time", "duration"]) else { return nil }
        if let a = f["always"]?.value {
            guard f.count == 1 else {
                report(.error, n, path, "`always` cannot be combined with dates", fix: "use `always: true` alone"); return nil
            }
            return bool(a, "\(path).always") == true ? .always : nil
        }
        var l = Lifetime.always
        if let s = f["start-date-time"]?.value {
            guard let t = date(s, "\(path).start-date-time") else { return nil }
            l.start = t
        }
        let ends = ["end-date-time", "no-end-time", "duration"].filter { f[$0] != nil }
        if ends.count > 1 {
            report(.error, n, path, "more than one end (\(ends.joined(separator: ", ")))", fix: "keep one of end-date-time, no-end-time, duration")
            return nil
        }
        if let e = f["end-date-time"]?.value {
            guard let t = date(e, "\(path).end-date-time") else { return nil }
            l.end = t
        } else if let d = f["duration"]?.value {
            guard l.start != .min else {
                report(.error, d, "\(path).duration", "a duration needs a start-date-time", fix: "add start-date-time"); return nil
            }
            guard let v = int(d, "\(path).duration", 1...Int(UInt32.max), what: "duration (seconds)") else { return nil }
            l.end = l.start + Int64(v)
        } else if let ne = f["no-end-time"]?.value {
            guard bool(ne, "\(path).no-end-time") == true else {
                report(.error, ne, "\(path).no-end-time", "`no-end-time` can only be true", fix: "write `no-end-time: true` or give an end-date-time")
                return nil
            }
        }
        if l.end <= l.start {
            report(.error, n, path, "the lifetime ends (\(RFC3339.format(l.end))) before it starts (\(RFC3339.format(l.start)))",
                   fix: "put end-date-time after start-date-time")
            return nil
        }
        return l
    }

    mutating func date(_ n: Node, _ path: String) -> Int64? {
        guard let s = n.scalar?.string, let t = RFC3339.parse(s) else {
            report(.error, n, path, "`\(n.scalar?.string ?? "?")` is not an RFC 3339 date-time", fix: "write it like 2026-01-01T00:00:00Z")
            return nil
        }
        return t
    }

    func overlap(_ a: Lifetime, _ b: Lifetime) -> Bool { a.start < b.end && b.start < a.end }

    /// "No key valid now" and "lifetimes that leave a gap", for sending and for accepting.
    mutating func checkCoverage(_ c: KeyChain, node: Node?) {
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
                    } else {
                        report(.warning, node, "key-chains[\(c.name)]", "every key's \(what)-lifetime ends by \(RFC3339.format(t))",
                               fix: "add the next key before then")
                    }
                    break
                }
                if covering == .max { break }
                t = covering
            }
        }
    }
}
