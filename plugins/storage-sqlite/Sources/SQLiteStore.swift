// The storage instance: configuration, schema, reads on pooled connections,
// writes through the group-commit writer.
import ParleyPluginABI
import CSQLite
import Glibc
import Synchronization

/// The schema version this plugin writes; a newer database is refused.
let schemaVersion: Int64 = 1
/// "PRLY": marks the file as a Parley database.
let applicationID: Int64 = 0x5052_4C59

final class SQLiteStore: @unchecked Sendable {
    let host: HostCalls
    let path: String
    private let readers = Mutex<[SQLiteConnection]>([])
    private let writer: GroupCommitWriter
    private let checkpointer: Checkpointer
    private let readsTotal: OpaquePointer?
    private let errorsTotal: OpaquePointer?

    static func from(_ instance: UnsafeMutableRawPointer?) -> SQLiteStore {
        Unmanaged<SQLiteStore>.fromOpaque(instance!).takeUnretainedValue()
    }

    init(host: HostCalls) throws(StoreError) {
        self.host = host
        guard let path = host.config("path"), !path.isEmpty else {
            throw .invalid("configuration key 'path' is required: the SQLite database file")
        }
        self.path = path
        let synchronous = (host.config("synchronous") ?? "full").lowercased()
        guard ["full", "normal"].contains(synchronous) else {
            throw .invalid("configuration key 'synchronous' must be 'full' or 'normal', got '\(synchronous)'")
        }
        let maxGroup = host.config("group_commit_max_batches") ?? "1024"
        guard let maxGroupBatches = Int(maxGroup), (1...65_536).contains(maxGroupBatches) else {
            throw .invalid("configuration key 'group_commit_max_batches' must be a whole number from 1 to 65536, got '\(maxGroup)'")
        }

        let cache = host.config("cache_size_mb") ?? "64"
        guard let cacheMB = Int(cache), (1...65_536).contains(cacheMB) else {
            throw .invalid("configuration key 'cache_size_mb' must be a whole number from 1 to 65536, got '\(cache)'")
        }
        let cacheKiB = cacheMB * 1024
        let checkpoint = host.config("checkpoint_pages") ?? "4000"
        guard let checkpointPages = Int32(checkpoint), (100...262_144).contains(checkpointPages) else {
            throw .invalid("configuration key 'checkpoint_pages' must be a whole number from 100 to 262144, got '\(checkpoint)'")
        }
        let connection = try SQLiteConnection(path: path, readOnly: false)
        try Self.prepareSchema(connection, path: path)
        try connection.execute("PRAGMA synchronous=\(synchronous.uppercased())")
        try connection.execute("PRAGMA cache_size=-\(cacheKiB)")
        checkpointer = try Checkpointer(path: path, synchronous: synchronous, pages: checkpointPages, host: host)
        checkpointer.attach(to: connection)
        do {
            writer = try GroupCommitWriter(connection: connection, host: host, maxGroupBatches: maxGroupBatches, checkpointer: checkpointer)
        } catch {
            checkpointer.stop()
            throw error
        }
        readsTotal = host.metric(PARLEY_METRIC_COUNTER, "reads_total", "Rows read by get and scan calls")
        errorsTotal = host.metric(PARLEY_METRIC_COUNTER, "errors_total", "Calls that failed")
        host.log(PARLEY_LOG_INFO, "opened \(path) (WAL, synchronous=\(synchronous), up to \(maxGroupBatches) batches per commit, background checkpoints every \(checkpointPages) pages)")
    }

