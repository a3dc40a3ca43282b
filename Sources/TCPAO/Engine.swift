/// Wall-clock seconds (key lifetimes) and monotonic seconds (timeouts), read once per batch by
/// the caller.
public struct EngineClock: Sendable, Equatable {
    public var wall: Int64
    public var mono: UInt32

    public init(wall: Int64, mono: UInt32) {
        self.wall = wall
        self.mono = mono
    }
}

/// What to do with a packet. Exactly one per packet.
public enum Verdict: Sendable, Equatable {
    /// Let it through unchanged.
    case accept
    /// Let it through; its bytes changed and it is now `length` bytes long.
    case acceptModified(length: Int)
    /// Silently discard it (counted).
    case drop(DropReason)
}

/// The TCP-AO engine of one worker: it owns a flow table and turns each packet into a verdict,
/// signing, verifying, stripping and clamping in place. No I/O, no locks on the packet path
/// (the shared `SynchronizedFlows` is written only when a connection is established or ends).
/// Not copyable: it owns the flow table's memory and the keyed MAC contexts.
public struct AOEngine: ~Copyable {
    public private(set) var config: EngineConfig
    var table: FlowTable
    public private(set) var counters: CounterBlock
    let synchronized: SynchronizedFlows?
    let budget: FlowBudget?
    var sweepCursor = 0
    /// Where connections' labels are kept outside the process (nil: memory only).
    public var stateStore: (any FlowStateStore)? = nil
    /// Labels are handed to the store by `savePendingStates`, which the shell calls once a
    /// batch's verdicts are sent, not before the verdict of the segment that changed them: a
    /// ctnetlink round trip then no longer delays the SYN-ACK (both ends write there). The price:
    /// a crash in the microseconds between the two loses that connection's new label: one never
    /// labelled is then dropped (fail closed); one whose SNE quarter had just moved restores
    /// from the quarter before (up to 2^30 plus a window behind, at the edge of RFC 9187's
    /// window; its MACs still decide).
    public var deferStateSaves = false
    /// The connections whose label changed since `savePendingStates` last ran (capacity
    /// reserved once: appending allocates nothing).
    var pendingSaves: [FlowKey] = []
    static let maxPendingSaves = 256
    /// Connections whose keys moved, for the log (`takeKeyEvents`).
    var keyEvents = FlowKeyEventBuffer()

    /// `budget`, when given, bounds the flows of all engines sharing it; each engine's own
    /// table holds at most `config.limits.maxFlows`.
    public init(config: EngineConfig, synchronized: SynchronizedFlows? = nil, budget: FlowBudget? = nil) {
        self.config = config
        table = FlowTable(limit: config.limits.maxFlows)
        counters = CounterBlock(config: config)
        self.synchronized = synchronized
        self.budget = budget
        pendingSaves.reserveCapacity(AOEngine.maxPendingSaves)
    }

    /// Adds a flow within the table's and the shared budget's bounds. When full, a flow that has
    /// ended (lingering for retransmissions) or is still half-open makes room; established
    /// connections are never evicted.
    @inline(__always)
    mutating func addFlow(_ e: consuming FlowEntry) -> Int? {
        if table.count >= table.limit || (budget.map { $0.count >= $0.limit } ?? false) { evictOne() }
        if let b = budget, !b.acquire() { return nil }
        guard let i = table.insert(e) else {
            budget?.release()
            return nil
        }
        return i
    }

    /// Looks at up to 64 flows from the sweep cursor and removes the first that has ended, else
    /// the first half-open one.
    mutating func evictOne() {
        guard table.highWater > 0 else { return }
        var victim: Int? = nil
        var c = sweepCursor
        for _ in 0..<min(64, table.highWater) {
            if c >= table.highWater { c = 0 }
            if table.live[c] {
                let ph = table.entries[c].state.phase
                if ph == .finished || ph == .reset { victim = c; break }
                if victim == nil && (ph == .synSent || ph == .synReceived) { victim = c }
            }
            c += 1
        }
        sweepCursor = c
        if let v = victim {
            counters.bump(.flowsEvicted, peer: Int(table.entries[v].peer))
            // A half-open flow whose label waits for the end of the batch (deferStateSaves):
            // written now, so that the peer's ACK can still restore it from conntrack.
            if deferStateSaves, let l = FlowLabel(table.entries[v].state), table.entries[v].savedLabel != l,
               table.entries[v].saveRetryAt == 0 {
                save(v, l, peer: Int(table.entries[v].peer), now: table.entries[v].state.lastSeen)
            }
            removeFlow(at: v)
        }
    }

