// Every storage plugin shipped with Parley passes the conformance suite.
import Foundation
import PluginHost
import StorageConformance
import Testing

/// Runs the conformance suite on a plugin file with a fresh database and returns the failures.
func conformanceFailures(of path: String, checkRestart: Bool = true, configuration extra: [String: String] = [:]) async throws -> [String] {
    let folder = try TestSupport.scratchFolder()
    defer { try? FileManager.default.removeItem(at: folder) }
    let library = try PluginLibrary.load(path: path)
    let pool = PluginWorkerPool(threads: 4, capacity: 1024)
    defer { pool.shutdown() }
    let configuration = ["path": folder.appendingPathComponent("db").path].merging(extra) { $1 }
    let suite = StorageConformanceSuite(checkRestart: checkRestart) {
        try StorageBackend(instance: PluginInstance(library: library, configuration: configuration, pool: pool, logger: TestSupport.logger))
    }
    let results = await suite.run()
    #expect(results.count >= StorageConformanceSuite.checks.count)
    return results.compactMap { result in result.failure.map { "\(result.name): \($0)" } }
}

@Suite("Storage conformance", .timeLimit(.minutes(3)))
struct StorageConformanceTests {
    @Test(arguments: ["parley-storage-sqlite", "parley-storage-lmdb", "parley-storage-log"])
    func shippedPluginPassesTheSuite(_ plugin: String) async throws {
        let failures = try await conformanceFailures(of: try TestSupport.builtPlugin(plugin))
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    @Test func sqlitePluginPassesWithSynchronousNormal() async throws {
        let failures = try await conformanceFailures(of: try TestSupport.builtPlugin("parley-storage-sqlite"), configuration: ["synchronous": "normal", "group_commit_max_batches": "3"])
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    /// A C plugin's source and what its one `cc` command needs.
    struct PlainCPlugin: Sendable, CustomTestStringConvertible {
        var source: String
        var libraries: [String]
        var configuration: [String: String] = [:]
        var testDescription: String { source }
    }

    /// The C plugins build with one `cc` command, as a plugin author would, and pass too.
    @Test(arguments: [
        PlainCPlugin(source: "plugins/storage-lmdb/storage_lmdb.c", libraries: ["-llmdb"]),
        // Small segments and eager compaction, so the suite also runs across rollovers.
        PlainCPlugin(source: "plugins/storage-log/storage_log.c", libraries: ["-lpthread"], configuration: ["segment_mb": "1", "compact_dead_ratio": "0.1", "group_commit_max_batches": "3"]),
    ])
    func cPluginBuiltWithPlainCCPassesTheSuite(_ plugin: PlainCPlugin) async throws {
        let output = try TestSupport.scratchFolder().appendingPathComponent("plugin.so")
        let source = TestSupport.packageRoot.appendingPathComponent(plugin.source).path
        try TestSupport.compilePlugin([source], include: TestSupport.liveInclude, output: output, libraries: plugin.libraries)
        let failures = try await conformanceFailures(of: output.path, configuration: plugin.configuration)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    @Test func parleydPluginTestReportsEveryCheck() throws {
        let result = try TestSupport.run(TestSupport.parleyd, ["plugin", "test", try TestSupport.builtPlugin("parley-storage-sqlite")])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("\(StorageConformanceSuite.checks.count + 1) passed, 0 failed"))
    }

    @Test func parleydPluginTestFailsForAnInMemoryBackend() throws {
        let output = try TestSupport.scratchFolder().appendingPathComponent("memory.so")
        try TestSupport.compilePlugin([TestSupport.fixtures.appendingPathComponent("abi-v1.0/memory_storage.c").path], include: TestSupport.fixtures.appendingPathComponent("abi-v1.0").path, output: output)
        let result = try TestSupport.run(TestSupport.parleyd, ["plugin", "test", output.path])
        #expect(result.status != 0)
        #expect(result.output.contains("FAIL  acknowledged writes survive a restart"))
    }
}
