import Dispatch
import Foundation
import Logging
import Synchronization
import TCPAO
import TCPAOConfig
#if canImport(Glibc)
import Glibc
#endif

/// Everything `tcpaod stats` shows, written by the daemon to its stats file every second.
public struct StatsReport: Codable, Sendable {
    public var pid: Int32
    public var time: Int64
    public var uptime: Int64
    public var mode: String
    public var config: String
    public var reloads: Int
    public var counters: CounterSnapshot
    public var queues: [IOStats]
    public var kernelQueues: [KernelQueueStats]
    public var synchronizedFlows: Int
}

/// `tcpaod run`: binds the queues, installs the rules, decides packets until SIGTERM/SIGINT,
/// reloads on SIGHUP, then removes the rules and gives the last queued packets their verdict.
public final class Daemon: @unchecked Sendable {
    let configPath: String
    var config: Configuration { didSet { configGeneration &+= 1 } }
    /// Changes with every assignment of `config` (reload, runtime key change): the stats
    /// tick's key events look at every peer again after one.
    var configGeneration: UInt64 = 0
    let manageRules: Bool
    var log: Logger
    var workers: [Worker] = []
    let synchronized = SynchronizedFlows()
    let budget: FlowBudget
    let firewall: Firewall
    var rulesInstalled = false
    /// The rules (and ipsets) in place, while `rulesInstalled`: a reload compares with them.
    var installedRules: RuleSet?
    var signals: [DispatchSourceSignal] = []
    var statsTimer: DispatchSourceTimer?
    var watchdog: SystemdWatchdog?
    /// Drops per peer and reason, key events: logged from the counters once a second.
    var events = OperatorEvents()
    let started = Date()
    var reloads = 0
    var lastStatsLog = Date()
    let control = DispatchQueue(label: "tcpaod.control")
    var stopping = false
    /// `tcpaod run --on-exit`: overrides the file's `on-exit` (the systemd unit keeps the rules
    /// on SIGTERM and lets its ExecStopPost decide, see `StopPolicy`).
    let onExitOverride: ExitPolicy?
    /// `tcpaod run --instance`: overrides the file's `instance` (also across reloads).
    let instanceOverride: String?
    /// The control socket (nil: none, e.g. another live process holds the path).
    var controlServer: ControlServer?
    let dispatcher = ControlDispatcher()
    /// What the control socket's threads read: published on the control queue at start and at
    /// each reload, read under the lock (never waits for a reload in progress).
    let published: Mutex<DaemonView>
    /// Where the flow state is kept, and why (`tcpaod status`).
    var flowStateNote = ""
    /// The Prometheus endpoint (nil: no `metrics:`, or its address could not be bound).
    var metricsServer: MetricsServer?
    /// The last counter report (the stats timer's, every second): what a scrape shows, so a
    /// scrape never waits for a worker.
    let latestReport = Mutex<StatsReport?>(nil)
    /// Key changes made over the control socket since the file was loaded; a successful reload
    /// replaces them with the file's keys (logged), a failed one keeps them.
    var runtimeKeyChanges: [String] = []
    /// The configuration file's text as last loaded (start, reload) or written back by a key
    /// change: what the next write-back edits, and what the file must still hold then.
    var configText: String?

    public init(configPath: String, config: Configuration, manageRules: Bool, onExit: ExitPolicy? = nil,
                instance: String? = nil, log: Logger) {
        self.configPath = configPath
        var config = config
        if let instance { config.instance = RuntimePaths.normalized(instance) }
        self.config = config
        self.manageRules = manageRules
        self.onExitOverride = onExit
        self.instanceOverride = instance.map(RuntimePaths.normalized)
        self.log = log
        if !config.instance.isEmpty { self.log[metadataKey: "instance"] = "\(config.instance)" }
        firewall = Firewall(backend: config.firewall, instance: config.instance)
        budget = FlowBudget(limit: config.limits.maxFlows)
        published = Mutex(DaemonView(config: config, reloads: 0, loadedAt: Int64(Date().timeIntervalSince1970), flowState: "", controlSocket: nil,
                                     metrics: nil, lastReloadSucceeded: true))
    }