    public var flowCount: Int { table.count }
    /// Table slots used at least once (what an expiry sweep walks).
    public var flowTableHighWater: Int { table.highWater }

    /// Switches to a new configuration (SIGHUP). Connections keep their state (ISNs, SNEs,
    /// current_key): new keys reach them through RNextKeyID. A flow whose peer is gone is
    /// dropped. Returns the counters accumulated under the old configuration.
    public mutating func reconfigure(_ new: EngineConfig) -> CounterSnapshot {
        let old = counters.snapshot(config: config)
        config = new
        counters = CounterBlock(config: new)
        for i in 0..<table.highWater where table.live[i] {
            let k = table.entries[i].key
            if let p = new.peerIndex(remote: k.remote, ports: k.localPort, k.remotePort) {
                table.entries[i].peer = Int32(p)
                table.entries[i].connectionKey?.rebase(new.peers[p].keyChain)
            } else {
                removeFlow(at: i)
            }
        }
        return old
    }

    // MARK: the packet path

    /// Decides one packet, editing it in place. `capacity` is the size of the buffer at `p`
    /// (a signed segment grows by the AO option). `hint` is the direction when the caller knows
    /// it (host mode: OUTPUT is egress, INPUT ingress); otherwise the peer prefixes decide.
    /// `mtu` is the MTU toward the peer when known (0 otherwise), for MSS clamping.
    /// `fromLoopback`: the packet arrived on the loopback interface, so this host's own stack
    /// sent it (an ICMP error it raised itself is no off-path attack, RFC 5925 7.8).
    public mutating func process(_ p: UnsafeMutableRawPointer, length: Int, capacity: Int, hint: Direction?,
                                 mtu: Int = 0, fromLoopback: Bool = false, clock: EngineClock) -> Verdict {
        counters.bump(.packets, peer: -1)
        // Passthrough (the benchmark's ceiling): the same I/O as TCP-AO, every packet going
        // back with its verdict, but no TCP-AO work.
        if config.passthrough { return .acceptModified(length: length) }
        let ip: IPHeaderInfo
        do { ip = try IPHeaderInfo.parse(p, count: length) } catch {
            counters.bump(.malformed, peer: -1)
            return .drop(.malformed)
        }
        if ip.protocolNumber != Spec.ipProtoTCP {
            if ip.protocolNumber == Spec.ipProtoICMP || ip.protocolNumber == Spec.ipProtoICMPv6 {
                // The host's own "fragmentation needed" / "packet too big" for a segment that
                // grew past the MTU once signed: its stack must see it to shrink the segments.
                if fromLoopback {
                    counters.bump(.passedICMP, peer: -1)
                    return .accept
                }
                return icmp(p, length: length)
            }
            counters.bump(.passedUnmatched, peer: -1)
            return .accept
        }
        let seg: TCPSegment
        do { seg = try TCPSegment.parseTCP(p, ip: ip) } catch {
            counters.bump(.malformed, peer: -1)
            return .drop(.malformed)
        }
        let direction: Direction
        if let h = hint {
            direction = h
        } else {
            direction = config.peerIndex(remote: seg.dst, ports: seg.srcPort, seg.dstPort) != nil ? .egress : .ingress
        }
        let remote = direction == .egress ? seg.dst : seg.src
        guard hint != nil || config.isProtected(direction == .egress ? seg.src : seg.dst),
              let peer = config.peerIndex(remote: remote, ports: seg.srcPort, seg.dstPort) else {
            counters.bump(.passedUnmatched, peer: -1)
            return .accept
        }
        if direction == .egress {
            return egress(p, capacity: capacity, seg, peer: peer, clock: clock)
        }
        return ingress(p, seg, peer: peer, mtu: mtu, clock: clock)
    }

