import CLibCrypto
import Synchronization

/// OpenSSL's low-level digest entry points behind one interface, so HMAC is written once.
protocol DigestEngine {
    associatedtype Context
    static var outputSize: Int { get }
    static func initialize(_ c: UnsafeMutablePointer<Context>)
    static func update(_ c: UnsafeMutablePointer<Context>, _ p: UnsafeRawPointer?, _ n: Int)
    static func final(_ out: UnsafeMutablePointer<UInt8>, _ c: UnsafeMutablePointer<Context>)
    static func digest(_ p: UnsafeRawPointer?, _ n: Int, _ out: UnsafeMutablePointer<UInt8>)
}

extension DigestEngine {
    static var contextSize: Int { MemoryLayout<Context>.size }
}

enum SHA1Engine: DigestEngine {
    static let outputSize = 20
    @inline(__always) static func initialize(_ c: UnsafeMutablePointer<SHA_CTX>) { SHA1_Init(c) }
    @inline(__always) static func update(_ c: UnsafeMutablePointer<SHA_CTX>, _ p: UnsafeRawPointer?, _ n: Int) { SHA1_Update(c, p, n) }
    @inline(__always) static func final(_ out: UnsafeMutablePointer<UInt8>, _ c: UnsafeMutablePointer<SHA_CTX>) { SHA1_Final(out, c) }
    static func digest(_ p: UnsafeRawPointer?, _ n: Int, _ out: UnsafeMutablePointer<UInt8>) {
        _ = SHA1(p?.assumingMemoryBound(to: UInt8.self), n, out)
    }
}

enum SHA256Engine: DigestEngine {
    static let outputSize = 32
    @inline(__always) static func initialize(_ c: UnsafeMutablePointer<SHA256_CTX>) { SHA256_Init(c) }
    @inline(__always) static func update(_ c: UnsafeMutablePointer<SHA256_CTX>, _ p: UnsafeRawPointer?, _ n: Int) { SHA256_Update(c, p, n) }
    @inline(__always) static func final(_ out: UnsafeMutablePointer<UInt8>, _ c: UnsafeMutablePointer<SHA256_CTX>) { SHA256_Final(out, c) }
    static func digest(_ p: UnsafeRawPointer?, _ n: Int, _ out: UnsafeMutablePointer<UInt8>) {
        _ = SHA256(p?.assumingMemoryBound(to: UInt8.self), n, out)
    }
}

/// The AES-128-CBC cipher, fetched from the default provider once per process.
private struct FetchedCipher: @unchecked Sendable { let pointer: OpaquePointer }
private let aes128CBC: FetchedCipher = {
    guard let c = EVP_CIPHER_fetch(nil, "AES-128-CBC", nil) else {
        fatalError("libcrypto has no AES-128-CBC: the OpenSSL installation is broken")
    }
    return FetchedCipher(pointer: c)
}()

/// AES-128-CBC contexts given back by dropped AES-CMAC keys, for the next key to re-key.
///
/// A connection makes three AES-CMAC contexts on each side (RFC 5925 5.2: the SYN, send and
/// receive traffic keys). A new EVP context costs two heap allocations and the provider's
/// context set-up; re-keying a used one (EVP_EncryptInit_ex with no cipher) is only the AES
/// key expansion. A context given back is first re-keyed with the all-zero key, so no key
/// schedule outlives its key. At most `limit` are kept; the rest are freed.
enum CipherContextPool {
    static let limit = 1024
    private static let contexts: Mutex<ContextStack> = Mutex(ContextStack())

    struct ContextStack: ~Copyable {
        /// The contexts' addresses (an address is Sendable; an OpaquePointer is not).
        let slots = UnsafeMutablePointer<UInt>.allocate(capacity: CipherContextPool.limit)
        var count = 0
    }

