// swift-tools-version: 6.1
import PackageDescription

// The toolchain that builds this package. Swift has no stable ABI on Linux, so a
// Swift plugin must come from the same toolchain as the host: both embed this tag
// and the host refuses a Swift plugin whose tag differs.
let swiftBuildTag: String = {
    #if compiler(>=6.5)
    return "swift-6.5-or-later"
    #elseif compiler(>=6.4)
    return "swift-6.4"
    #elseif compiler(>=6.3.4)
    return "swift-6.3.4-or-later"
    #elseif compiler(>=6.3.3)
    return "swift-6.3.3"
    #elseif compiler(>=6.3.2)
    return "swift-6.3.2"
    #elseif compiler(>=6.3.1)
    return "swift-6.3.1"
    #elseif compiler(>=6.3)
    return "swift-6.3.0"
    #else
    return "swift-before-6.3"
    #endif
}()

let strictSwift: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

// Plugins export exactly one symbol, parley_plugin_entry.
func pluginLinkerSettings(_ folder: String) -> [LinkerSetting] {
    [.unsafeFlags(["-Xlinker", "--version-script=\(Context.packageDirectory)/plugins/\(folder)/exports.map"])]
}

let package = Package(
    name: "parley",
    products: [
        .executable(name: "parleyd", targets: ["parleyd"]),
        .executable(name: "parley", targets: ["parley"]),
        .executable(name: "parley-bench", targets: ["parley-bench"]),
        .library(name: "ParleyClient", targets: ["ParleyClient"]),
        .library(name: "parley-storage-sqlite", type: .dynamic, targets: ["StorageSQLite"]),
        .library(name: "parley-storage-lmdb", type: .dynamic, targets: ["StorageLMDB"]),
        .library(name: "parley-storage-log", type: .dynamic, targets: ["StorageLog"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // The stable C ABI: include/parley/plugin.h.
        .target(
            name: "ParleyPluginABI",
            path: "include",
            sources: ["abi.c"],
            publicHeadersPath: ".",
            cSettings: [.define("PARLEY_SWIFT_BUILD_TAG", to: "\"\(swiftBuildTag)\"")]
        ),
        // Loads plugins, checks them, runs their calls on a worker pool, and wraps
        // their tables in Swift facades.
        .target(
            name: "PluginHost",
            dependencies: [
                "ParleyPluginABI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strictSwift
        ),
        // The conformance suite every storage plugin must pass.
        .target(
            name: "StorageConformance",
            dependencies: ["PluginHost"],
            swiftSettings: strictSwift
        ),
        .systemLibrary(name: "CSodium", path: "Sources/CSodium", pkgConfig: "libsodium"),
        .systemLibrary(name: "CMalloc", path: "Sources/CMalloc"),
        // The JSON reader and writer shared by the server and the client (no Foundation).
        .target(name: "ParleyJSON", swiftSettings: strictSwift),
        // The CPUs the process may run on (its affinity mask), for the server and the load generator.
        .target(name: "CPUAffinity", swiftSettings: strictSwift),
        // WebSocket frames read and written in place, for the server and the load generator.
        .target(
            name: "ParleyWebSocket",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strictSwift
        ),
        // Accounts, devices, conversations, sequencing and sync: plain Swift over the storage facade.
        .target(
            name: "ParleyCore",
            dependencies: [
                "PluginHost", "CSodium", "ParleyJSON",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift
        ),
        // The HTTP API (Hummingbird) and the chat listener (its own SwiftNIO handlers for the
        // WebSocket handshake and frames).
        .target(
            name: "ParleyServer",
            dependencies: [
                "PluginHost", "ParleyCore", "ParleyJSON", "ParleyWebSocket", "CPUAffinity",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictSwift
        ),
        // The client library: HTTP API calls and a WebSocket chat session (SwiftNIO).
        .target(
            name: "ParleyClient",
            dependencies: [
                "ParleyJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSwift
        ),
        // The command-line client.
        .executableTarget(
            name: "parley",
            dependencies: [
                "ParleyClient", "ParleyJSON",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strictSwift
        ),
        .executableTarget(
            name: "parleyd",
            dependencies: [
                "PluginHost", "CMalloc",
                "ParleyServer",
                "StorageConformance",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strictSwift
        ),
        // The load generator: starts or targets a parleyd and measures it (docs/BENCHMARKS.md).
        .executableTarget(
            name: "parley-bench",
            dependencies: [
                "ParleyClient", "ParleyJSON", "ParleyWebSocket", "CPUAffinity",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            // The load generator must cost far less than the server it measures: its release build
            // leaves out the runtime's exclusivity checks (up to a seventh of its time in a group
            // run). Debug builds, and every other target, keep them.
            swiftSettings: strictSwift + [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]
        ),

        // plugins/storage-sqlite: the default storage backend, a Swift plugin.
        .systemLibrary(name: "CSQLite", path: "plugins/storage-sqlite/CSQLite", pkgConfig: "sqlite3"),
        .target(
            name: "StorageSQLite",
            dependencies: ["ParleyPluginABI", "CSQLite"],
            path: "plugins/storage-sqlite/Sources",
            swiftSettings: strictSwift,
            linkerSettings: pluginLinkerSettings("storage-sqlite")
        ),
        // plugins/storage-lmdb: a storage backend in plain C on LMDB.
        .target(
            name: "StorageLMDB",
            dependencies: ["ParleyPluginABI"],
            path: "plugins/storage-lmdb",
            exclude: ["README.md", "Makefile", "exports.map"],
            sources: ["storage_lmdb.c"],
            publicHeadersPath: ".",
            cSettings: [.unsafeFlags(["-fvisibility=hidden", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])],
            linkerSettings: [.linkedLibrary("lmdb")] + pluginLinkerSettings("storage-lmdb")
        ),
        // plugins/storage-log: an append-only log with an in-memory key index, in plain C.
        .target(
            name: "StorageLog",
            dependencies: ["ParleyPluginABI"],
            path: "plugins/storage-log",
            exclude: ["README.md", "Makefile", "exports.map"],
            sources: ["storage_log.c"],
            publicHeadersPath: ".",
            cSettings: [.unsafeFlags(["-fvisibility=hidden", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])],
            linkerSettings: [.linkedLibrary("pthread")] + pluginLinkerSettings("storage-log")
        ),

        // The folder every test target keeps its files in (Tests/TestSupport).
        .target(name: "ParleyTestSupport", path: "Tests/TestSupport", swiftSettings: strictSwift),
        .testTarget(
            name: "ServerTests",
            dependencies: [
                "ParleyServer", "ParleyClient", "ParleyCore", "ParleyJSON", "ParleyWebSocket", "PluginHost",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift
        ),
        // Smoke runs of every parley-bench scenario against a started parleyd.
        .testTarget(
            name: "BenchTests",
            dependencies: ["ParleyJSON"],
            swiftSettings: strictSwift
        ),
        .testTarget(
            name: "PluginHostTests",
            dependencies: [
                "PluginHost", "StorageConformance", "ParleyPluginABI", "CSQLite", "ParleyTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: strictSwift
        ),
    ]
)

// Micro-benchmarks of the hot paths (ordo-one/benchmark, Benchmarks/HotPaths): declared only
// when PARLEY_BENCHMARKS is set, so `swift build` and `make test` never resolve or build them.
// Run them with `make microbench` (docs/BENCHMARKS.md).
if Context.environment["PARLEY_BENCHMARKS"] != nil {
    package.dependencies.append(.package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]))
    package.targets.append(
        .executableTarget(
            name: "HotPaths",
            dependencies: [
                "ParleyCore", "ParleyJSON", "ParleyServer", "ParleyWebSocket", "PluginHost",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/HotPaths",
            swiftSettings: strictSwift,
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    )
}