    // MARK: egress: sign (RFC 5925 7.4)

    mutating func egress(_ p: UnsafeMutableRawPointer, capacity: Int, _ seg: TCPSegment, peer: Int, clock: EngineClock) -> Verdict {
        // A segment that already carries TCP-AO (an application using the kernel's own TCP-AO)
        // cannot get a second one (RFC 5925 2.2).
        if seg.hasAO { return dropped(.aoAlreadyPresent, peer: peer) }
        let key = FlowKey(local: seg.src, remote: seg.dst, localPort: seg.srcPort, remotePort: seg.dstPort)
        let h = table.hash(key)
        var found = table.find(key, hash: h)
        var created = false
        if found == nil {
            var state = FlowState(phase: .synSent, now: clock.mono)
            var restored = false
            if !seg.isSYNWithoutACK {
                // 7.4 step 1.b: a segment of a connection whose SYN we never saw cannot be
                // signed -- unless its state was kept outside (a restart): then it is signed
                // with that state (a wrong label only makes the peer drop it).
                guard let l = loadLabel(key), l.usesOnlyKeysOf(config.peers[peer].keyChain) else { return dropped(.noState, peer: peer) }
                state = l.restoredState(now: clock.mono)
                restored = true
            }
            var e = FlowEntry(key: key, hash: h, peer: peer, state: state)
            if restored { e.savedLabel = FlowLabel(state) }
            guard let i = addFlow(e) else { return dropped(.flowTableFull, peer: peer) }
            counters.bump(restored ? .flowsRestored : .flowsCreated, peer: peer)
            if restored { noteTransition(i, from: nil) }
            found = i
            // A restored flow stays only once tcpaod signed a segment with it.
            created = true
        }
        let i = found.unsafelyUnwrapped
        // A SYN starts a connection: never with another connection's own MKT (RFC 5925 3.1).
        let chain = seg.isSYN ? config.peers[peer].keyChain : flowChain(i, peer: peer)
        let before = table.entries[i].state
        let decision = table.entries[i].state.planEgress(seg, chain: chain, wall: clock.wall, mono: clock.mono)
        noteTransition(i, from: before)
        guard case .sign(let plan) = decision else {
            if case .drop(let r) = decision {
                if created { removeFlow(at: i) } else { table.entries[i].dropped &+= 1 }
                return dropped(r, peer: peer)
            }
            return .accept
        }
        // Fields read in place: binding the MKT would copy it (and retain its master key).
        let alg = chain.keys[plan.mkt].algorithm
        let includeOptions = chain.keys[plan.mkt].includeOptions
        let serial = chain.keys[plan.mkt].serial
        let s: TCPSegment
        do {
            s = try AOOption.insert(p, capacity: capacity, seg, macLength: alg.macLength,
                                    keyID: plan.keyID, rnextKeyID: plan.rnextKeyID)
        } catch {
            // Fail closed (RFC 5925 7.6): no room for TCP-AO means the segment does not leave.
            if created { removeFlow(at: i) } else { table.entries[i].dropped &+= 1 }
            return dropped(error == .noOptionSpace ? .noOptionSpace : .malformed, peer: peer)
        }
        if s.length - seg.length != alg.alignedOptionLength { counters.bump(.optionsTrimmed, peer: peer) }
        if plan.kind == .syn {
            // Send_SYN_traffic_key: our ISN, destination ISN zero (5.2). Used for this SYN only.
            let tk = chain.keys[plan.mkt].master.deriveTrafficKey(KDFContext(src: s.src, dst: s.dst, srcPort: s.srcPort, dstPort: s.dstPort,
                                                                             srcISN: s.seq, dstISN: 0))
            let k = MACKey(algorithm: alg, key: tk)
            AOMAC.sign(p, s, key: k, sne: plan.sne, includeOptions: includeOptions)
        } else {
            // The cached context is this MKT's only if the serial and the algorithm match.
            if table.entries[i].send == nil || table.entries[i].sendSerial != serial || table.entries[i].sendAlgorithm != alg {
                let st = table.entries[i].state
                let tk = chain.keys[plan.mkt].master.deriveTrafficKey(KDFContext(src: s.src, dst: s.dst, srcPort: s.srcPort, dstPort: s.dstPort,
                                                                                 srcISN: st.localISN ?? 0, dstISN: st.remoteISN ?? 0))
                table.entries[i].send = MACKey(algorithm: alg, key: tk)
                table.entries[i].sendSerial = serial
                table.entries[i].sendAlgorithm = alg
            }
            AOMAC.sign(p, s, key: table.entries[i].send!, sne: plan.sne, includeOptions: includeOptions)
        }
        counters.bump(.signed, peer: peer)
        if plan.mkt != chain.pinned { counters.bump(.signed, peer: peer, key: plan.mkt) }
        table.entries[i].signed &+= 1
        persist(i, peer: peer, now: clock.mono)
        releaseKeysIfDone(i, seg)
        return .acceptModified(length: s.length)
    }

