import TCPAO
#if canImport(Glibc)
import Glibc
#endif

/// The engine's `FlowStateStore` in conntrack: each connection's label (`FlowLabel`) lives in
/// tcpaod's bits of its conntrack entry's labels, read and written through ctnetlink
/// (`ConntrackLabels`). One per worker, used only on that worker's thread; its buffers are
/// allocated once. Writes set only tcpaod's bits (`CTA_LABELS_MASK`): other users of the label
/// space keep theirs.
final class ConntrackFlowStore: FlowStateStore {
    let ct: ConntrackLabels
    let offset: Int
    private let labels: UnsafeMutableRawPointer
    private let mask: UnsafeMutableRawPointer
    /// The last failed request's -errno, and how many failed since it was last reported.
    private(set) var lastError: Int32 = 0
    var failures: UInt64 = 0

    init(offset: Int, timeoutMilliseconds: Int = 200) throws {
        precondition((0...FlowLabel.maxOffset).contains(offset))
        ct = try ConntrackLabels(timeoutMilliseconds: timeoutMilliseconds)
        self.offset = offset
        labels = .allocate(byteCount: ConntrackLabels.labelBytes, alignment: 8)
        mask = .allocate(byteCount: ConntrackLabels.labelBytes, alignment: 8)
        mask.initializeMemory(as: UInt8.self, repeating: 0, count: ConntrackLabels.labelBytes)
        FlowLabel.mask(offset: offset, into: mask)
    }

    deinit {
        ct.close()
        labels.deallocate()
        mask.deallocate()
    }

    func load(_ key: FlowKey) -> FlowLabel? {
        let r = ct.read(src: key.remote, srcPort: key.remotePort, dst: key.local, dstPort: key.localPort, into: labels)
        guard r == 0 else {
            // ENOENT: no entry (expired, or never had one): nothing to restore.
            if r != -ENOENT { note(r) }
            return nil
        }
        return FlowLabel.decode(labels, offset: offset)
    }

    func save(_ key: FlowKey, _ label: FlowLabel) -> Bool {
        labels.initializeMemory(as: UInt8.self, repeating: 0, count: ConntrackLabels.labelBytes)
        label.encode(offset: offset, into: labels)
        let r = ct.write(src: key.local, srcPort: key.localPort, dst: key.remote, dstPort: key.remotePort, labels: labels, mask: mask)
        guard r == 0 else {
            note(r)
            return false
        }
        return true
    }

    private func note(_ r: Int32) {
        lastError = r
        failures &+= 1
    }
}
