import TCPAO

/// A key chain's rotation schedule from `now` on: which key sends now, each later hand-over of
/// sending to another key (when, and how long both keys are accepted around it), and when
/// sending ends. Pure: computed from the chain's lifetimes and the time given, nothing else.
/// `tcpaod check` prints it; the loader warns about the hand-overs that cannot be hitless.
///
/// The key that sends at a time is `KeyChain.preferredSendKey(at:)` (the daemon's choice for a
/// new connection): among the keys whose send lifetime holds that time, the one that started
/// last. It changes only where a send lifetime starts or ends, so the schedule walks those.
///
/// A hand-over is hitless (RFC 5925 6.1: MKT changes "with zero segment loss") when both ends
/// accept the new key before either sends with it, and keep accepting the old one until
/// neither can still send with it. Both ends switch by their own clocks, and a connection keeps
/// its current key until the peer asks for the new one through RNextKeyID (RFC 5925 7.5) or the
/// key's send lifetime ends; so the new key must be accepted some margin before the hand-over
/// (a peer whose clock runs ahead), and the old one some margin after its send lifetime ends
/// (a peer whose clock runs behind, idle connections, retransmissions). The applicability draft
/// for NETCONF/gNMI keeps "two MKTs with 24-hour overlap for monthly rotations": accepted 12 h
/// on either side of the hand-over.
public struct RotationSchedule: Sendable, Equatable {
    /// The least margin, on either side of a hand-over, for it to count as hitless.
    public static let minimumMargin: Int64 = 3600

    /// Sending passes from one key to another (or to none) at `at`.
    public struct HandOver: Sendable, Equatable {
        /// Index (in the chain's `keys`) of the key that sends until `at`.
        public var from: Int
        /// Index of the key that sends from `at`; nil when no key may send from then on.
        public var to: Int?
        public var at: Int64
        /// `to == nil`: when a key may send again (a gap), or nil (the chain ends).
        public var resumes: Int64?
        /// `from`'s and `to`'s accept lifetimes intersect here (nil: never both accepted).
        public var bothAccepted: Lifetime?
        /// When `to` starts being accepted (`.min`: always).
        public var newAcceptedFrom: Int64
        /// When `to` stops being accepted (`.max`: no end).
        public var newAcceptedUntil: Int64
        /// When `from` can last be sent with (its send lifetime's end, at or after `at`).
        public var oldSentUntil: Int64
        /// When `from` stops being accepted (`.max`: no end).
        public var oldAcceptedUntil: Int64

        /// Seconds both keys are accepted (`.max`: unbounded; 0: never both).
        public var overlap: Int64 {
            guard let b = bothAccepted else { return 0 }
            return b.start == .min || b.end == .max ? .max : b.end - b.start
        }

        /// Seconds `to` is accepted before it starts sending (negative: only after; `.max`:
        /// always; `.min`: not accepted when it starts sending).
        public var lead: Int64 {
            guard to != nil else { return .max }
            if newAcceptedUntil <= at { return .min }
            return newAcceptedFrom == .min ? .max : at - newAcceptedFrom
        }

        /// Seconds `from` is still accepted after it can last be sent with (negative: it stops
        /// being accepted before; `.max`: accepted with no end; `.min`: it may be sent with no end
        /// but is not accepted with no end).
        public var tail: Int64 {
            guard to != nil else { return .max }
            if oldAcceptedUntil == .max { return .max }
            return oldSentUntil == .max ? .min : oldAcceptedUntil - oldSentUntil
        }

        /// Both margins at least `minimumMargin` (a hand-over to no key is never hitless).
        public var isHitless: Bool {
            to != nil && lead >= RotationSchedule.minimumMargin && tail >= RotationSchedule.minimumMargin
        }
    }

    public var chain: String
    public var now: Int64
    /// The key that sends now (nil: none may).
    public var current: Int?
    /// The hand-overs after `now`, in order; the last one has `to == nil` when sending ends
    /// (or stops for a while: then nothing after the gap is listed).
    public var handOvers: [HandOver]
    /// The first time after `now` at which no key may send (`.max`: never; `now` when none may now).
    public var sendEnd: Int64
    /// When the last key stops being accepted (`.max`: never).
    public var acceptEnd: Int64

    public init(chain c: KeyChain, now: Int64) {
        chain = c.name
        self.now = now
        let keys = c.keys
        current = c.preferredSendKey(at: now)
        handOvers = []
        sendEnd = current == nil ? now : .max
        acceptEnd = keys.map(\.acceptLifetime.end).max() ?? now
        guard var sending = current else { return }
        // The preferred key changes only where a send lifetime starts or ends.
        let boundaries = Set(keys.flatMap { [$0.sendLifetime.start, $0.sendLifetime.end] })
            .filter { $0 > now && $0 != .max }.sorted()
        for (i, b) in boundaries.enumerated() {
            let next = c.preferredSendKey(at: b)
            if next == sending { continue }
            let old = keys[sending]
            var h = HandOver(from: sending, to: next, at: b, resumes: nil, bothAccepted: nil,
                             newAcceptedFrom: .max, newAcceptedUntil: .max,
                             oldSentUntil: max(b, old.sendLifetime.end), oldAcceptedUntil: old.acceptLifetime.end)
            guard let n = next else {
                h.resumes = boundaries[(i + 1)...].first { c.preferredSendKey(at: $0) != nil }
                handOvers.append(h)
                sendEnd = b
                return
            }
            let new = keys[n]
            h.newAcceptedFrom = new.acceptLifetime.start
            h.newAcceptedUntil = new.acceptLifetime.end
            let both = Lifetime(start: max(old.acceptLifetime.start, new.acceptLifetime.start),
                                end: min(old.acceptLifetime.end, new.acceptLifetime.end))
            h.bothAccepted = both.start < both.end ? both : nil
            handOvers.append(h)
            sending = n
        }
    }

    /// The hand-overs that cannot be hitless (see `HandOver.isHitless`), to another key.
    public var shortOverlaps: [HandOver] { handOvers.filter { $0.to != nil && !$0.isHitless } }

    /// The hand-over after which no key may send, when no key follows at all (the chain ends).
    public var lastSend: HandOver? { handOvers.last.flatMap { $0.to == nil && $0.resumes == nil ? $0 : nil } }

    /// A span of seconds for people, rounded down: "30 d", "24 h", "1 h", "90 min", "45 s".
    public static func span(_ seconds: Int64) -> String {
        let s = seconds.magnitude
        if s >= 2 * 86400 { return "\(s / 86400) d" }
        if s >= 2 * 3600 || (s >= 3600 && s % 3600 == 0) { return "\(s / 3600) h" }
        if s >= 120 { return "\(s / 60) min" }
        return "\(s) s"
    }

    /// "in 30 d" / "30 d ago", from `now`.
    public func relative(_ t: Int64) -> String {
        if t == .max { return "never" }
        return t >= now ? "in \(RotationSchedule.span(t - now))" : "\(RotationSchedule.span(now - t)) ago"
    }

    /// A date-time without zero seconds: "2026-12-28T12:00Z" (RFC 3339 allows no such form,
    /// so only for people; "no end" for `.max`).
    public static func shortDate(_ t: Int64) -> String {
        let s = RFC3339.format(t)
        guard t != .max, t != .min, s.hasSuffix(":00Z") else { return s }
        return String(s.dropLast(4)) + "Z"
    }
}