    /// A connection that is over keeps its entry for a while (retransmissions, `linger`), not
    /// its keyed MAC contexts: after the RST, or the first segment without FIN once FINs went
    /// both ways (the last ACK), they are dropped (AES-CMAC's go back to the cipher context
    /// pool for the next connection). A retransmission after that derives them again.
    @inline(__always)
    mutating func releaseKeysIfDone(_ i: Int, _ seg: TCPSegment) {
        let ph = table.entries[i].state.phase
        if ph == .reset || (ph == .finished && !seg.isFIN) { table.entries[i].dropKeys() }
    }

    // MARK: ingress: verify and strip (RFC 5925 7.5)

    mutating func ingress(_ p: UnsafeMutableRawPointer, _ seg: TCPSegment, peer: Int, mtu: Int, clock: EngineClock) -> Verdict {
        let key = FlowKey(local: seg.dst, remote: seg.src, localPort: seg.dstPort, remotePort: seg.srcPort)
        let h = table.hash(key)
        let found = table.find(key, hash: h)
        // A SYN starts a connection: never with another connection's own MKT (RFC 5925 3.1).
        let chain = seg.isSYN ? config.peers[peer].keyChain : (found.map { flowChain($0, peer: peer) } ?? config.peers[peer].keyChain)
        guard seg.hasAO else {
            // No TCP-AO from a peer that has keys: dropped, unless the peer is being migrated.
            guard config.peers[peer].acceptKeyMismatch else {
                if let i = found { table.entries[i].dropped &+= 1 }
                return dropped(.missingAO, peer: peer)
            }
            // Migration covers peers that do not sign yet, not connections that already do:
            // once a segment of this flow verified, unsigned ones are dropped (as Linux does).
            if let i = found, table.entries[i].state.lastRecvKeyID != nil {
                table.entries[i].dropped &+= 1
                return dropped(.missingAO, peer: peer)
            }
            // ... also after a restart: the label tells that the peer signed (its RNextKeyID).
            if found == nil, !seg.isSYNWithoutACK, let l = loadLabel(key), l.peerRNextKeyID != nil {
                return dropped(.missingAO, peer: peer)
            }
            if let i = found {
                let before = table.entries[i].state
                table.entries[i].state.commitIngress(seg, keyID: nil, rnextKeyID: nil, chain: chain, wall: clock.wall, mono: clock.mono)
                noteTransition(i, from: before)
            } else if seg.isSYNWithoutACK {
                var st = FlowState(phase: .synReceived, now: clock.mono)
                st.commitIngress(seg, keyID: nil, rnextKeyID: nil, chain: chain, wall: clock.wall, mono: clock.mono)
                if let i = addFlow(FlowEntry(key: key, hash: h, peer: peer, state: st)) {
                    counters.bump(.flowsCreated, peer: peer)
                    noteTransition(i, from: nil)
                }
            }
            counters.bump(.passedUnsigned, peer: peer)
            return .accept
        }
        let keyID = seg.aoKeyID(p)
        let rnext = seg.aoRNextKeyID(p)
        // No state yet: only a SYN may start it, or a state kept outside (a restart, a
        // failover), which is taken only if this segment's MAC verifies with it. The flow is
        // created after the MAC checks out, so SYNs with bad MACs cost no memory.
        var restored = false
        var state: FlowState
        if let i = found {
            state = table.entries[i].state
        } else if seg.isSYNWithoutACK {
            state = FlowState(phase: .synReceived, now: clock.mono)
        } else if let k = chain.acceptKey(recvID: keyID, at: clock.wall), chain.keys[k].algorithm.macLength == seg.aoMACLength {
            guard let l = loadLabel(key), l.usesOnlyKeysOf(chain) else { return dropped(.noState, peer: peer) }
            state = l.restoredState(now: clock.mono)
            restored = true
        } else {
            // No key accepts this KeyID and MAC length: planIngress drops it with the reason,
            // without a label lookup.
            state = FlowState(phase: .established, now: clock.mono)
        }
        let decision = state.planIngress(seg, keyID: keyID, macLength: seg.aoMACLength, chain: chain, wall: clock.wall)
        guard case .verify(let plan) = decision else {
            if case .drop(let r) = decision {
                if let i = found { table.entries[i].dropped &+= 1 }
                return dropped(r, peer: peer)
            }
            return .accept
        }
        let alg = chain.keys[plan.mkt].algorithm
        let includeOptions = chain.keys[plan.mkt].includeOptions
        let serial = chain.keys[plan.mkt].serial
        var ok: Bool
        var fresh: MACKey? = nil
        if plan.kind == .syn {
            // Receive_SYN_traffic_key: the peer's ISN (this SYN's), destination ISN zero.
            let tk = chain.keys[plan.mkt].master.deriveTrafficKey(KDFContext(src: seg.src, dst: seg.dst, srcPort: seg.srcPort, dstPort: seg.dstPort,
                                                                             srcISN: seg.seq, dstISN: 0))
            let k = MACKey(algorithm: alg, key: tk)
            ok = AOMAC.verify(p, seg, key: k, sne: plan.sne, includeOptions: includeOptions)
        } else if let i = found, !seg.isSYN, table.entries[i].recv != nil, table.entries[i].recvSerial == serial,
                  table.entries[i].recvAlgorithm == alg {
            ok = AOMAC.verify(p, seg, key: table.entries[i].recv!, sne: plan.sne, includeOptions: includeOptions)
        } else {
            // Receive_other_traffic_key: for a SYN-ACK the peer's ISN is the segment's own.
            let remoteISN = seg.isSYN ? seg.seq : (state.remoteISN ?? 0)
            let tk = chain.keys[plan.mkt].master.deriveTrafficKey(KDFContext(src: seg.src, dst: seg.dst, srcPort: seg.srcPort, dstPort: seg.dstPort,
                                                                             srcISN: remoteISN, dstISN: state.localISN ?? 0))
            let k = MACKey(algorithm: alg, key: tk)
            ok = AOMAC.verify(p, seg, key: k, sne: plan.sne, includeOptions: includeOptions)
            fresh = consume k
        }
        guard ok else {
            if plan.mkt != chain.pinned { counters.bump(.badMAC, peer: peer, key: plan.mkt) }
            if restored { counters.bump(.restoreFailed, peer: peer) }
            if let i = found { table.entries[i].dropped &+= 1 }
            return dropped(.badMAC, peer: peer)
        }
        var slot = found
        if slot == nil {
            var e = FlowEntry(key: key, hash: h, peer: peer, state: state)
            if restored { e.savedLabel = FlowLabel(state) }
            guard let i = addFlow(e) else {
                return dropped(.flowTableFull, peer: peer)
            }
            counters.bump(restored ? .flowsRestored : .flowsCreated, peer: peer)
            slot = i
        }
        let i = slot.unsafelyUnwrapped
        let before = table.entries[i].state
        table.entries[i].state.commitIngress(seg, keyID: keyID, rnextKeyID: rnext, chain: chain, wall: clock.wall, mono: clock.mono)
        noteTransition(i, from: found == nil ? nil : before)
        if fresh != nil {
            table.entries[i].recv = fresh.take()
            table.entries[i].recvSerial = serial
            table.entries[i].recvAlgorithm = alg
        }
        counters.bump(.verified, peer: peer)
        if plan.mkt != chain.pinned { counters.bump(.verified, peer: peer, key: plan.mkt) }
        noteConnectionKeyUse(i, key: plan.mkt, peer: peer)
        table.entries[i].verified &+= 1
        // 7.5: "remove TCP-AO from the segment" before TCP sees it.
        let s = AOOption.strip(p, seg)
        if s.isSYN && s.mssOffset >= 0 {
            // The protected host sizes its segments by the MSS the peer announced; each will grow
            // by our TCP-AO option, so announce less (and never more than the MTU allows).
            // Room is reserved for the longest key of the chain, so a key rolled in later can
            // be used without exceeding the MTU; current_key stays on keys that fit it.
            let ao = config.peers[peer].maxAlignedOptionLength
            var limit = Int(s.mss(p) ?? 0) - ao
            if mtu > 0 { limit = min(limit, mtu - s.tcpOffset - Spec.tcpMinHeaderLength - ao) }
            if limit > 0 && AOOption.clampMSS(p, s, to: UInt16(limit)) { counters.bump(.mssClamped, peer: peer) }
            if limit > 0 { table.entries[i].state.reservedOptionLength = UInt8(ao) }
        }
        persist(i, peer: peer, now: clock.mono)
        releaseKeysIfDone(i, seg)
        return .acceptModified(length: s.length)
    }