    /// A context keyed with `key` (16 bytes) and a zero IV.
    static func take(key: UnsafeRawBufferPointer) -> OpaquePointer {
        let reused = contexts.withLock { s -> UInt? in
            guard s.count > 0 else { return nil }
            s.count -= 1
            return s.slots[s.count]
        }.flatMap { OpaquePointer(bitPattern: $0) }
        let c: OpaquePointer
        if let r = reused {
            c = r
        } else {
            guard let n = EVP_CIPHER_CTX_new() else { fatalError("EVP_CIPHER_CTX_new failed: out of memory") }
            c = n
        }
        var zero = (UInt64(0), UInt64(0))
        let ok = withUnsafeBytes(of: &zero) { iv in
            EVP_EncryptInit_ex(c, reused == nil ? aes128CBC.pointer : nil, nil,
                               key.baseAddress!.assumingMemoryBound(to: UInt8.self),
                               iv.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        precondition(ok == 1, "EVP_EncryptInit_ex(AES-128-CBC) failed")
        // No EVP_CIPHER_CTX_set_padding(c, 0): CMAC never calls EncryptFinal, so padding is
        // never applied, and with the flag set OpenSSL 3.0 sets it again (by parameter name)
        // on every init.
        return c
    }

    /// Wipes `c`'s key schedule (re-keyed with zeros) and its chaining value (IV set to zero:
    /// the last block it encrypted may be a derived traffic key, a prepared master key, or L),
    /// and keeps it, or frees it when `limit` are kept already.
    static func give(_ c: OpaquePointer) {
        let zero = (UInt64(0), UInt64(0))
        let wiped = withUnsafeBytes(of: zero) { z in
            let p = z.baseAddress!.assumingMemoryBound(to: UInt8.self)
            return EVP_EncryptInit_ex(c, nil, nil, p, p) == 1
        }
        let address = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(c)))
        let kept = wiped && contexts.withLock { s -> Bool in
            guard s.count < limit else { return false }
            s.slots[s.count] = address
            s.count += 1
            return true
        }
        if !kept { EVP_CIPHER_CTX_free(c) } // frees and cleanses the key schedule
    }
}

/// A keyed MAC context: made once per key (per flow direction for traffic keys) and reused for
/// every segment without allocating.
///
/// - HMAC-SHA-1 / HMAC-SHA-256: the inner and outer digest states after absorbing the padded key
///   are kept; a segment's MAC copies them (a struct copy) and continues. OpenSSL 3.0's EVP_MAC
///   re-init instead duplicates its digest context on the heap for every message.
/// - AES-CMAC (RFC 4493): one keyed EVP AES-128-CBC context (AES-NI; re-keyed from
///   `CipherContextPool` when one is free) and the subkeys K1, K2; a segment CBC-encrypts the
///   message, CMAC's last-block rule applied, chaining on from the last MAC (see `cmac`).
public struct MACKey: ~Copyable {
    public let algorithm: AOAlgorithm
    /// Out of line so that it can be wiped in `deinit`: the two pre-keyed digest states (HMAC),
    /// or K1 | K2 | V (CMAC; V is the cipher context's CBC chaining value, see `cmac`).
    let state: UnsafeMutableRawPointer
    let cipher: OpaquePointer?

    /// Keys a context for `algorithm` with `key` (a traffic key, or for the KDF a master key).
    public init(algorithm: AOAlgorithm, key: UnsafeRawBufferPointer) {
        self.algorithm = algorithm
        let size = MACKey.stateSize(algorithm.kind)
        state = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        state.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        switch algorithm.kind {
        case .hmacSHA1:
            MACKey.initHMAC(state, key: key, SHA1Engine.self)
            cipher = nil
        case .hmacSHA256:
            MACKey.initHMAC(state, key: key, SHA256Engine.self)
            cipher = nil
        case .aesCMAC:
            cipher = MACKey.initCMAC(state, key: key)
        }
    }

    /// Out-of-line state: two digest contexts for HMAC; K1, K2 and the chaining value for CMAC.
    static func stateSize(_ k: KDFKind) -> Int {
        switch k {
        case .hmacSHA1: 2 * SHA1Engine.contextSize
        case .hmacSHA256: 2 * SHA256Engine.contextSize
        case .aesCMAC: 48
        }
    }