    private static func prepareSchema(_ connection: SQLiteConnection, path: String) throws(StoreError) {
        let foundApplication = try connection.integer("PRAGMA application_id")
        guard foundApplication == 0 || foundApplication == applicationID else {
            throw StoreError(status: parley_status(PARLEY_E_CORRUPT), message: "\(path) is an SQLite database of another application (application_id \(foundApplication)); refusing to touch it")
        }
        let found = try connection.integer("PRAGMA user_version")
        guard found <= schemaVersion else {
            throw StoreError(status: parley_status(PARLEY_E_CORRUPT), message: "\(path) has schema version \(found), newer than this plugin's \(schemaVersion); upgrade the storage-sqlite plugin")
        }
        let mode = try connection.text("PRAGMA journal_mode=WAL")
        guard mode.lowercased() == "wal" else {
            throw .io("\(path): cannot switch to WAL mode (journal_mode is \(mode))")
        }
        if found < schemaVersion {
            try connection.execute("""
                BEGIN IMMEDIATE;
                CREATE TABLE IF NOT EXISTS kv (
                    tbl BLOB NOT NULL, pk BLOB NOT NULL, sk BLOB NOT NULL, value BLOB NOT NULL,
                    PRIMARY KEY (tbl, pk, sk)
                ) WITHOUT ROWID;
                PRAGMA application_id=\(applicationID);
                PRAGMA user_version=\(schemaVersion);
                COMMIT;
                """)
        }
    }

    func close() {
        checkpointer.stop()
        writer.stop()
        readers.withLock { $0.removeAll() }
        host.log(PARLEY_LOG_INFO, "closed \(path)")
    }

    // MARK: Reads

    private func withReader(_ op: OpaquePointer?, _ body: (SQLiteConnection) throws(StoreError) -> Void) -> parley_status {
        do throws(StoreError) {
            let connection: SQLiteConnection
            if let pooled = readers.withLock({ $0.popLast() }) {
                connection = pooled
            } else {
                connection = try SQLiteConnection(path: path, readOnly: true)
            }
            defer { readers.withLock { $0.append(connection) } }
            try body(connection)
            return parley_status(PARLEY_OK)
        } catch {
            host.add(errorsTotal, 1)
            return host.fail(op, error)
        }
    }

    func get(op: OpaquePointer?, table: parley_bytes, partition: parley_bytes, sort: parley_bytes) -> parley_status {
        withReader(op) { (connection) throws(StoreError) in
            try checkKey(table: table, partition: partition, sort: sort)
            let statement = try connection.statement("SELECT sk, value FROM kv WHERE tbl=?1 AND pk=?2 AND sk=?3")
            defer { sqlite3_reset(statement) }
            bindBlob(statement, 1, table.buffer)
            bindBlob(statement, 2, partition.buffer)
            bindBlob(statement, 3, sort.buffer)
            switch sqlite3_step(statement) {
            case SQLITE_ROW:
                host.add(readsTotal, 1)
                _ = host.emitRow(op, sortKey: sort, value: columnBlob(statement, 1).parleyBytes)
            case SQLITE_DONE:
                break
            default:
                throw .io("get: \(connection.lastError)")
            }
        }
    }

    func scan(op: OpaquePointer?, request: UnsafePointer<parley_scan_request>) -> parley_status {
        let request = copyVersioned(request)
        return withReader(op) { (connection) throws(StoreError) in
            try checkKey(table: request.table, partition: request.partition, sort: parley_bytes(data: nil, len: 0))
            let knownFlags = UInt32(PARLEY_SCAN_REVERSE)
            let knownBounds = [PARLEY_BOUND_NONE, PARLEY_BOUND_INCLUSIVE, PARLEY_BOUND_EXCLUSIVE]
            guard request.flags & ~knownFlags == 0, knownBounds.contains(request.lower_kind), knownBounds.contains(request.upper_kind) else {
                throw StoreError(status: parley_status(PARLEY_E_UNSUPPORTED), message: "scan: unknown flags or bound kinds")
            }
            let reverse = request.flags & UInt32(PARLEY_SCAN_REVERSE) != 0
            var sql = "SELECT sk, value FROM kv WHERE tbl=?1 AND pk=?2"
            sql += Self.boundClause(request.lower_kind, lower: true)
            sql += Self.boundClause(request.upper_kind, lower: false)
            sql += reverse ? " ORDER BY sk DESC" : " ORDER BY sk"
            if request.limit > 0 { sql += " LIMIT ?5" }
            let statement = try connection.statement(sql)
            defer { sqlite3_reset(statement) }
            bindBlob(statement, 1, request.table.buffer)
            bindBlob(statement, 2, request.partition.buffer)
            if request.lower_kind != PARLEY_BOUND_NONE { bindBlob(statement, 3, request.lower.buffer) }
            if request.upper_kind != PARLEY_BOUND_NONE { bindBlob(statement, 4, request.upper.buffer) }
            if request.limit > 0 { sqlite3_bind_int64(statement, 5, Int64(request.limit)) }
            var rows: UInt64 = 0
            defer { host.add(readsTotal, rows) }
            while true {
                let step = sqlite3_step(statement)
                if step == SQLITE_DONE { return }
                guard step == SQLITE_ROW else { throw .io("scan: \(connection.lastError)") }
                rows += 1
                guard host.emitRow(op, sortKey: columnBlob(statement, 0).parleyBytes, value: columnBlob(statement, 1).parleyBytes) else { return }
            }
        }
    }