    /// Starts everything; returns once running (the caller then parks in dispatchMain()).
    /// Throws with nothing left behind (no rules, no bound queue) when any step fails.
    public func start() throws {
        let engineConfig = config.engineConfig()
        // Read again for write-back: a change in between is caught when a key change is
        // written (the edited text must load as the running keys plus the change).
        configText = try? ConfigFileWriter.contents(path: configPath)
        // Decided before the workers exist: each worker of a conntrack-backed daemon opens its
        // own ctnetlink socket for its flows' labels.
        resolveFlowState()
        do {
            let offset = config.flowState == .conntrack ? config.conntrackLabelOffset : nil
            for q in config.queues {
                workers.append(try Worker(queue: q, config: engineConfig, hostMode: config.mode == .host,
                                          synchronized: synchronized, budget: budget, labelOffset: offset, log: log))
            }
        } catch {
            workers.forEach { $0.socket.close() }
            workers = []
            throw error
        }
        if manageRules {
            // The queues are bound: the rules (new, or an earlier run's taken over in place)
            // have a live reader from the moment they change. See Firewall.install.
            do {
                let rules = try installRules()
                rulesInstalled = true
                installedRules = rules
            } catch {
                workers.forEach { $0.socket.close() }
                workers = []
                throw error
            }
        }
        let marks = RuleSet.spreadMarks(config)
        workers.forEach { $0.spreadMarks = marks; $0.start() }
        startControl()
        startMetrics()
        publish(loadedAt: Int64(Date().timeIntervalSince1970))
        installSignalHandlers()
        startStats()
        let peers = Daemon.listed(config.peers) { "\($0.name) (\($0.prefix)\($0.ports.isEmpty ? "" : " ports " + $0.ports.map(String.init).joined(separator: ",")))" }
        log.info("tcpaod running: mode \(config.mode.rawValue), flow state \(config.flowState == .conntrack ? "conntrack (label bits \(config.conntrackLabelBitRange.lowerBound)-\(config.conntrackLabelBitRange.upperBound - 1))" : "memory"), queues \(config.queues.lowerBound)-\(config.queues.upperBound), rules \(manageRules ? "installed (\(config.firewall.rawValue))" : "not managed (--no-rules)"), peers: \(peers.joined(separator: "; "))")
        SystemdNotify.send("READY=1\nSTATUS=protecting \(config.peers.count) peer(s)")
        watchdog = SystemdWatchdog(workers: workers, log: log)
        watchdog?.start()
    }

    /// Installs the rules; where the kernel refuses what an optional feature needs, without it
    /// (logged): the HMARK spread (`queue-spread: connection` becomes `addresses`) and the
    /// connlabel match (`flow-state: conntrack` becomes `memory`). Each tried alone first, so
    /// that only the one the kernel lacks is given up.
    func installRules() throws -> RuleSet {
        let first: any Error
        let wanted = RuleSet(config)
        do { try firewall.install(wanted); return wanted } catch { first = error }
        let spread = RuleSet.spreadMarks(config) != nil, labels = config.flowState == .conntrack
        var tries: [Configuration] = []
        var c = config
        if spread { c.queueSpread = .addresses; tries.append(c); c = config }
        if labels { c.flowState = .memory; tries.append(c) }
        if spread && labels { c.queueSpread = .addresses; tries.append(c) }
        for t in tries {
            let rules = RuleSet(t)
            guard (try? firewall.install(rules)) != nil else { continue }
            if t.queueSpread != config.queueSpread {
                log.warning("queue-spread: connection: the rules with HMARK were refused (\(first)); connections are spread over the queues by address only")
            }
            if t.flowState != config.flowState {
                log.warning("flow-state: conntrack: the rules with the connlabel match were refused (\(first)); \(ConntrackRequirements.fallback)")
                flowStateNote = "the rules with the connlabel match were refused (\(first))"
            }
            config = t
            return rules
        }
        throw first
    }