    /// Keys a context from bytes in an array (tests, tools); the temporary copy is wiped.
    public init(algorithm: AOAlgorithm, bytes: [UInt8]) {
        let tmp = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        defer { OPENSSL_cleanse(tmp.baseAddress, tmp.count); tmp.deallocate() }
        tmp.copyBytes(from: bytes)
        self.init(algorithm: algorithm, key: UnsafeRawBufferPointer(rebasing: tmp[0..<bytes.count]))
    }

    public init(algorithm: AOAlgorithm, key: borrowing TrafficKey) {
        self.init(algorithm: algorithm, key: UnsafeRawBufferPointer(start: key.storage, count: key.count))
    }

    deinit {
        OPENSSL_cleanse(state, MACKey.stateSize(algorithm.kind))
        state.deallocate()
        if let c = cipher { CipherContextPool.give(c) } // wiped, then kept for the next key
    }

    /// Bytes written by `compute`: the PRF's full output before truncation.
    public var fullLength: Int { algorithm.kind.outputLength }

    // MARK: HMAC (RFC 2104)

    /// Absorbs (key XOR ipad) and (key XOR opad) into two contexts stored at `st`.
    private static func initHMAC<D: DigestEngine>(_ st: UnsafeMutableRawPointer, key: UnsafeRawBufferPointer, _: D.Type) {
        let block = 64
        // The padded key and each pad on the stack (a connection's set-up keys several
        // contexts: no heap allocation for them), wiped before return.
        withUnsafeTemporaryAllocation(byteCount: 2 * block, alignment: 16) { tmp in
            let k = tmp.baseAddress!, pad = k + block
            k.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * block)
            defer { OPENSSL_cleanse(k, 2 * block) }
            if key.count > block {
                D.digest(key.baseAddress, key.count, k.assumingMemoryBound(to: UInt8.self))
            } else if key.count > 0 {
                k.copyMemory(from: key.baseAddress!, byteCount: key.count)
            }
            for half in 0..<2 {
                let xor: UInt8 = half == 0 ? 0x36 : 0x5c
                for i in 0..<block { pad.storeBytes(of: k.load(fromByteOffset: i, as: UInt8.self) ^ xor, toByteOffset: i, as: UInt8.self) }
                let c = (st + half * D.contextSize).bindMemory(to: D.Context.self, capacity: 1)
                D.initialize(c)
                D.update(c, pad, block)
            }
        }
    }

    /// HMAC over `a || b`: continues copies of the pre-keyed inner and outer contexts.
    @inline(__always)
    private func hmac<D: DigestEngine>(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ out: UnsafeMutableRawPointer, _: D.Type) {
        withUnsafeTemporaryAllocation(of: D.Context.self, capacity: 1) { buf in
            let c = buf.baseAddress!
            let raw = UnsafeMutableRawPointer(c)
            let o = out.assumingMemoryBound(to: UInt8.self)
            raw.copyMemory(from: state, byteCount: D.contextSize)
            if a.count > 0 { D.update(c, a.baseAddress, a.count) }
            if b.count > 0 { D.update(c, b.baseAddress, b.count) }
            D.final(o, c)
            raw.copyMemory(from: state + D.contextSize, byteCount: D.contextSize)
            D.update(c, out, D.outputSize)
            D.final(o, c)
            OPENSSL_cleanse(raw, D.contextSize)
        }
    }

    // MARK: AES-CMAC (RFC 4493)

    private static func initCMAC(_ st: UnsafeMutableRawPointer, key: UnsafeRawBufferPointer) -> OpaquePointer {
        precondition(key.count == 16, "AES-128-CMAC takes a 16-byte key (RFC 5926 3.1.1.2 prepares other master keys)")
        let c = CipherContextPool.take(key: key)
        let zero = (UInt64(0), UInt64(0))
        // RFC 4493 2.3: L = AES-128(K, 0^128); K1 = L << 1 (^ Rb); K2 = K1 << 1 (^ Rb).
        var l = (UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &l) { lb in
            withUnsafeBytes(of: zero) { z in
                var outl: Int32 = 0
                EVP_EncryptUpdate(c, lb.baseAddress!.assumingMemoryBound(to: UInt8.self), &outl,
                                  z.baseAddress!.assumingMemoryBound(to: UInt8.self), 16)
            }
        }
        let lhi = UInt64(bigEndian: l.0), llo = UInt64(bigEndian: l.1)
        let (h1, l1) = MACKey.double(lhi, llo)
        let (h2, l2) = MACKey.double(h1, l1)
        st.storeBytes(of: h1.bigEndian, toByteOffset: 0, as: UInt64.self)
        st.storeBytes(of: l1.bigEndian, toByteOffset: 8, as: UInt64.self)
        st.storeBytes(of: h2.bigEndian, toByteOffset: 16, as: UInt64.self)
        st.storeBytes(of: l2.bigEndian, toByteOffset: 24, as: UInt64.self)
        // Encrypting L left the context chaining on L: the first block of the first message
        // is XORed with it (see `cmac`).
        st.storeBytes(of: l.0, toByteOffset: 32, as: UInt64.self)
        st.storeBytes(of: l.1, toByteOffset: 40, as: UInt64.self)
        withUnsafeMutableBytes(of: &l) { OPENSSL_cleanse($0.baseAddress, $0.count) }
        return c
    }

    /// Doubling in GF(2^128) with Rb = 0x87 (RFC 4493 2.3).
    private static func double(_ hi: UInt64, _ lo: UInt64) -> (UInt64, UInt64) {
        let carry = hi >> 63
        let nh = hi << 1 | lo >> 63
        let nl = lo << 1 ^ (carry == 1 ? 0x87 : 0)
        return (nh, nl)
    }

    /// RFC 4493 2.4 is CBC with a zero IV. The context is not reset to a zero IV per message
    /// (in OpenSSL 3.0 that re-init costs more than MACing a small segment: parameter lookups by
    /// name); it keeps chaining from its last output block V instead, and the message's first
    /// block is XORed with V before it goes in: E(V ^ (M1 ^ V)) = E(0 ^ M1), the zero-IV CBC.
    /// The MAC's last block is encrypted in full, so afterwards the context chains on the full
    /// output T, which becomes the next message's V.
    @inline(__always)
    private func cmac(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, _ out: UnsafeMutableRawPointer) {
        let c = cipher.unsafelyUnwrapped
        var stream = CMACStream(chain: (state.load(fromByteOffset: 32, as: UInt64.self), state.load(fromByteOffset: 40, as: UInt64.self)))
        withUnsafeTemporaryAllocation(byteCount: CMACStream.scratchSize, alignment: 16) { scratch in
            stream.feed(c, a, scratch.baseAddress!)
            stream.feed(c, b, scratch.baseAddress!)
        }
        stream.finish(c, subkeys: state, out: out)
        (state + 32).copyMemory(from: out, byteCount: 16)
    }

    // MARK: the one entry point

    /// MAC over the concatenation `a || b`, writing the untruncated PRF output (`fullLength`
    /// bytes, at most 32) to `out`. Allocates nothing.
    @inline(__always)
    public func compute(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer, into out: UnsafeMutableRawPointer) {
        switch algorithm.kind {
        case .hmacSHA1: hmac(a, b, out, SHA1Engine.self)
        case .hmacSHA256: hmac(a, b, out, SHA256Engine.self)
        case .aesCMAC: cmac(a, b, out)
        }
    }
}

