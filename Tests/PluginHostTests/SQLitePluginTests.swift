// What the SQLite plugin promises operators beyond the conformance suite.
import CSQLite
import Foundation
import PluginHost
import Testing

@Suite("storage-sqlite", .timeLimit(.minutes(3)))
struct SQLitePluginTests {
    private func open(_ configuration: [String: String], pool: PluginWorkerPool) throws -> StorageBackend {
        let library = try PluginLibrary.load(path: try TestSupport.builtPlugin("parley-storage-sqlite"))
        return try StorageBackend(instance: PluginInstance(library: library, configuration: configuration, pool: pool, logger: TestSupport.logger))
    }

    private func createFailure(_ configuration: [String: String]) throws -> String {
        let pool = PluginWorkerPool(threads: 1, capacity: 4)
        defer { pool.shutdown() }
        do {
            _ = try open(configuration, pool: pool)
        } catch let error as PluginLoadError {
            #expect(error.code == "plugin.create_failed")
            return error.description
        }
        throw TestFailure("the plugin started with \(configuration)")
    }

    /// Runs SQL directly on a database file, as another program would.
    private func execute(_ sql: String, on path: String) throws {
        var db: OpaquePointer?
        guard sqlite3_open(path, &db) == SQLITE_OK else { throw TestFailure("cannot open \(path)") }
        defer { sqlite3_close(db) }
        guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw TestFailure(String(cString: sqlite3_errmsg(db))) }
    }

    @Test func missingPathNamesTheKey() throws {
        #expect(try createFailure([:]).contains("'path'"))
    }

    @Test func invalidSettingsNameTheKeyAndValue() throws {
        let folder = try TestSupport.scratchFolder().path
        let synchronous = try createFailure(["path": "\(folder)/db", "synchronous": "sometimes"])
        #expect(synchronous.contains("'synchronous'") && synchronous.contains("sometimes"))
        let group = try createFailure(["path": "\(folder)/db", "group_commit_max_batches": "0"])
        #expect(group.contains("'group_commit_max_batches'"))
        let checkpoint = try createFailure(["path": "\(folder)/db", "checkpoint_pages": "10"])
        #expect(checkpoint.contains("'checkpoint_pages'") && checkpoint.contains("10"))
    }

    @Test func missingFolderIsAClearError() throws {
        #expect(try createFailure(["path": "/nonexistent-parley-folder/db"]).contains("cannot open database /nonexistent-parley-folder/db"))
    }

    @Test func refusesADatabaseWithANewerSchema() async throws {
        let path = try TestSupport.scratchFolder().appendingPathComponent("db").path
        let pool = PluginWorkerPool(threads: 2, capacity: 16)
        defer { pool.shutdown() }
        let storage = try open(["path": path], pool: pool)
        try await storage.apply([.put(StorageKey(table: "t", partition: [], sort: []), value: [1])])
        await storage.instance.shutdown()
        try execute("PRAGMA user_version=2", on: path)
        let message = try createFailure(["path": path])
        #expect(message.contains("schema version 2") && message.contains("upgrade"))
    }

    @Test func refusesAnotherApplicationsDatabase() throws {
        let path = try TestSupport.scratchFolder().appendingPathComponent("other.db").path
        try execute("PRAGMA application_id=12345; CREATE TABLE notes(x)", on: path)
        #expect(try createFailure(["path": path]).contains("another application"))
    }

    @Test func databaseIsInWALModeAfterOpening() async throws {
        let path = try TestSupport.scratchFolder().appendingPathComponent("db").path
        let pool = PluginWorkerPool(threads: 2, capacity: 16)
        defer { pool.shutdown() }
        let storage = try open(["path": path], pool: pool)
        try await storage.apply([.put(StorageKey(table: "t", partition: [], sort: []), value: [1])])
        #expect(FileManager.default.fileExists(atPath: path + "-wal"))
        await storage.instance.shutdown()
    }

    /// Checkpoints run beside the writer: under a steady stream of commits the log stays
    /// within its hard bound (8 × checkpoint_pages) and every row stays readable.
    @Test func backgroundCheckpointsKeepTheLogBounded() async throws {
        let path = try TestSupport.scratchFolder().appendingPathComponent("db").path
        let pool = PluginWorkerPool(threads: 4, capacity: 64)
        defer { pool.shutdown() }
        let storage = try open(["path": path, "checkpoint_pages": "100"], pool: pool)
        let value = [UInt8](repeating: 7, count: 2_000)
        var largestLog: UInt64 = 0
        for batch in 0..<200 {
            // Each batch of 10 rows of 2 KB adds about 5 pages to the log: 1,000 pages in all.
            try await storage.apply((0..<10).map { row in
                .put(StorageKey(table: "t", partition: Array("p\(batch % 7)".utf8), sort: Array("\(batch)-\(row)".utf8)), value: value)
            })
            let size = (try? FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? UInt64) ?? 0
            largestLog = max(largestLog, size)
        }
        // 8 × 100 pages of 4 KiB plus a commit's worth of frames above the bound.
        #expect(largestLog < 900 * 4_120, "the log grew to \(largestLog) bytes")
        for batch in [0, 99, 199] {
            let rows = try await storage.scan(table: Array("t".utf8), partition: Array("p\(batch % 7)".utf8), StorageScan(lower: .inclusive(Array("\(batch)-".utf8)), limit: 10))
            #expect(rows.count == 10 && rows.allSatisfy { $0.value == value })
        }
        await storage.instance.shutdown()
    }

    /// The hot path's batches are built in place: their bytes must equal the plain form's,
    /// and a broken limit must fail the batch before the plugin sees it.
    @Test func batchesBuiltInPlaceStoreTheSameBytes() async throws {
        let path = try TestSupport.scratchFolder().appendingPathComponent("db").path
        let pool = PluginWorkerPool(threads: 2, capacity: 16)
        defer { pool.shutdown() }
        let storage = try open(["path": path], pool: pool)
        func applyHere(_ batch: StorageBatch) async throws -> Result<StorageBatchResult, PluginCallError> {
            await withCheckedContinuation { continuation in
                do throws(PluginCallError) {
                    try storage.onWorker { storage.applyHere(batch) { continuation.resume(returning: $0) } }
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        let batch = StorageBatch(capacity: 1)
        batch.add(.put, table: Array("t".utf8), partition: .utf8("p"), sort: .joined("alice", "x"), value: .sequences(1, -2))
        batch.add(.putIfAbsent, table: Array("t".utf8), partition: .utf8("p"), sort: .sequence(258), value: .bytes([9, 8]))
        batch.add(.delete(StorageKey(table: "t", partition: Array("p".utf8), sort: Array("gone".utf8))))
        #expect(batch.count == 3)
        _ = try await applyHere(batch).get()
        #expect(try await storage.get(StorageKey(table: "t", partition: Array("p".utf8), sort: Array("alice".utf8) + [0, UInt8(ascii: "x")])) == [0, 0, 0, 0, 0, 0, 0, 1] + [255, 255, 255, 255, 255, 255, 255, 254])
        #expect(try await storage.get(StorageKey(table: "t", partition: Array("p".utf8), sort: [0, 0, 0, 0, 0, 0, 1, 2])) == [9, 8])

        let tooLarge = StorageBatch()
        tooLarge.add(.put, table: Array("t".utf8), partition: .utf8("p"), sort: .utf8("big"), value: .bytes([UInt8](repeating: 0, count: StorageLimits.maxValueBytes + 1)))
        guard case .failure(.invalidArgument(let message)) = try await applyHere(tooLarge) else { throw TestFailure("an oversize value was accepted") }
        #expect(message.contains("exceeds"))
        #expect(try await storage.get(StorageKey(table: "t", partition: Array("p".utf8), sort: Array("big".utf8))) == nil)
        await storage.instance.shutdown()
    }
}
