/// A TCP connection as seen from the protected side.
public struct FlowKey: Hashable, Sendable, Codable, CustomStringConvertible {
    public var local: IPAddress
    public var remote: IPAddress
    public var localPort: UInt16
    public var remotePort: UInt16

    public init(local: IPAddress, remote: IPAddress, localPort: UInt16, remotePort: UInt16) {
        self.local = local
        self.remote = remote
        self.localPort = localPort
        self.remotePort = remotePort
    }

    public var description: String {
        let l = local.isV6 ? "[\(local)]" : "\(local)"
        let r = remote.isV6 ? "[\(remote)]" : "\(remote)"
        return "\(l):\(localPort) <-> \(r):\(remotePort)"
    }
}