/// A traffic key (RFC 5925 3.2), at most 32 bytes, wiped when dropped.
public struct TrafficKey: ~Copyable {
    let storage: UnsafeMutableRawPointer
    public let count: Int

    public init(count: Int, fill: (UnsafeMutableRawBufferPointer) -> Void) {
        precondition(count <= Spec.maxTrafficKeyLength)
        self.count = count
        storage = UnsafeMutableRawPointer.allocate(byteCount: Spec.maxTrafficKeyLength, alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: Spec.maxTrafficKeyLength)
        fill(UnsafeMutableRawBufferPointer(start: storage, count: count))
    }

    deinit {
        OPENSSL_cleanse(storage, Spec.maxTrafficKeyLength)
        storage.deallocate()
    }

    /// For tests and vectors only.
    public var hexString: String { Array(UnsafeRawBufferPointer(start: storage, count: count)).hexString }
}

/// CMAC's streaming state: CBC over every block but the last, which is held back in `pending`
/// because RFC 4493 2.4 XORs it with K1 (complete) or pads it and XORs with K2 (incomplete).
private struct CMACStream {
    static let scratchSize = 512
    var pending: (UInt64, UInt64) = (0, 0)
    var n = 0
    /// The context's chaining value V (raw bytes), XORed into the message's first block, which
    /// therefore always passes through `pending` (see `MACKey.cmac`).
    let chain: (UInt64, UInt64)
    var first = true