    // MARK: state kept outside the process

    /// The label stored for a connection the engine does not hold (nil without a store).
    mutating func loadLabel(_ key: FlowKey) -> FlowLabel? {
        guard let store = stateStore else { return nil }
        return store.load(key)
    }

    /// Hands a connection's label to the store when it changed: at the SYN-ACK (both ISNs
    /// known), when a direction's SNE or half changes, when current_key or the peer's
    /// RNextKeyID changes. Never per segment otherwise: one comparison.
    /// A label that could not be written is tried again at a later segment, at most once a
    /// second (so a lasting error, e.g. no label space, costs one request per second per flow).
    @inline(__always)
    mutating func persist(_ i: Int, peer: Int, now: UInt32) {
        guard stateStore != nil, let l = labelToSave(i, now: now) else { return }
        if deferStateSaves && pendingSaves.count < AOEngine.maxPendingSaves {
            pendingSaves.append(table.entries[i].key)
            return
        }
        save(i, l, peer: peer, now: now)
    }

    /// The flow's label when it differs from the one saved and a failed save's retry time (at
    /// most once a second) has come; nil otherwise.
    @inline(__always)
    func labelToSave(_ i: Int, now: UInt32) -> FlowLabel? {
        guard let l = FlowLabel(table.entries[i].state), table.entries[i].savedLabel != l,
              table.entries[i].saveRetryAt == 0 || Int32(bitPattern: now &- table.entries[i].saveRetryAt) >= 0 else { return nil }
        return l
    }

