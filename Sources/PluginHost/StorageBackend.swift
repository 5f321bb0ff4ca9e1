// The Swift face of a storage plugin: the ordered wide-column model of the ABI.
import ParleyPluginABI

/// The limits every storage plugin accepts; the host checks them before calling.
public enum StorageLimits {
    public static let maxTableBytes = Int(PARLEY_STORAGE_MAX_TABLE_BYTES)
    public static let maxPartitionBytes = Int(PARLEY_STORAGE_MAX_PARTITION_BYTES)
    public static let maxSortBytes = Int(PARLEY_STORAGE_MAX_SORT_BYTES)
    public static let maxValueBytes = Int(PARLEY_STORAGE_MAX_VALUE_BYTES)
    public static let maxBatchWrites = Int(PARLEY_STORAGE_MAX_BATCH_WRITES)
    /// The most rows one scan returns.
    public static let maxScanRows = 10_000
}

/// The address of a row.
public struct StorageKey: Sendable, Hashable {
    public var table: [UInt8]
    public var partition: [UInt8]
    public var sort: [UInt8]

    public init(table: [UInt8], partition: [UInt8], sort: [UInt8]) {
        self.table = table
        self.partition = partition
        self.sort = sort
    }

    public init(table: String, partition: [UInt8], sort: [UInt8]) {
        self.init(table: Array(table.utf8), partition: partition, sort: sort)
    }
}

/// A row returned by a scan.
public struct StorageRow: Sendable, Equatable {
    public var sortKey: [UInt8]
    public var value: [UInt8]

    public init(sortKey: [UInt8], value: [UInt8]) {
        self.sortKey = sortKey
        self.value = value
    }
}

/// One write of an atomic batch.
public enum StorageWrite: Sendable, Equatable {
    case put(StorageKey, value: [UInt8])
    case delete(StorageKey)
    /// Fails the whole batch with a conflict when the row exists.
    case putIfAbsent(StorageKey, value: [UInt8])
    /// Fails the whole batch with a conflict unless the row holds `expected`.
    case compareAndSet(StorageKey, expected: [UInt8], value: [UInt8])
    /// Adds to a signed 64-bit counter (absent = 0); the new value is returned.
    case counterAdd(StorageKey, delta: Int64)

    public var key: StorageKey {
        switch self {
        case .put(let key, _), .delete(let key), .putIfAbsent(let key, _), .compareAndSet(let key, _, _), .counterAdd(let key, _):
            key
        }
    }
}

/// One side of a scan range.
public enum StorageBound: Sendable, Equatable {
    case none
    case inclusive([UInt8])
    case exclusive([UInt8])
}

/// Which rows of a partition a scan returns, and in what order.
public struct StorageScan: Sendable, Equatable {
    public var lower: StorageBound
    public var upper: StorageBound
    public var reverse: Bool
    public var limit: Int

    public init(lower: StorageBound = .none, upper: StorageBound = .none, reverse: Bool = false, limit: Int = StorageLimits.maxScanRows) {
        self.lower = lower
        self.upper = upper
        self.reverse = reverse
        self.limit = limit
    }
}

/// What a successful batch reports: the new value of each counter, by write index.
public struct StorageBatchResult: Sendable, Equatable {
    public var counters: [Int: Int64]
}

/// A storage plugin instance seen through the storage model. Every call runs on
/// the plugin worker pool; none blocks the caller's thread.
public struct StorageBackend: Sendable {
    public let instance: PluginInstance
    private let table: parley_storage_vtable

    /// Wraps an instance whose plugin provides the storage kind.
    public init(instance: PluginInstance) throws(PluginCallError) {
        guard let storage = instance.library.descriptor.storage else {
            throw .invalidArgument("plugin \(instance.info.name) does not provide the storage kind")
        }
        self.instance = instance
        self.table = copyVersioned(storage)
    }

    /// Reads one row's value, or nil when it is absent.
    public func get(_ key: StorageKey) async throws(PluginCallError) -> [UInt8]? {
        let (operation, call) = try getCall(key)
        return try await instance.perform(operation, call).rows.first?.value
    }

