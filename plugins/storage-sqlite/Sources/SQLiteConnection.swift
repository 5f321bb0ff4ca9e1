// One SQLite connection with its prepared statements.
import CSQLite

/// A zero-length blob must be bound with a non-NULL pointer, or SQLite binds NULL.
private nonisolated(unsafe) let emptyBlob = UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 1)

/// A connection used by one thread at a time: a reader taken from the pool, or the writer.
final class SQLiteConnection: @unchecked Sendable {
    let db: OpaquePointer
    private var statements: [String: OpaquePointer] = [:]

    init(path: String, readOnly: Bool) throws(StoreError) {
        var handle: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX
        let result = sqlite3_open_v2(path, &handle, flags, nil)
        guard result == SQLITE_OK, let handle else {
            let reason = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(result))
            sqlite3_close_v2(handle)
            throw .io("cannot open database \(path): \(reason) (does its folder exist and is it writable?)")
        }
        db = handle
        sqlite3_extended_result_codes(db, 1)
        sqlite3_busy_timeout(db, 5_000)
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close_v2(db)
    }

    var lastError: String { String(cString: sqlite3_errmsg(db)) }

    func execute(_ sql: String) throws(StoreError) {
        var message: UnsafeMutablePointer<CChar>?
        guard sqlite3_exec(db, sql, nil, nil, &message) == SQLITE_OK else {
            let text = message.map { String(cString: $0) } ?? lastError
            sqlite3_free(message)
            throw .io("\(sql): \(text)")
        }
    }

    /// Returns the cached prepared statement for sql, reset and with no bindings.
    func statement(_ sql: String) throws(StoreError) -> OpaquePointer {
        if let cached = statements[sql] {
            sqlite3_reset(cached)
            sqlite3_clear_bindings(cached)
            return cached
        }
        var statement: OpaquePointer?
        guard sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil) == SQLITE_OK, let statement else {
            throw .io("cannot prepare \(sql): \(lastError)")
        }
        statements[sql] = statement
        return statement
    }

    /// Runs a query that returns one integer (a PRAGMA, for example).
    func integer(_ sql: String) throws(StoreError) -> Int64 {
        let statement = try statement(sql)
        defer { sqlite3_reset(statement) }
        guard sqlite3_step(statement) == SQLITE_ROW else { throw .io("\(sql): \(lastError)") }
        return sqlite3_column_int64(statement, 0)
    }

    /// Runs a query that returns one text value.
    func text(_ sql: String) throws(StoreError) -> String {
        let statement = try statement(sql)
        defer { sqlite3_reset(statement) }
        guard sqlite3_step(statement) == SQLITE_ROW, let text = sqlite3_column_text(statement, 0) else {
            throw .io("\(sql): \(lastError)")
        }
        return String(cString: text)
    }
}

/// Binds bytes as a BLOB (never NULL, even when empty). The bytes must outlive the step.
func bindBlob(_ statement: OpaquePointer, _ index: Int32, _ bytes: UnsafeRawBufferPointer) {
    sqlite3_bind_blob(statement, index, bytes.baseAddress ?? UnsafeRawPointer(emptyBlob), Int32(bytes.count), nil)
}

/// The bytes of a BLOB column, valid until the statement steps again.
func columnBlob(_ statement: OpaquePointer, _ index: Int32) -> UnsafeRawBufferPointer {
    let count = Int(sqlite3_column_bytes(statement, index))
    return UnsafeRawBufferPointer(start: count == 0 ? nil : sqlite3_column_blob(statement, index), count: count)
}