    mutating func save(_ i: Int, _ l: FlowLabel, peer: Int, now: UInt32) {
        guard let store = stateStore else { return }
        if store.save(table.entries[i].key, l) {
            table.entries[i].savedLabel = l
            table.entries[i].saveRetryAt = 0
            counters.bump(.statesSaved, peer: peer)
        } else {
            table.entries[i].saveRetryAt = now &+ 1
            counters.bump(.stateSaveFailed, peer: peer)
        }
    }

    /// Hands the labels changed since the last call to the store (`deferStateSaves`): each
    /// connection's current label once, if it is still held and its label still differs from
    /// the one saved.
    public mutating func savePendingStates(now: UInt32) {
        var j = 0
        while j < pendingSaves.count {
            let k = pendingSaves[j]
            j += 1
            // Once per connection: a repeat finds the label saved, or the failed save's retry
            // time not yet come (a store that fails is asked once a second per flow).
            guard let i = table.find(k, hash: table.hash(k)), let l = labelToSave(i, now: now) else { continue }
            save(i, l, peer: Int(table.entries[i].peer), now: now)
        }
        pendingSaves.removeAll(keepingCapacity: true)
    }

    // MARK: ICMP (RFC 5925 7.8)

    mutating func icmp(_ p: UnsafeMutableRawPointer, length: Int) -> Verdict {
        guard let e = ICMPErrorInfo.parse(p, count: length), e.isHardError else {
            counters.bump(.passedICMP, peer: -1)
            return .accept
        }
        // The quoted segment was sent by the protected side: its source is local.
        guard let peer = config.peerIndex(remote: e.quotedDst, ports: e.quotedSrcPort, e.quotedDstPort),
              config.peers[peer].dropICMPHardErrors else {
            counters.bump(.passedICMP, peer: -1)
            return .accept
        }
        let key = FlowKey(local: e.quotedSrc, remote: e.quotedDst, localPort: e.quotedSrcPort, remotePort: e.quotedDstPort)
        var synced = false
        if let i = table.find(key, hash: table.hash(key)) {
            synced = table.entries[i].state.isSynchronized
        } else if let s = synchronized {
            synced = s.contains(key)
        }
        guard synced else {
            counters.bump(.passedICMP, peer: peer)
            return .accept
        }
        return dropped(.icmpHardError, peer: peer)
    }

