import TCPAO

// Runtime MKT management (pure): a key added to, removed from, or preferred in one key chain of
// a loaded configuration, checked by the loader's own rules (`tcpaod check`): key-id unique,
// SendID/RecvID not shared while both keys may be used (RFC 5925 3.1), the secret's length, a
// key valid now for sending and accepting, no gap in the lifetimes, the rotation warnings.
// The result is a new configuration or the errors; the configuration given is never changed.
//
// Order and preference (see `KeyChain.preferredSendKey`: the send-valid key whose send
// lifetime started last wins, ties to the key listed last):
// - `add` without `prefer` puts the key first in its chain, so it loses ties: the key that
//   sends now keeps sending (the other end must have the new key before either sends with it,
//   RFC 5925 6.1). Its own lifetimes decide when it sends if they start later.
// - `prefer` (and `add` with `prefer`) starts the key's send lifetime now and lists it last:
//   it becomes the preferred key, its RecvID the RNextKeyID we advertise, and connections move
//   to it as the peer asks for it (RFC 5925 7.5 step 2.e). No other key is changed: the old
//   key stays valid, so the peer can keep sending with it until it moves too.
// - `remove` takes the key out; the last key of a chain cannot be removed. (Whether a
//   connection still uses the key is the daemon's check, it knows the connections.)

/// A key to add, with its secret (never printed: `Secret` has a fixed description).
public struct NewKey: Sendable {
    public var keyID: UInt64
    public var sendID: UInt8
    public var recvID: UInt8
    public var algorithm: AOAlgorithm
    public var includeOptions: Bool
    public var sendLifetime: Lifetime
    public var acceptLifetime: Lifetime
    public var secret: Secret

    public init(keyID: UInt64, sendID: UInt8, recvID: UInt8, algorithm: AOAlgorithm, includeOptions: Bool = true,
                sendLifetime: Lifetime = .always, acceptLifetime: Lifetime = .always, secret: Secret) {
        self.keyID = keyID
        self.sendID = sendID
        self.recvID = recvID
        self.algorithm = algorithm
        self.includeOptions = includeOptions
        self.sendLifetime = sendLifetime
        self.acceptLifetime = acceptLifetime
        self.secret = secret
    }
}

public enum KeyOperation: Sendable {
    case add(chain: String, key: NewKey, prefer: Bool)
    case remove(chain: String, keyID: UInt64)
    case prefer(chain: String, keyID: UInt64)

    public var chain: String {
        switch self {
        case .add(let c, _, _), .remove(let c, _), .prefer(let c, _): return c
        }
    }

    public var keyID: UInt64 {
        switch self {
        case .add(_, let k, _): return k.keyID
        case .remove(_, let id), .prefer(_, let id): return id
        }
    }

    var addedSecret: Secret? {
        if case .add(_, let k, _) = self { return k.secret }
        return nil
    }

    /// "key 2 added to chain k (preferred)": for logs and answers, no secret.
    public var summary: String {
        switch self {
        case .add(let c, let k, let p): return "key \(k.keyID) (SendID \(k.sendID), RecvID \(k.recvID), \(k.algorithm)) added to chain \(c)\(p ? ", preferred" : "")"
        case .remove(let c, let id): return "key \(id) removed from chain \(c)"
        case .prefer(let c, let id): return "key \(id) of chain \(c) preferred"
        }
    }
}

/// A key operation's outcome: the new configuration (`changed` false: nothing to do, e.g. the
/// key is already preferred) and the loader's warnings about it.
public struct KeyOperationResult: Sendable {
    public var config: Configuration
    public var changed: Bool
    public var warnings: [Diagnostic]
}

/// Why a key operation was refused: every error, each with where and the fix.
public struct KeyOperationError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable { case unknownChain, unknownKey, invalid }
    public var kind: Kind
    public var diagnostics: [Diagnostic]

    /// "PATH: MESSAGE (fix: ...)", one per line (no file: the change is not in one).
    public var description: String {
        diagnostics.map { "\($0.path.isEmpty ? "" : $0.path + ": ")\($0.message)\($0.fix.isEmpty ? "" : " (fix: \($0.fix))")" }
            .joined(separator: "\n")
    }
}