    /// `get` on the current thread, which must be a plugin worker of this instance (inside
    /// `onWorker` or `run`): no task, no hand-over. A plugin that answers a read PENDING
    /// holds the worker until it completes the call.
    public func getHere(_ key: StorageKey) throws(PluginCallError) -> [UInt8]? {
        let (operation, call) = try getCall(key)
        return try instance.performWaiting(operation, call).rows.first?.value
    }

    private func getCall(_ key: StorageKey) throws(PluginCallError) -> (PluginOperation, PluginInstance.Call) {
        try Self.validate(key)
        let operation = PluginOperation()
        let table = operation.borrow(key.table), partition = operation.borrow(key.partition), sort = operation.borrow(key.sort)
        let get = self.table.get!
        return (operation, { handle, op in get(handle, op, table, partition, sort) })
    }

    /// Reads rows of one partition within the range, in order, at most `range.limit`.
    public func scan(table tableName: [UInt8], partition: [UInt8], _ range: StorageScan) async throws(PluginCallError) -> [StorageRow] {
        try await scan(table: tableName, partition: partition, range, validate: true)
    }

    /// `scan` on the current thread, which must be a plugin worker of this instance; see `getHere`.
    public func scanHere(table tableName: [UInt8], partition: [UInt8], _ range: StorageScan) throws(PluginCallError) -> [StorageRow] {
        let (operation, call) = try scanCall(table: tableName, partition: partition, range, validate: true)
        return Self.rows(try instance.performWaiting(operation, call))
    }

    /// Applies writes atomically and durably: on return every write is stored; on
    /// a thrown error none is. A failed condition throws `.plugin(status: .conflict, index:)`.
    @discardableResult
    public func apply(_ writes: [StorageWrite]) async throws(PluginCallError) -> StorageBatchResult {
        try await apply(writes, validate: true)
    }

    /// The same calls without the host's limit checks, so the conformance suite can
    /// prove a plugin reports oversize input as an error instead of crashing.
    package func scan(table tableName: [UInt8], partition: [UInt8], _ range: StorageScan, validate: Bool) async throws(PluginCallError) -> [StorageRow] {
        let (operation, call) = try scanCall(table: tableName, partition: partition, range, validate: validate)
        return Self.rows(try await instance.perform(operation, call))
    }

    private func scanCall(table tableName: [UInt8], partition: [UInt8], _ range: StorageScan, validate: Bool) throws(PluginCallError) -> (PluginOperation, PluginInstance.Call) {
        if validate {
            try Self.validate(StorageKey(table: tableName, partition: partition, sort: []))
            for bound in [range.lower, range.upper] {
                if case .inclusive(let key) = bound, key.count > StorageLimits.maxSortBytes { throw .invalidArgument("scan bound is longer than \(StorageLimits.maxSortBytes) bytes") }
                if case .exclusive(let key) = bound, key.count > StorageLimits.maxSortBytes { throw .invalidArgument("scan bound is longer than \(StorageLimits.maxSortBytes) bytes") }
            }
            guard range.limit > 0 && range.limit <= StorageLimits.maxScanRows else {
                throw .invalidArgument("scan limit \(range.limit) is outside 1...\(StorageLimits.maxScanRows)")
            }
        }
        let operation = PluginOperation()
        operation.rowLimit = range.limit
        let request = operation.borrowArray(of: parley_scan_request.self, count: 1)
        request.initialize(to: parley_scan_request())
        request.pointee.struct_size = UInt32(MemoryLayout<parley_scan_request>.stride)
        request.pointee.flags = range.reverse ? UInt32(PARLEY_SCAN_REVERSE) : 0
        request.pointee.table = operation.borrow(tableName)
        request.pointee.partition = operation.borrow(partition)
        (request.pointee.lower, request.pointee.lower_kind) = Self.bound(range.lower, operation)
        (request.pointee.upper, request.pointee.upper_kind) = Self.bound(range.upper, operation)
        request.pointee.limit = UInt32(clamping: range.limit)
        let scan = table.scan!
        return (operation, { handle, op in scan(handle, op, request) })
    }

    private static func rows(_ output: PluginOutput) -> [StorageRow] {
        output.rows.map { StorageRow(sortKey: $0.sortKey, value: $0.value) }
    }

