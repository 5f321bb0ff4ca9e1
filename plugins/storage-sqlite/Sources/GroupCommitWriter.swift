// The single writer: commits many concurrent batches in one transaction (one
// fsync), with a savepoint per batch so a failed condition affects only its batch.
import ParleyPluginABI
import CSQLite
import Glibc

/// A batch waiting for the next commit. Its inputs are borrowed from the host
/// until the batch's op is completed.
struct PendingBatch {
    let op: OpaquePointer?
    let writes: UnsafeRawPointer
    let count: Int
    let writeSize: Int
}

/// The writer's statements, prepared once.
private struct WriteStatements {
    let put: OpaquePointer
    let delete: OpaquePointer
    let putIfAbsent: OpaquePointer
    let compareAndSet: OpaquePointer
    let select: OpaquePointer

    init(_ connection: SQLiteConnection) throws(StoreError) {
        put = try connection.statement("INSERT INTO kv(tbl, pk, sk, value) VALUES(?1, ?2, ?3, ?4) ON CONFLICT(tbl, pk, sk) DO UPDATE SET value=excluded.value")
        delete = try connection.statement("DELETE FROM kv WHERE tbl=?1 AND pk=?2 AND sk=?3")
        putIfAbsent = try connection.statement("INSERT INTO kv(tbl, pk, sk, value) VALUES(?1, ?2, ?3, ?4) ON CONFLICT(tbl, pk, sk) DO NOTHING")
        compareAndSet = try connection.statement("UPDATE kv SET value=?4 WHERE tbl=?1 AND pk=?2 AND sk=?3 AND value=?5")
        select = try connection.statement("SELECT value FROM kv WHERE tbl=?1 AND pk=?2 AND sk=?3")
    }
}

final class GroupCommitWriter: @unchecked Sendable {
    private let connection: SQLiteConnection
    private let statements: WriteStatements
    private let host: HostCalls
    private let maxGroupBatches: Int
    private var queue: [PendingBatch] = []
    private var stopping = false
    private let thread = WakeableThread()
    private let commitSeconds: OpaquePointer?
    private let batchesPerCommit: OpaquePointer?
    private let writesTotal: OpaquePointer?
    private let batchesTotal: OpaquePointer?

    private let checkpointer: Checkpointer

    init(connection: SQLiteConnection, host: HostCalls, maxGroupBatches: Int, checkpointer: Checkpointer) throws(StoreError) {
        self.connection = connection
        self.checkpointer = checkpointer
        statements = try WriteStatements(connection)
        self.host = host
        self.maxGroupBatches = maxGroupBatches
        commitSeconds = host.metric(PARLEY_METRIC_HISTOGRAM, "commit_seconds", "Time to commit one group of batches")
        batchesPerCommit = host.metric(PARLEY_METRIC_HISTOGRAM, "batches_per_commit", "Batches committed together in one transaction")
        writesTotal = host.metric(PARLEY_METRIC_COUNTER, "writes_total", "Writes committed")
        batchesTotal = host.metric(PARLEY_METRIC_COUNTER, "batches_total", "Batches applied or refused")
        thread.start { [self] in run() }
    }

    /// Queues a batch; false when the writer is stopping.
    func enqueue(_ batch: PendingBatch) -> Bool {
        thread.locked {
            guard !stopping else { return false }
            queue.append(batch)
            thread.wake()
            return true
        }
    }

    /// Commits what is queued, then ends the thread and checkpoints the WAL.
    func stop() {
        thread.locked {
            stopping = true
            thread.wake()
        }
        thread.join()
        try? connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    }

    private func run() {
        while true {
            let group: [PendingBatch]? = thread.locked {
                while queue.isEmpty && !stopping { thread.wait() }
                if queue.isEmpty { return nil }
                let take = min(queue.count, maxGroupBatches)
                defer { queue.removeFirst(take) }
                return Array(queue.prefix(take))
            }
            guard let group else { return }
            commit(group)
        }
    }

    /// One transaction for the whole group; each batch's outcome is reported only
    /// after COMMIT returns, so an acknowledged batch is durable.
    private func commit(_ group: [PendingBatch]) {
        let started = monotonicSeconds()
        var outcomes: [Result<[(Int, Int64)], StoreError>] = []
        do {
            try connection.execute("BEGIN IMMEDIATE")
            for batch in group {
                outcomes.append(applyInSavepoint(batch))
            }
            try connection.execute("COMMIT")
        } catch {
            try? connection.execute("ROLLBACK")
            outcomes = group.map { _ in .failure(StoreError.io("commit failed, nothing of this batch was stored: \(error.message)")) }
        }
        host.observe(commitSeconds, monotonicSeconds() - started)
        host.observe(batchesPerCommit, Double(group.count))
        host.add(batchesTotal, UInt64(group.count))
        for (batch, outcome) in zip(group, outcomes) {
            switch outcome {
            case .success(let counters):
                host.add(writesTotal, UInt64(batch.count))
                for (index, value) in counters { host.emitCounter(batch.op, index: index, value: value) }
                host.complete(batch.op, parley_status(PARLEY_OK))
            case .failure(let error):
                host.complete(batch.op, host.fail(batch.op, error))
            }
        }
        checkpointer.checkpointIfDue(connection)
    }