    // MARK: housekeeping

    /// Forgets flows that ended (after the linger time), handshakes that never completed and
    /// idle connections. Looks at `budget` slots per call (never a slot twice in one call), so
    /// the caller can spread the work.
    public mutating func expire(now: UInt32, budget: Int) {
        let l = config.limits
        var n = 0
        let slots = min(budget, table.highWater)
        while n < slots {
            if sweepCursor >= table.highWater { sweepCursor = 0 }
            let i = sweepCursor
            sweepCursor += 1
            n += 1
            if table.live[i] {
                let st = table.entries[i].state
                let age = now &- st.lastSeen
                let expired: Bool
                switch st.phase {
                case .finished, .reset: expired = now &- st.endedAt >= l.linger
                case .synSent, .synReceived: expired = age >= l.handshakeTimeout
                case .established, .finishing: expired = age >= l.idleTimeout
                }
                if expired {
                    counters.bump(.flowsExpired, peer: Int(table.entries[i].peer))
                    removeFlow(at: i)
                }
            }
        }
    }

    /// The state of one connection (tests, control commands).
    public func flowState(_ k: FlowKey) -> FlowState? {
        table.find(k, hash: table.hash(k)).map { table.entries[$0].state }
    }

    mutating func removeFlow(at i: Int) {
        if table.entries[i].state.isSynchronized { synchronized?.remove(table.entries[i].key) }
        table.remove(at: i)
        budget?.release()
    }

    @inline(__always)
    mutating func noteTransition(_ i: Int, from before: FlowState?) {
        let after = table.entries[i].state
        let was = before?.isSynchronized ?? false
        if was != after.isSynchronized, let s = synchronized {
            if after.isSynchronized { s.insert(table.entries[i].key) } else { s.remove(table.entries[i].key) }
        }
        guard let b = before else { return }
        // New ISNs (the 4-tuple was reused by a new connection): cached traffic keys are stale.
        if b.localISN != after.localISN || b.remoteISN != after.remoteISN {
            table.entries[i].dropKeys()
            table.entries[i].connectionKey = nil // it belonged to the previous connection
        }
        if b.currentSendID != after.currentSendID || b.lastRecvKeyID != after.lastRecvKeyID || b.peerRNextKeyID != after.peerRNextKeyID {
            keyEvents.note(table.entries[i].key, peer: table.entries[i].peer, before: b, after: after)
        }
    }

    /// The connections whose keys moved since the last call (and how many events did not fit
    /// the buffer). Called off the packet path (once a second).
    public mutating func takeKeyEvents() -> (events: [FlowKeyEvent], lost: UInt64) { keyEvents.take() }

    @inline(__always)
    func dropped(_ r: DropReason, peer: Int) -> Verdict {
        counters.bump(r, peer: peer)
        return .drop(r)
    }

    public func snapshot() -> CounterSnapshot { counters.snapshot(config: config) }
}
