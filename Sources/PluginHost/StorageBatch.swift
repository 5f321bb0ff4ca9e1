// An atomic batch of writes built directly in the memory the plugin reads.
import ParleyPluginABI

/// Bytes of a key part or a value, copied once into the batch from where they are.
public enum StorageBytes: Sendable {
    case bytes([UInt8])
    /// A string's UTF-8.
    case utf8(String)
    /// Two strings' UTF-8 joined by a zero byte (composite sort keys).
    case joined(String, String)
    /// A number as 8 bytes big-endian, so byte order is numeric order.
    case sequence(Int64)
    /// Two numbers, 16 bytes.
    case sequences(Int64, Int64)

    var count: Int {
        switch self {
        case .bytes(let bytes): bytes.count
        case .utf8(let text): text.utf8.count
        case .joined(let first, let second): first.utf8.count + 1 + second.utf8.count
        case .sequence: 8
        case .sequences: 16
        }
    }

    /// The bytes, as an array (for a `StorageKey` of the plain API).
    public var bytes: [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            if let base = buffer.baseAddress { copy(to: UnsafeMutableRawPointer(base)) }
            initialized = count
        }
    }

    /// Writes the bytes at `destination`, which has room for `count` of them.
    func copy(to destination: UnsafeMutableRawPointer) {
        switch self {
        case .bytes(let bytes):
            bytes.withUnsafeBytes { if let base = $0.baseAddress { destination.copyMemory(from: base, byteCount: $0.count) } }
        case .utf8(let text):
            Self.copy(text, to: destination)
        case .joined(let first, let second):
            let length = first.utf8.count
            Self.copy(first, to: destination)
            destination.storeBytes(of: 0, toByteOffset: length, as: UInt8.self)
            Self.copy(second, to: destination + length + 1)
        case .sequence(let number):
            destination.storeBytes(of: UInt64(bitPattern: number).bigEndian, as: UInt64.self)
        case .sequences(let first, let second):
            destination.storeBytes(of: UInt64(bitPattern: first).bigEndian, as: UInt64.self)
            destination.storeBytes(of: UInt64(bitPattern: second).bigEndian, toByteOffset: 8, as: UInt64.self)
        }
    }

    private static func copy(_ text: String, to destination: UnsafeMutableRawPointer) {
        var text = text
        text.withUTF8 { if let base = $0.baseAddress { destination.copyMemory(from: base, byteCount: $0.count) } }
    }
}

/// Writes applied atomically by `StorageBackend.applyHere`, like `apply([StorageWrite])`,
/// but each key part and value is copied once, from its source into the memory handed
/// to the plugin, with no array per write on the way: the form the chat hot path uses.
/// Used by one thread at a time, then handed over with the call.
public final class StorageBatch: @unchecked Sendable {
    public enum Kind: Sendable {
        case put, putIfAbsent
    }

    let operation = PluginOperation()
    private(set) var writes: UnsafeMutablePointer<parley_write>
    private var capacity: Int
    /// The number of writes so far; the next write's index.
    public private(set) var count = 0
    /// The first write that broke a limit; the call fails with it.
    private(set) var invalid: PluginCallError?
    /// False only for the conformance suite, which hands plugins oversize input on purpose.
    private let checkingLimits: Bool

    public convenience init(capacity: Int = 16) {
        self.init(capacity: capacity, checkingLimits: true)
    }

    init(capacity: Int, checkingLimits: Bool) {
        self.checkingLimits = checkingLimits
        self.capacity = max(1, capacity)
        writes = operation.borrowArray(of: parley_write.self, count: self.capacity)
    }

    public func add(_ kind: Kind, table: [UInt8], partition: StorageBytes, sort: StorageBytes, value: StorageBytes) {
        checkValue(value.count)
        var entry = key(table: table, partition: partition, sort: sort)
        entry.kind = kind == .put ? PARLEY_WRITE_PUT : PARLEY_WRITE_PUT_IF_ABSENT
        entry.value = borrow(value)
        append(entry)
    }

    /// Adds a write given the plain way.
    public func add(_ write: StorageWrite) {
        let key = write.key
        var entry = self.key(table: key.table, partition: .bytes(key.partition), sort: .bytes(key.sort))
        switch write {
        case .put(_, let value), .putIfAbsent(_, let value), .compareAndSet(_, _, let value):
            checkValue(value.count)
            entry.value = borrow(.bytes(value))
        case .delete, .counterAdd:
            break
        }
        switch write {
        case .put: entry.kind = PARLEY_WRITE_PUT
        case .putIfAbsent: entry.kind = PARLEY_WRITE_PUT_IF_ABSENT
        case .delete: entry.kind = PARLEY_WRITE_DELETE
        case .compareAndSet(_, let expected, _):
            entry.kind = PARLEY_WRITE_COMPARE_AND_SET
            entry.expected = borrow(.bytes(expected))
        case .counterAdd(_, let delta):
            entry.kind = PARLEY_WRITE_COUNTER_ADD
            entry.delta = delta
        }
        append(entry)
    }

    private func key(table: [UInt8], partition: StorageBytes, sort: StorageBytes) -> parley_write {
        var entry = parley_write()
        entry.struct_size = UInt32(MemoryLayout<parley_write>.stride)
        if table.isEmpty || table.count > StorageLimits.maxTableBytes {
            fail(.invalidArgument("table name must be 1 to \(StorageLimits.maxTableBytes) bytes, got \(table.count)"))
        } else if partition.count > StorageLimits.maxPartitionBytes {
            fail(.invalidArgument("partition key of \(partition.count) bytes exceeds \(StorageLimits.maxPartitionBytes)"))
        } else if sort.count > StorageLimits.maxSortBytes {
            fail(.invalidArgument("sort key of \(sort.count) bytes exceeds \(StorageLimits.maxSortBytes)"))
        }
        entry.table = borrow(.bytes(table))
        entry.partition = borrow(partition)
        entry.sort = borrow(sort)
        return entry
    }

    private func borrow(_ bytes: StorageBytes) -> parley_bytes {
        let count = bytes.count
        guard count > 0 else { return parley_bytes(data: nil, len: 0) }
        let memory = operation.allocate(byteCount: count, alignment: 1)
        bytes.copy(to: memory)
        return parley_bytes(data: memory.assumingMemoryBound(to: UInt8.self), len: count)
    }

    private func append(_ entry: parley_write) {
        if count == StorageLimits.maxBatchWrites {
            fail(.invalidArgument("a batch holds more than \(StorageLimits.maxBatchWrites) writes, the limit"))
        }
        if count == capacity {
            // The old array stays with the operation until it finishes; it is not reused.
            let grown = operation.borrowArray(of: parley_write.self, count: capacity * 2)
            grown.initialize(from: writes, count: count)
            writes = grown
            capacity *= 2
        }
        (writes + count).initialize(to: entry)
        count += 1
    }

    private func checkValue(_ count: Int) {
        if count > StorageLimits.maxValueBytes {
            fail(.invalidArgument("value of \(count) bytes exceeds \(StorageLimits.maxValueBytes)"))
        }
    }

    /// Records the first broken limit. The write is still added: a checked batch fails as a
    /// whole, and an unchecked one (the conformance suite) must reach the plugin as given.
    private func fail(_ error: PluginCallError) {
        if checkingLimits, invalid == nil { invalid = error }
    }
}
