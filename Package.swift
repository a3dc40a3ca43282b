// swift-tools-version:6.1
import PackageDescription

// Layers (swift-nio style): a pure TCP-AO core with no I/O, then thin shells.
//   TCPAO        packet views, option editing, checksums, KDF/MAC, SNE, key chains, flow state machine
//   TCPAOConfig  the YAML configuration (parsing, validation with file:line locations); it reads
//                libyaml's events through Yams's CYaml module (YAMLDocument.swift): a C target
//                of Yams that SwiftPM makes visible to dependents (Yams exports only `Yams`);
//                should a Yams release hide it, vendor libyaml as a target of ours)
//   TCPAOPcap    pcap/pcapng reading and the verify-pcap engine
//   TCPAODaemon  NFQUEUE workers, iptables rules, signals, logging, the control socket, metrics
//   tcpaod       the command line
let package = Package(
    name: "tcpaod",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tcpaod", targets: ["tcpaod"]),
        .library(name: "TCPAO", targets: ["TCPAO"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(name: "CLibCrypto", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNetfilterQueue", pkgConfig: "libnetfilter_queue",
                       providers: [.apt(["libnetfilter-queue-dev", "libmnl-dev"])]),
        .target(name: "TCPAO", dependencies: ["CLibCrypto"]),
        .target(name: "TCPAOTestSupport", dependencies: ["TCPAO"]),
        .target(name: "TCPAOConfig", dependencies: [
            "TCPAO", .product(name: "Yams", package: "Yams"),
        ]),
        .target(name: "TCPAOPcap", dependencies: ["TCPAO", "TCPAOConfig"]),
        // glibc's GNU extensions the daemon needs (pipe2, posix_spawn closefrom) for running the
        // firewall tools.
        .target(name: "CSysShim"),
        .target(name: "TCPAODaemon", dependencies: [
            "TCPAO", "TCPAOConfig", "CNetfilterQueue", "CSysShim",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .executableTarget(name: "tcpaod", dependencies: [
            "TCPAO", "TCPAOConfig", "TCPAOPcap", "TCPAODaemon",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Micro-benchmark (scripts/microbench): ns per segment and exact allocation counts.
        .target(name: "CMallocCounter"),
        .executableTarget(name: "tcpaod-microbench", dependencies: ["TCPAO", "TCPAOTestSupport", "CMallocCounter"]),
        .testTarget(name: "TCPAOTests", dependencies: [
            "TCPAO", "TCPAOTestSupport", "CLibCrypto", .product(name: "PropertyBased", package: "swift-property-based"),
        ], resources: [.copy("Resources")]),
        .testTarget(name: "TCPAOConfigTests", dependencies: ["TCPAOConfig", "TCPAO", "TCPAOTestSupport", .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "TCPAODaemonTests", dependencies: ["TCPAODaemon", "TCPAOConfig", "TCPAO"]),
        .testTarget(name: "TCPAOPcapTests", dependencies: ["TCPAOPcap", "TCPAOConfig", "TCPAO", "TCPAOTestSupport"],
                    resources: [.copy("Resources")]),
    ],
    swiftLanguageModes: [.v6]
)
