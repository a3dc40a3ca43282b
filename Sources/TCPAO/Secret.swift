import CLibCrypto

/// Key material in its own allocation, wiped with OPENSSL_cleanse when the last reference goes.
/// It never prints its bytes: `description` is a fixed string, so a secret cannot end up in a log.
public final class Secret: @unchecked Sendable, CustomStringConvertible, Equatable {
    public let count: Int
    private let storage: UnsafeMutableRawPointer

    public init(_ bytes: some Collection<UInt8>) {
        count = bytes.count
        storage = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 16)
        var i = 0
        for b in bytes { storage.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    deinit {
        OPENSSL_cleanse(storage, max(count, 1))
        storage.deallocate()
    }

    public func withBytes<R: ~Copyable>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage, count: count))
    }

    public var description: String { "<secret: \(count) bytes>" }

    /// Constant-time comparison (the lengths are not secret).
    public static func == (a: Secret, b: Secret) -> Bool {
        a.count == b.count && CRYPTO_memcmp(a.storage, b.storage, a.count) == 0
    }
}
