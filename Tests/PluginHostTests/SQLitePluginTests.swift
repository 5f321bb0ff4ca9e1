// What the SQLite plugin promises operators beyond the conformance suite.
import CSQLite
import Foundation
import PluginHost
import Testing

@Suite("storage-sqlite")
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
}