    private static func boundClause(_ kind: parley_bound_kind, lower: Bool) -> String {
        switch kind {
        case PARLEY_BOUND_INCLUSIVE: lower ? " AND sk >= ?3" : " AND sk <= ?4"
        case PARLEY_BOUND_EXCLUSIVE: lower ? " AND sk > ?3" : " AND sk < ?4"
        default: ""
        }
    }

    // MARK: Writes

    /// Queues the batch for the next group commit and returns PARLEY_PENDING;
    /// the writer thread completes it after the commit.
    func apply(op: OpaquePointer?, writes: UnsafeRawPointer?, count: Int, writeSize: Int) -> parley_status {
        guard count > 0 else { return parley_status(PARLEY_OK) }
        guard let writes, writeSize >= MemoryLayout<UInt32>.size else {
            return host.fail(op, .invalid("apply: no writes array or a write_size of \(writeSize)"))
        }
        guard writer.enqueue(PendingBatch(op: op, writes: writes, count: count, writeSize: writeSize)) else {
            return host.fail(op, StoreError(status: parley_status(PARLEY_E_BUSY), message: "storage-sqlite is shutting down"))
        }
        return parley_status(PARLEY_PENDING)
    }
}

/// Refuses keys over the ABI's limits, which SQLite itself would accept.
func checkKey(table: parley_bytes, partition: parley_bytes, sort: parley_bytes) throws(StoreError) {
    guard table.len <= Int(PARLEY_STORAGE_MAX_TABLE_BYTES) else {
        throw .tooLarge("table name of \(table.len) bytes exceeds \(PARLEY_STORAGE_MAX_TABLE_BYTES)")
    }
    guard partition.len <= Int(PARLEY_STORAGE_MAX_PARTITION_BYTES) else {
        throw .tooLarge("partition key of \(partition.len) bytes exceeds \(PARLEY_STORAGE_MAX_PARTITION_BYTES)")
    }
    guard sort.len <= Int(PARLEY_STORAGE_MAX_SORT_BYTES) else {
        throw .tooLarge("sort key of \(sort.len) bytes exceeds \(PARLEY_STORAGE_MAX_SORT_BYTES)")
    }
}

extension UnsafeRawBufferPointer {
    var parleyBytes: parley_bytes {
        parley_bytes(data: baseAddress?.assumingMemoryBound(to: UInt8.self), len: count)
    }
}

/// A struct that starts with `uint32_t struct_size`.
protocol VersionedStruct { init() }
extension parley_scan_request: VersionedStruct {}
extension parley_write: VersionedStruct {}

/// Copies a host struct into a zeroed one of this plugin's size, reading no more
/// than the host's struct_size.
func copyVersioned<T: VersionedStruct>(_ source: UnsafeRawPointer) -> T {
    var copy = T()
    let size = Int(source.loadUnaligned(as: UInt32.self))
    withUnsafeMutableBytes(of: &copy) { destination in
        destination.copyMemory(from: UnsafeRawBufferPointer(start: source, count: min(size, destination.count)))
    }
    return copy
}

func copyVersioned<T: VersionedStruct>(_ source: UnsafePointer<T>) -> T {
    copyVersioned(UnsafeRawPointer(source))
}