    /// `flow-state: conntrack` where it cannot work becomes `memory`, said plainly in the log.
    /// (The rules then carry no connlabel match; reloads keep the value chosen here.)
    func resolveFlowState() {
        guard config.flowState == .conntrack else {
            flowStateNote = "configured (flow-state: memory): connections do not survive a restart"
            log.info("flow-state: memory: \(ConntrackRequirements.fallback)")
            return
        }
        var problems = ConntrackRequirements.problems(backend: config.firewall, needIPv6: config.peers.contains { $0.prefix.address.isV6 })
        if case .unavailable(let reason) = ConntrackLabels.probe() { problems.append("ctnetlink: \(reason)") }
        guard problems.isEmpty else {
            flowStateNote = "flow-state: conntrack cannot be used here: \(problems.joined(separator: "; "))"
            log.warning("flow-state: conntrack cannot be used here: \(problems.joined(separator: "; ")); \(ConntrackRequirements.fallback)")
            config.flowState = .memory
            return
        }
        let r = config.conntrackLabelBitRange
        flowStateNote = "conntrack labels (bits \(r.lowerBound)-\(r.upperBound - 1)): connections survive a restart"
    }

    func installSignalHandlers() {
        for s in [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2] {
            signal(s, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: s, queue: control)
            src.setEventHandler { [unowned self] in
                switch s {
                case SIGHUP: reload()
                case SIGUSR1: logStats(force: true)
                default: stop(signal: s)
                }
            }
            src.resume()
            signals.append(src)
        }
    }

    // MARK: reload (SIGHUP)

    func reload() {
        SystemdNotify.send("RELOADING=1\nMONOTONIC_USEC=\(DispatchTime.now().uptimeNanoseconds / 1000)")
        defer { SystemdNotify.send("READY=1") }
        let (newConfig, diags, text) = ConfigLoader.loadKeepingText(path: configPath, now: Int64(Date().timeIntervalSince1970), previous: config)
        for d in diags { if d.severity == .error { log.error("\(d.description)") } else { log.warning("\(d.description)") } }
        guard var c = newConfig else {
            log.error("reload of \(configPath) failed (\(diags.errors.count) error(s)); still running with the previous configuration")
            published.withLock { $0.lastReloadSucceeded = false }
            SystemdNotify.send("STATUS=reload failed; running the previous configuration")
            return
        }
        var restartOnly: [String] = []
        if let i = instanceOverride { c.instance = i }
        if c.instance != config.instance { restartOnly.append("instance"); c.instance = config.instance }
        if c.mode != config.mode { restartOnly.append("mode"); c.mode = config.mode }
        if c.queue != config.queue || c.threads != config.threads { restartOnly.append("queue/threads"); c.queue = config.queue; c.threads = config.threads }
        if c.firewall != config.firewall { restartOnly.append("firewall"); c.firewall = config.firewall }
        if c.limits.maxFlows != config.limits.maxFlows { restartOnly.append("max-flows"); c.limits.maxFlows = config.limits.maxFlows }
        if c.metrics != config.metrics { restartOnly.append("metrics"); c.metrics = config.metrics }
        if c.queueSpread != config.queueSpread { restartOnly.append("queue-spread"); c.queueSpread = config.queueSpread }
        if c.flowState != config.flowState || c.conntrackLabelOffset != config.conntrackLabelOffset {
            // Also keeps a start-up fallback to memory (conntrack unusable) across reloads.
            if c.conntrackLabelOffset != config.conntrackLabelOffset || (c.flowState == .memory) { restartOnly.append("flow-state") }
            c.flowState = config.flowState; c.conntrackLabelOffset = config.conntrackLabelOffset
        }
        if !restartOnly.isEmpty { log.warning("reload: \(restartOnly.joined(separator: ", ")) change only on restart; applying the rest") }
        // The engines learn the new peers and keys before the rules send them new traffic; if
        // the rules cannot be replaced (atomically: the old ones stay), the engines go back.
        workers.forEach { $0.reconfigure(c.engineConfig()) }
        let newRules = manageRules ? RuleSet(c) : nil
        if let newRules, let installedRules, newRules != installedRules {
            do { try firewall.replace(installedRules, with: newRules) } catch {
                log.error("reload: replacing the rules failed (\(error)); still running with the previous configuration")
                let back = config.engineConfig()
                workers.forEach { $0.reconfigure(back) }
                published.withLock { $0.lastReloadSucceeded = false }
                return
            }
            self.installedRules = newRules
        }
        var previous: [String: PeerPolicy] = [:]
        for p in config.peers where previous[p.name] == nil { previous[p.name] = p }
        for p in c.peers {
            // Established connections reserved option room for the old chain's longest key
            // (their MSS was lowered by that much); a longer key is used only by new ones.
            guard let before = previous[p.name],
                  p.keyChain.longestOptionLength > before.keyChain.longestOptionLength else { continue }
            let longer = p.keyChain.keys.filter { $0.algorithm.alignedOptionLength > before.keyChain.longestOptionLength }
            log.warning("reload: peer \(p.name): \(longer.map { "\($0)" }.joined(separator: ", ")) needs a \(p.keyChain.longestOptionLength)-byte TCP-AO option; connections opened before this reload reserved \(before.keyChain.longestOptionLength) bytes, so they keep sending with a key that fits while one may send; new connections can use it")
        }
        if !runtimeKeyChanges.isEmpty {
            log.notice("reload: the keys of \(configPath) replace \(runtimeKeyChanges.count) runtime key change(s): \(runtimeKeyChanges.joined(separator: "; "))")
            runtimeKeyChanges = []
        }
        // The replaced configuration (a fleet's is 50,000 chains whose keys are wiped as they
        // go) is let go off the control queue (published views and workers drop theirs too).
        let replaced = config
        config = c
        DispatchQueue.global(qos: .utility).async { withExtendedLifetime(replaced) {} }
        configText = text
        reloads += 1
        let now = Int64(Date().timeIntervalSince1970)
        publish(loadedAt: now)
        let sending = Daemon.listed(c.peers) { p in "\(p.name): \(p.keyChain.preferredSendKey(at: now).map { "\(p.keyChain.keys[$0])" } ?? "no key")" }
        log.notice("configuration reloaded; preferred keys: \(sending.joined(separator: "; "))")
    }