    init(chain: (UInt64, UInt64)) { self.chain = chain }

    @inline(__always)
    static func xor(_ pb: UnsafeMutableRawBufferPointer, _ v: (UInt64, UInt64)) {
        pb.storeBytes(of: pb.load(fromByteOffset: 0, as: UInt64.self) ^ v.0, toByteOffset: 0, as: UInt64.self)
        pb.storeBytes(of: pb.load(fromByteOffset: 8, as: UInt64.self) ^ v.1, toByteOffset: 8, as: UInt64.self)
    }

    @inline(__always)
    static func cbc(_ c: OpaquePointer, _ p: UnsafeRawPointer, _ count: Int, _ scratch: UnsafeMutableRawPointer) {
        var done = 0
        var outl: Int32 = 0
        while done < count {
            let chunk = min(count - done, scratchSize)
            EVP_EncryptUpdate(c, scratch.assumingMemoryBound(to: UInt8.self), &outl,
                              (p + done).assumingMemoryBound(to: UInt8.self), Int32(chunk))
            done += chunk
        }
    }

    @inline(__always)
    mutating func feed(_ c: OpaquePointer, _ piece: UnsafeRawBufferPointer, _ scratch: UnsafeMutableRawPointer) {
        guard piece.count > 0, var d = piece.baseAddress else { return }
        var rem = piece.count
        var filled = n
        var first = self.first
        let chain = self.chain
        withUnsafeMutableBytes(of: &pending) { pb in
            let pend = pb.baseAddress!
            if first || filled > 0 {
                let take = min(16 - filled, rem)
                (pend + filled).copyMemory(from: d, byteCount: take)
                filled += take; d += take; rem -= take
                if filled == 16 && rem > 0 {
                    if first { CMACStream.xor(pb, chain); first = false }
                    CMACStream.cbc(c, pend, 16, scratch)
                    filled = 0
                }
            }
            if rem > 0 {
                let full = (rem - 1) / 16 * 16 // keep 1...16 bytes back
                if full > 0 { CMACStream.cbc(c, d, full, scratch); d += full; rem -= full }
                pend.copyMemory(from: d, byteCount: rem)
                filled = rem
            }
        }
        n = filled
        self.first = first
    }

    @inline(__always)
    mutating func finish(_ c: OpaquePointer, subkeys: UnsafeRawPointer, out: UnsafeMutableRawPointer) {
        let count = n, first = self.first, chain = self.chain
        // K1 at offset 0, K2 at 16 (stored in network order, as the block is).
        let k = (subkeys.load(fromByteOffset: count == 16 ? 0 : 16, as: UInt64.self),
                 subkeys.load(fromByteOffset: count == 16 ? 8 : 24, as: UInt64.self))
        withUnsafeMutableBytes(of: &pending) { pb in
            let pend = pb.baseAddress!
            if count < 16 {
                pend.storeBytes(of: 0x80, toByteOffset: count, as: UInt8.self)
                var i = count + 1
                while i < 16 { pend.storeBytes(of: 0, toByteOffset: i, as: UInt8.self); i += 1 }
            }
            CMACStream.xor(pb, k)
            if first { CMACStream.xor(pb, chain) }
            var outl: Int32 = 0
            EVP_EncryptUpdate(c, out.assumingMemoryBound(to: UInt8.self), &outl, pend.assumingMemoryBound(to: UInt8.self), 16)
        }
    }
}