    @discardableResult
    package func apply(_ writes: [StorageWrite], validate: Bool) async throws(PluginCallError) -> StorageBatchResult {
        if validate, writes.isEmpty { return StorageBatchResult(counters: [:]) }
        let batch = StorageBatch(capacity: writes.count, checkingLimits: validate)
        for write in writes { batch.add(write) }
        if let invalid = batch.invalid { throw invalid }
        return Self.batchResult(try await instance.perform(batch.operation, applyCall(batch)))
    }

    /// The plugin's `apply` on the batch's array of writes.
    private func applyCall(_ batch: StorageBatch) -> PluginInstance.Call {
        let apply = table.apply!
        let writes = batch.writes, count = batch.count
        return { handle, op in apply(handle, op, writes, count, MemoryLayout<parley_write>.stride) }
    }

    /// Runs `body` on the plugin worker pool, where `getHere` and `scanHere` may be called,
    /// and returns its result to the waiting task: one hand-over for several reads.
    public func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async throws(PluginCallError) -> T {
        try await instance.pool.run(body)
    }

    /// Runs `job` on the plugin worker pool, where `applyHere`, `getHere` and `scanHere` may be called.
    /// With `wake` false, no sleeping worker is woken for it until `wakeWorker()`.
    public func onWorker(_ job: @escaping @Sendable () -> Void, wake: Bool = true) throws(PluginCallError) {
        try instance.pool.submit(job, wake: wake)
    }

    /// Wakes a worker for jobs queued with `onWorker(_:wake: false)`.
    public func wakeWorker() {
        instance.pool.wake()
    }

    /// Whether `other` queues its jobs on the same worker pool (one `wakeWorker` serves both).
    public func sharesWorkers(with other: StorageBackend) -> Bool {
        instance.pool === other.instance.pool
    }

    /// Applies a batch like `apply`, but starts the call on the current thread, which must
    /// be a plugin worker (inside `onWorker`), and reports to `completion` on the thread that
    /// finishes the batch (for storage-sqlite, its writer thread) instead of resuming a task.
    /// Keep `completion` short: it may hold up the plugin's thread. A batch that broke a
    /// limit fails with that error and reaches no plugin.
    public func applyHere(_ batch: StorageBatch, completion: @escaping @Sendable (Result<StorageBatchResult, PluginCallError>) -> Void) {
        if let invalid = batch.invalid { return completion(.failure(invalid)) }
        guard batch.count > 0 else { return completion(.success(StorageBatchResult(counters: [:]))) }
        instance.performHere(batch.operation, applyCall(batch)) { result in
            completion(result.map(Self.batchResult))
        }
    }

    private static func batchResult(_ output: PluginOutput) -> StorageBatchResult {
        var counters: [Int: Int64] = [:]
        for item in output.items where item.outcome == parley_status(PARLEY_OK) {
            counters[item.index] = Int64(bitPattern: item.value)
        }
        return StorageBatchResult(counters: counters)
    }

    private static func bound(_ bound: StorageBound, _ operation: PluginOperation) -> (parley_bytes, parley_bound_kind) {
        switch bound {
        case .none: (parley_bytes(data: nil, len: 0), PARLEY_BOUND_NONE)
        case .inclusive(let key): (operation.borrow(key), PARLEY_BOUND_INCLUSIVE)
        case .exclusive(let key): (operation.borrow(key), PARLEY_BOUND_EXCLUSIVE)
        }
    }

    private static func validate(_ key: StorageKey) throws(PluginCallError) {
        guard !key.table.isEmpty, key.table.count <= StorageLimits.maxTableBytes else {
            throw .invalidArgument("table name must be 1 to \(StorageLimits.maxTableBytes) bytes, got \(key.table.count)")
        }
        guard key.partition.count <= StorageLimits.maxPartitionBytes else {
            throw .invalidArgument("partition key of \(key.partition.count) bytes exceeds \(StorageLimits.maxPartitionBytes)")
        }
        guard key.sort.count <= StorageLimits.maxSortBytes else {
            throw .invalidArgument("sort key of \(key.sort.count) bytes exceeds \(StorageLimits.maxSortBytes)")
        }
    }
}