    /// Peers named in a log line: all of them up to `listedPeers`, then the first ones and a
    /// count (a fleet of 50,000 peers would make a line of megabytes; `tcpaod status` and
    /// `tcpaod check` list them all).
    static let listedPeers = 20

    static func listed(_ peers: [PeerPolicy], _ describe: (PeerPolicy) -> String) -> [String] {
        guard peers.count > listedPeers else { return peers.map(describe) }
        return peers.prefix(listedPeers).map(describe) + ["and \(peers.count - listedPeers) more"]
    }

    // MARK: stop (SIGTERM, SIGINT; SIGUSR2: stop for a restart)

    /// SIGTERM/SIGINT: a deliberate stop, the rules go (unless on-exit: keep-rules, from the
    /// file or `--on-exit`). SIGUSR2: a restart follows, the rules stay so that protected
    /// traffic is dropped, never sent unsigned, until the next tcpaod takes them over.
    func stop(signal s: Int32) {
        guard !stopping else { return }
        stopping = true
        let restart = s == SIGUSR2
        let keep = restart || (onExitOverride ?? config.onExit) == .keepRules
        log.notice(restart ? "stopping for a restart (SIGUSR2): the rules stay" : "stopping (signal \(s))")
        SystemdNotify.send("STOPPING=1")
        statsTimer?.cancel()
        watchdog?.stop() // systemd disarms it for a stop too; the workers are about to end their loops
        controlServer?.stop()
        metricsServer?.stop()
        // Rules first, so that nothing new is queued; then the last verdicts.
        if rulesInstalled && !keep {
            firewall.remove()
            rulesInstalled = false
        }
        for w in workers { w.stop() }
        writeStats()
        logStats(force: true)
        if rulesInstalled {
            let why = restart ? "SIGUSR2" : onExitOverride == .keepRules ? "--on-exit keep-rules" : "on-exit: keep-rules"
            log.notice("rules kept (\(why)): protected traffic is dropped until tcpaod runs again (`tcpaod rules --remove` clears them)")
        }
        log.notice("stopped")
        exit(0)
    }