    private func applyInSavepoint(_ batch: PendingBatch) -> Result<[(Int, Int64)], StoreError> {
        do {
            try connection.execute("SAVEPOINT batch")
        } catch {
            return .failure(error)
        }
        do {
            var counters: [(Int, Int64)] = []
            for index in 0..<batch.count {
                let write: parley_write = copyVersioned(batch.writes + index * batch.writeSize)
                if let value = try apply(write, index: index) { counters.append((index, value)) }
            }
            try connection.execute("RELEASE batch")
            return .success(counters)
        } catch {
            try? connection.execute("ROLLBACK TO batch")
            try? connection.execute("RELEASE batch")
            return .failure(error)
        }
    }

    /// Applies one write; returns the new value of a counter.
    private func apply(_ write: parley_write, index: Int) throws(StoreError) -> Int64? {
        try checkKey(table: write.table, partition: write.partition, sort: write.sort)
        if write.value.len > Int(PARLEY_STORAGE_MAX_VALUE_BYTES) {
            throw .tooLarge("write \(index): value of \(write.value.len) bytes exceeds \(PARLEY_STORAGE_MAX_VALUE_BYTES)")
        }
        switch write.kind {
        case PARLEY_WRITE_PUT:
            try step(statements.put, write, value: true)
        case PARLEY_WRITE_DELETE:
            try step(statements.delete, write)
        case PARLEY_WRITE_PUT_IF_ABSENT:
            try step(statements.putIfAbsent, write, value: true)
            guard sqlite3_changes(connection.db) == 1 else {
                throw StoreError(status: parley_status(PARLEY_E_CONFLICT), message: "write \(index): put-if-absent found an existing row", index: index)
            }
        case PARLEY_WRITE_COMPARE_AND_SET:
            try step(statements.compareAndSet, write, value: true, expected: true)
            guard sqlite3_changes(connection.db) == 1 else {
                throw StoreError(status: parley_status(PARLEY_E_CONFLICT), message: "write \(index): compare-and-set found no row with the expected value", index: index)
            }
        case PARLEY_WRITE_COUNTER_ADD:
            return try addToCounter(write, index: index)
        default:
            throw StoreError(status: parley_status(PARLEY_E_UNSUPPORTED), message: "write \(index): unknown write kind \(write.kind.rawValue)")
        }
        return nil
    }

    private func addToCounter(_ write: parley_write, index: Int) throws(StoreError) -> Int64 {
        let select = statements.select
        bindKey(select, write)
        var current: Int64 = 0
        switch sqlite3_step(select) {
        case SQLITE_ROW:
            let stored = columnBlob(select, 0)
            guard stored.count == 8 else {
                sqlite3_reset(select)
                throw .invalid("write \(index): counter row holds \(stored.count) bytes, not an 8-byte counter")
            }
            current = Int64(littleEndian: stored.loadUnaligned(as: Int64.self))
        case SQLITE_DONE:
            break
        default:
            throw .io("write \(index): \(connection.lastError)")
        }
        sqlite3_reset(select)
        let (sum, overflow) = current.addingReportingOverflow(write.delta)
        guard !overflow else { throw .invalid("write \(index): counter overflow adding \(write.delta) to \(current)") }
        var encoded = sum.littleEndian
        try withUnsafeBytes(of: &encoded) { (bytes) throws(StoreError) in
            var updated = write
            updated.value = bytes.parleyBytes
            try step(statements.put, updated, value: true)
        }
        return sum
    }

    private func bindKey(_ statement: OpaquePointer, _ write: parley_write) {
        bindBlob(statement, 1, write.table.buffer)
        bindBlob(statement, 2, write.partition.buffer)
        bindBlob(statement, 3, write.sort.buffer)
    }

    /// Runs one write statement; every parameter it has is bound on each run.
    private func step(_ statement: OpaquePointer, _ write: parley_write, value: Bool = false, expected: Bool = false) throws(StoreError) {
        defer { sqlite3_reset(statement) }
        bindKey(statement, write)
        if value { bindBlob(statement, 4, write.value.buffer) }
        if expected { bindBlob(statement, 5, write.expected.buffer) }
        guard sqlite3_step(statement) == SQLITE_DONE else { throw .io(connection.lastError) }
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
