import TCPAO

// MARK: key serials across reloads

extension ConfigLoader {
    /// Keys unchanged since `previous` (same IDs, algorithm, options flag and secret) keep
    /// their serial, so flows keep their cached traffic keys across a reload; every other key
    /// keeps the serial it was made with, which no other MKT of this process ever had
    /// (`MKT.serial`), so a cached context can never be taken for another key's.
    mutating func assignSerials(_ cfg: inout Configuration, previous: Configuration?) {
        let old = MKTIndex(previous?.allKeys ?? [])
        cfg.keyChains = cfg.keyChains.map { $0.inheritingSerials(from: old) }
    }
}