    // MARK: counters

    func startStats() {
        let t = DispatchSource.makeTimerSource(queue: control)
        t.schedule(deadline: .now() + 1, repeating: 1)
        var tick = 0
        t.setEventHandler { [unowned self] in
            let r = report()
            latestReport.withLock { $0 = r }
            writeStats(r)
            logStats(force: false)
            var moved: [FlowKeyEvent] = []
            var lost: UInt64 = 0
            for w in workers {
                let (e, l) = w.takeKeyEvents()
                moved += e
                lost += l
            }
            for e in events.observe(r.counters, peers: config.peers, now: r.time, generation: configGeneration) + events.keyMoves(moved, lost: lost, peers: config.peers) {
                log.log(level: e.level, "\(e.message)", metadata: e.metadata.mapValues { .string($0) })
            }
            // systemctl status shows it (every 5 s: a datagram to systemd, nothing when not under it).
            if tick % 5 == 0 { SystemdNotify.send("STATUS=" + Daemon.statusLine(r, peers: config.peers.count)) }
            tick += 1
        }
        statsTimer = t
        t.resume()
    }

    public func report() -> StatsReport {
        var total = CounterSnapshot()
        var queues: [IOStats] = []
        for w in workers {
            let (c, io) = w.snapshot()
            total.add(c)
            queues.append(io)
        }
        let mine = Set(config.queues.map(Int.init))
        return StatsReport(pid: getpid(), time: Int64(Date().timeIntervalSince1970), uptime: Int64(-started.timeIntervalSinceNow),
                           mode: config.mode.rawValue, config: configPath, reloads: reloads, counters: total, queues: queues,
                           kernelQueues: KernelQueueStats.read().filter { mine.contains($0.queue) },
                           synchronizedFlows: synchronized.count)
    }

    /// The counter summary systemd shows (STATUS=), e.g. "2 peer(s), 3 flows; 1200 signed,
    /// 1180 verified, 2 dropped (bad-mac 1, missing-ao 1)".
    static func statusLine(_ r: StatsReport, peers: Int) -> String {
        let flows = r.queues.reduce(0) { $0 + $1.flows }
        let drops = r.counters.total.filter { $0.key.hasPrefix("dropped-") && $0.value > 0 }.sorted { $0.key < $1.key }
        let dropped = drops.reduce(UInt64(0)) { $0 + $1.value }
        let why = drops.isEmpty ? "" : " (" + drops.map { "\($0.key.dropFirst(8)) \($0.value)" }.joined(separator: ", ") + ")"
        return "\(peers) peer(s), \(flows) flow\(flows == 1 ? "" : "s"); \(r.counters["signed"]) signed, \(r.counters["verified"]) verified, \(dropped) dropped\(why)"
    }

    func writeStats(_ report: StatsReport? = nil) {
        let r = report ?? self.report()
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        guard let data = try? enc.encode(r) else { return }
        let url = URL(fileURLWithPath: config.statsFile)
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let tmp = url.path + ".tmp"
        if FileManager.default.createFile(atPath: tmp, contents: data, attributes: [.posixPermissions: 0o644]) {
            _ = rename(tmp, url.path)
        }
    }

    func logStats(force: Bool) {
        guard force || (config.statsInterval > 0 && -lastStatsLog.timeIntervalSinceNow >= Double(config.statsInterval)) else { return }
        lastStatsLog = Date()
        let c = report().counters
        let drops = c.total.filter { $0.key.hasPrefix("dropped-") && $0.value > 0 }.sorted { $0.key < $1.key }
            .map { "\($0.key.dropFirst(8))=\($0.value)" }
        log.info("packets=\(c["packets"]) signed=\(c["signed"]) verified=\(c["verified"]) dropped: \(drops.isEmpty ? "none" : drops.joined(separator: " "))")
    }
}