extension Configuration {
    /// The configuration with `op` applied at `now`, or every error (nothing changed).
    public func applying(_ op: KeyOperation, now: Int64) -> Result<KeyOperationResult, KeyOperationError> {
        var l = ConfigLoader(file: "runtime", purpose: .daemon, now: now)
        func refuse(_ path: String, _ msg: String, fix: String, _ kind: KeyOperationError.Kind = .invalid) -> Result<KeyOperationResult, KeyOperationError> {
            l.report(.error, nil, path, msg, fix: fix)
            return .failure(KeyOperationError(kind: kind, diagnostics: l.diagnostics.errors))
        }
        let name = op.chain
        guard let ci = keyChains.firstIndex(where: { $0.name == name }) else {
            return refuse("key-chains", "no key chain `\(name)`", fix: "name one of: \(keyChains.map(\.name).joined(separator: ", "))", .unknownChain)
        }
        let path = "key-chains[\(name)]"
        var keys = keyChains[ci].keys
        let ids = keys.map { "\($0.chainKeyID)" }.joined(separator: ", ")
        switch op {
        case .add(_, let nk, let prefer):
            guard nk.keyID <= UInt64(Int32.max) else {
                return refuse("\(path).key-id", "\(nk.keyID) is out of range for a key-id", fix: "use a number from 0 to \(Int32.max)")
            }
            var send = nk.sendLifetime
            if prefer {
                guard send.contains(now) else {
                    return refuse("\(path).keys[key-id \(nk.keyID)].send-lifetime", "the key cannot be preferred: its send-lifetime \(send) does not contain now",
                                  fix: "leave out prefer, or give a send-lifetime that contains now")
                }
                send.start = now
            }
            if send.end <= send.start || nk.acceptLifetime.end <= nk.acceptLifetime.start {
                return refuse("\(path).keys[key-id \(nk.keyID)]", "a lifetime ends before it starts", fix: "put the end after the start")
            }
            guard l.checkSecretLength(nk.secret.count, nil, "\(path).keys[key-id \(nk.keyID)].secret") else {
                return .failure(KeyOperationError(kind: .invalid, diagnostics: l.diagnostics.errors))
            }
            // The file accepts a far too short key with a warning (an existing peer's key must
            // match); a key added at runtime is a new one, made by automation: refused.
            if nk.secret.count < ConfigLoader.weakSecretLength {
                return refuse("\(path).keys[key-id \(nk.keyID)].secret",
                              "the secret is only \(nk.secret.count) byte\(nk.secret.count == 1 ? "" : "s"): a key added at runtime needs at least \(ConfigLoader.weakSecretLength) (RFC 5925 5.3 advises 12-24)",
                              fix: "use at least 16 random bytes on both ends, e.g. `openssl rand -hex 16`")
            }
            let k = MKT(chainKeyID: nk.keyID, sendID: nk.sendID, recvID: nk.recvID, algorithm: nk.algorithm, includeOptions: nk.includeOptions,
                        sendLifetime: send, acceptLifetime: nk.acceptLifetime, secret: nk.secret)
            if prefer { keys.append(k) } else { keys.insert(k, at: 0) }
        case .remove(_, let id):
            guard let i = keys.firstIndex(where: { $0.chainKeyID == id }) else {
                return refuse("\(path).keys", "chain `\(name)` has no key \(id)", fix: "name one of its keys: \(ids)", .unknownKey)
            }
            guard keys.count > 1 else {
                return refuse("\(path).keys", "key \(id) is the last key of chain `\(name)`: a chain needs a key",
                              fix: "add the key that replaces it first (tcpaod key add --prefer)")
            }
            keys.remove(at: i)
        case .prefer(_, let id):
            guard let i = keys.firstIndex(where: { $0.chainKeyID == id }) else {
                return refuse("\(path).keys", "chain `\(name)` has no key \(id)", fix: "name one of its keys: \(ids)", .unknownKey)
            }
            guard keys[i].sendLifetime.contains(now) else {
                return refuse("\(path).keys[key-id \(id)].send-lifetime", "key \(id) may not send now (send-lifetime \(keys[i].sendLifetime))",
                              fix: "prefer a key whose send-lifetime contains now")
            }
            if keyChains[ci].preferredSendKey(at: now) == i {
                return .success(KeyOperationResult(config: self, changed: false, warnings: []))
            }
            var k = keys.remove(at: i)
            k.sendLifetime.start = now
            keys.append(k)
        }
        // The loader's checks, over the chain as it would be; an added key is checked last, so
        // that a conflict is reported on it (the checks are symmetric otherwise).
        var order = keys
        if case .add(_, let nk, _) = op, let i = order.firstIndex(where: { $0.chainKeyID == nk.keyID && $0.secret === nk.secret }) {
            order.append(order.remove(at: i))
        }
        var checked: [MKT] = []
        var ok = true
        for k in order {
            let p = k.secret === (op.addedSecret) ? "\(path).keys[new key-id \(k.chainKeyID)]" : "\(path).keys[key-id \(k.chainKeyID)]"
            if !l.checkKey(k, node: nil, path: p, against: checked, chain: name) { ok = false }
            checked.append(k)
        }
        guard ok else { return .failure(KeyOperationError(kind: .invalid, diagnostics: l.diagnostics.errors)) }
        l.warnMixedOptionLengths(keys, node: nil, path: "\(path).keys")
        let chain = KeyChain(name: name, keys: keys)
        l.checkCoverage(chain, node: nil)
        if l.diagnostics.hasErrors { return .failure(KeyOperationError(kind: .invalid, diagnostics: l.diagnostics.errors)) }
        var c = self
        c.keyChains[ci] = chain
        for p in c.peers.indices where c.peers[p].keyChain.name == name { c.peers[p].keyChain = chain }
        return .success(KeyOperationResult(config: c, changed: true, warnings: l.diagnostics.warnings))
    }
}
