// The individual conformance checks. Each uses tables of its own, so they can
// share one database.
import PluginHost

func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw ConformanceFailure(description: message()) }
}

func expectEqual<T: Equatable>(_ actual: T, _ expected: T, _ what: String) throws {
    if actual != expected { throw ConformanceFailure(description: "\(what): expected \(expected), got \(actual)") }
}

/// Expects `body` to fail with a plugin error of one of `statuses`; returns it.
@discardableResult
func expectFailure(_ statuses: [PluginStatus], _ what: String, _ body: () async throws -> Void) async throws -> PluginCallError {
    do {
        try await body()
    } catch {
        guard let error = error as? PluginCallError, case .plugin(_, let status, _, _) = error, statuses.contains(status) else {
            throw ConformanceFailure(description: "\(what): expected a plugin error \(statuses), got \(error)")
        }
        return error
    }
    throw ConformanceFailure(description: "\(what): expected a plugin error \(statuses), but the call succeeded")
}

private func key(_ table: String, _ partition: String, _ sort: [UInt8]) -> StorageKey {
    StorageKey(table: table, partition: Array(partition.utf8), sort: sort)
}

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

private func sortKeys(_ rows: [StorageRow]) -> [[UInt8]] { rows.map(\.sortKey) }

enum StorageChecks {
    static func missingRow(_ storage: StorageBackend) async throws {
        try expectEqual(try await storage.get(key("c_missing", "p", bytes("nothing"))), nil, "get of a row never written")
        try expectEqual(try await storage.scan(table: bytes("c_missing"), partition: bytes("p"), StorageScan()), [], "scan of an empty partition")
    }

    static func putAndReplace(_ storage: StorageBackend) async throws {
        let row = key("c_put", "p", bytes("k"))
        try await storage.apply([.put(row, value: bytes("one"))])
        try expectEqual(try await storage.get(row), bytes("one"), "value after put")
        try await storage.apply([.put(row, value: bytes("two"))])
        try expectEqual(try await storage.get(row), bytes("two"), "value after a second put")
        try await storage.apply([.put(row, value: [])])
        try expectEqual(try await storage.get(row), [], "an empty value is stored as present and empty")
    }

    static func delete(_ storage: StorageBackend) async throws {
        let row = key("c_delete", "p", bytes("k"))
        try await storage.apply([.put(row, value: bytes("v"))])
        try await storage.apply([.delete(row)])
        try expectEqual(try await storage.get(row), nil, "value after delete")
        try await storage.apply([.delete(row)])
    }

    /// Sort keys in the order the ABI defines: unsigned bytes, prefixes first. Longer keys
    /// differ before, at and after their eighth byte, for plugins that compare words.
    static let orderedKeys: [[UInt8]] = [
        [], [0x00], [0x00, 0x00], [0x00, 0x01], [0x01], [0x41], [0x41, 0x00],
        [UInt8](repeating: 0x41, count: 8),
        [UInt8](repeating: 0x41, count: 8) + [0x00],
        [UInt8](repeating: 0x41, count: 9),
        [UInt8](repeating: 0x41, count: 16),
        [UInt8](repeating: 0x41, count: 15) + [0x7F],
        [UInt8](repeating: 0x41, count: 15) + [0x80],
        [UInt8](repeating: 0x41, count: 8) + [0x42],
        [UInt8](repeating: 0x41, count: 7) + [0x80],
        [0x41, 0x42], [0x42], [0x7F], [0x80],
        [UInt8](repeating: 0x80, count: 8) + [0x01],
        [0xFE, 0xFF], [0xFF], [0xFF, 0xFF],
        [UInt8](repeating: 0xFF, count: 8) + [UInt8](repeating: 0x00, count: 8),
    ]

    static func scanOrder(_ storage: StorageBackend) async throws {
        let writes = orderedKeys.reversed().map { StorageWrite.put(key("c_order", "p", $0), value: $0) }
        try await storage.apply(Array(writes))
        let rows = try await storage.scan(table: bytes("c_order"), partition: bytes("p"), StorageScan())
        try expectEqual(sortKeys(rows), orderedKeys, "forward scan order")
        try expectEqual(rows.map(\.value), orderedKeys, "values follow their keys")
        let reversed = try await storage.scan(table: bytes("c_order"), partition: bytes("p"), StorageScan(reverse: true))
        try expectEqual(sortKeys(reversed), orderedKeys.reversed(), "reverse scan order")
    }

    private static let numbered: [[UInt8]] = (0..<10).map { [UInt8(0x30 + $0)] }

    private static func lowerBounds(_ key: [UInt8]) -> [StorageBound] { [.none, .inclusive(key), .exclusive(key)] }

    /// What a scan must return, computed from the definition.
    private static func expected(_ keys: [[UInt8]], _ range: StorageScan) -> [[UInt8]] {
        let inRange = keys.filter { key in
            let aboveLower: Bool
            switch range.lower {
            case .none: aboveLower = true
            case .inclusive(let bound): aboveLower = !key.lexicographicallyPrecedes(bound)
            case .exclusive(let bound): aboveLower = bound.lexicographicallyPrecedes(key)
            }
            let belowUpper: Bool
            switch range.upper {
            case .none: belowUpper = true
            case .inclusive(let bound): belowUpper = !bound.lexicographicallyPrecedes(key)
            case .exclusive(let bound): belowUpper = key.lexicographicallyPrecedes(bound)
            }
            return aboveLower && belowUpper
        }
        let ordered = range.reverse ? Array(inRange.reversed()) : inRange
        return Array(ordered.prefix(range.limit))
    }

    private static func checkRanges(_ storage: StorageBackend, table: String, reverse: Bool, limits: [Int]) async throws {
        try await storage.apply(numbered.map { .put(key(table, "p", $0), value: $0) })
        // Bounds on existing keys, between keys ("3a"), and outside the data.
        let bounds: [[UInt8]] = [numbered[3], [0x33, 0x61], numbered[7], [0x2F], [0x3A]]
        for low in bounds {
            for high in bounds {
                for lower in lowerBounds(low) {
                    for upper in lowerBounds(high) {
                        for limit in limits {
                            let range = StorageScan(lower: lower, upper: upper, reverse: reverse, limit: limit)
                            let rows = try await storage.scan(table: bytes(table), partition: bytes("p"), range)
                            try expectEqual(sortKeys(rows), expected(numbered, range), "scan \(range)")
                        }
                    }
                }
            }
        }
    }

    static func scanBounds(_ storage: StorageBackend) async throws {
        try await checkRanges(storage, table: "c_bounds", reverse: false, limits: [StorageLimits.maxScanRows])
    }

    static func reverseScan(_ storage: StorageBackend) async throws {
        try await checkRanges(storage, table: "c_reverse", reverse: true, limits: [StorageLimits.maxScanRows, 2])
    }

    static func scanLimit(_ storage: StorageBackend) async throws {
        let keys: [[UInt8]] = (0..<300).map { [UInt8($0 / 256), UInt8($0 % 256)] }
        try await storage.apply(keys.map { .put(key("c_limit", "p", $0), value: []) })
        for limit in [1, 7, 299, 300, 301] {
            let forward = try await storage.scan(table: bytes("c_limit"), partition: bytes("p"), StorageScan(limit: limit))
            try expectEqual(sortKeys(forward), Array(keys.prefix(limit)), "forward scan with limit \(limit)")
            let backward = try await storage.scan(table: bytes("c_limit"), partition: bytes("p"), StorageScan(reverse: true, limit: limit))
            try expectEqual(sortKeys(backward), Array(keys.reversed().prefix(limit)), "reverse scan with limit \(limit)")
        }
    }

    static func partitionIsolation(_ storage: StorageBackend) async throws {
        // Neighbours that share prefixes with ("c_iso", "a") in every encoding.
        let neighbours: [(String, [UInt8])] = [("c_iso", bytes("")), ("c_iso", bytes("a\u{0}")), ("c_iso", bytes("ab")), ("c_iso", bytes("b")), ("c_iso2", bytes("a")), ("c_is", bytes("oa"))]
        for (table, partition) in neighbours {
            try await storage.apply([.put(StorageKey(table: table, partition: partition, sort: bytes("x")), value: bytes("other"))])
        }
        try await storage.apply([.put(StorageKey(table: "c_iso", partition: bytes("a"), sort: bytes("x")), value: bytes("mine"))])
        let rows = try await storage.scan(table: bytes("c_iso"), partition: bytes("a"), StorageScan())
        try expectEqual(rows.map(\.value), [bytes("mine")], "rows of partition 'a' only")
        let reverse = try await storage.scan(table: bytes("c_iso"), partition: bytes("a"), StorageScan(reverse: true))
        try expectEqual(reverse.map(\.value), [bytes("mine")], "reverse rows of partition 'a' only")
    }

    static func emptyKeys(_ storage: StorageBackend) async throws {
        let row = StorageKey(table: "c_empty", partition: [], sort: [])
        try await storage.apply([.put(row, value: bytes("root")), .put(StorageKey(table: "c_empty", partition: [], sort: [0]), value: bytes("zero"))])
        try expectEqual(try await storage.get(row), bytes("root"), "row with empty partition and sort keys")
        let rows = try await storage.scan(table: bytes("c_empty"), partition: [], StorageScan())
        try expectEqual(rows, [StorageRow(sortKey: [], value: bytes("root")), StorageRow(sortKey: [0], value: bytes("zero"))], "scan of the empty partition")
    }

    static func binaryKeys(_ storage: StorageBackend) async throws {
        let partition: [UInt8] = [0, 0xFF, 0, 1]
        let sorts: [[UInt8]] = [[0, 0, 0], [0, 0xFF], [0xFF, 0]]
        try await storage.apply(sorts.map { .put(StorageKey(table: bytes("c_binary"), partition: partition, sort: $0), value: $0 + [0]) })
        for sort in sorts {
            try expectEqual(try await storage.get(StorageKey(table: bytes("c_binary"), partition: partition, sort: sort)), sort + [0], "binary key \(sort)")
        }
        try expectEqual(try await storage.get(StorageKey(table: bytes("c_binary"), partition: [0, 0xFF], sort: sorts[0])), nil, "a partition key cut at a zero byte is another partition")
        let rows = try await storage.scan(table: bytes("c_binary"), partition: partition, StorageScan(lower: .exclusive([0, 0, 0])))
        try expectEqual(sortKeys(rows), Array(sorts.dropFirst()), "scan above a key of zero bytes")
        let maxKey = StorageKey(table: [UInt8](repeating: 0x74, count: StorageLimits.maxTableBytes), partition: [UInt8](repeating: 0, count: StorageLimits.maxPartitionBytes), sort: [UInt8](repeating: 0xFF, count: StorageLimits.maxSortBytes))
        try await storage.apply([.put(maxKey, value: bytes("longest key"))])
        try expectEqual(try await storage.get(maxKey), bytes("longest key"), "keys at the size limits")
    }

    static func largeValues(_ storage: StorageBackend) async throws {
        for size in [65_536, 1_048_576, StorageLimits.maxValueBytes] {
            let value = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
            let row = key("c_large", "p", bytes("\(size)"))
            try await storage.apply([.put(row, value: value)])
            try expect(try await storage.get(row) == value, "a \(size)-byte value did not round-trip")
        }
    }

    static func atomicBatch(_ storage: StorageBackend) async throws {
        let taken = key("c_atomic", "p", bytes("taken"))
        try await storage.apply([.put(taken, value: bytes("first"))])
        let error = try await expectFailure([.conflict], "a batch whose third write is a failing put-if-absent") {
            try await storage.apply([
                .put(key("c_atomic", "p", bytes("a")), value: bytes("1")),
                .counterAdd(key("c_atomic", "p", bytes("n")), delta: 5),
                .putIfAbsent(taken, value: bytes("second")),
                .delete(taken),
            ])
        }
        if case .plugin(_, _, _, let index) = error {
            try expectEqual(index, 2, "index of the failed write")
        }
        try expectEqual(try await storage.get(key("c_atomic", "p", bytes("a"))), nil, "put before the failed write")
        try expectEqual(try await storage.get(key("c_atomic", "p", bytes("n"))), nil, "counter before the failed write")
        try expectEqual(try await storage.get(taken), bytes("first"), "row the batch tried to change")
    }

    static func conditions(_ storage: StorageBackend) async throws {
        let row = key("c_cond", "p", bytes("k"))
        try await storage.apply([.putIfAbsent(row, value: bytes("v1"))])
        try expectEqual(try await storage.get(row), bytes("v1"), "put-if-absent on an absent row")
        try await expectFailure([.conflict], "put-if-absent on a present row") { try await storage.apply([.putIfAbsent(row, value: bytes("v2"))]) }
        try await storage.apply([.compareAndSet(row, expected: bytes("v1"), value: bytes("v2"))])
        try expectEqual(try await storage.get(row), bytes("v2"), "compare-and-set with the right expected value")
        try await expectFailure([.conflict], "compare-and-set with a stale value") { try await storage.apply([.compareAndSet(row, expected: bytes("v1"), value: bytes("v3"))]) }
        try await expectFailure([.conflict], "compare-and-set with a longer expected value") { try await storage.apply([.compareAndSet(row, expected: bytes("v2\u{0}"), value: bytes("v3"))]) }
        try await expectFailure([.conflict], "compare-and-set on an absent row") { try await storage.apply([.compareAndSet(key("c_cond", "p", bytes("absent")), expected: [], value: bytes("v"))]) }
        try expectEqual(try await storage.get(row), bytes("v2"), "value after the failed conditions")
        try expectEqual(try await storage.get(key("c_cond", "p", bytes("absent"))), nil, "absent row after a failed compare-and-set")
    }

    static func writeOrder(_ storage: StorageBackend) async throws {
        let row = key("c_order_writes", "p", bytes("k"))
        try await storage.apply([.put(row, value: bytes("a")), .delete(row), .putIfAbsent(row, value: bytes("b")), .compareAndSet(row, expected: bytes("b"), value: bytes("c"))])
        try expectEqual(try await storage.get(row), bytes("c"), "value after put, delete, put-if-absent, compare-and-set in one batch")
        let counter = key("c_order_writes", "p", bytes("n"))
        let result = try await storage.apply([.counterAdd(counter, delta: 2), .counterAdd(counter, delta: 3)])
        try expectEqual(result.counters, [0: 2, 1: 5], "counter values within one batch")
    }

    static func counters(_ storage: StorageBackend) async throws {
        let counter = key("c_counter", "p", bytes("n"))
        try expectEqual(try await storage.apply([.counterAdd(counter, delta: 10)]).counters, [0: 10], "first add on an absent counter")
        try expectEqual(try await storage.apply([.counterAdd(counter, delta: -25)]).counters, [0: -15], "negative delta")
        try expectEqual(try await storage.get(counter), withUnsafeBytes(of: Int64(-15).littleEndian) { Array($0) }, "stored counter encoding (int64 little-endian)")
        let shared = key("c_counter", "p", bytes("shared"))
        let tasks = 8, adds = 50
        let returned = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    var values: [Int64] = []
                    for _ in 0..<adds { values.append(try await storage.apply([.counterAdd(shared, delta: 1)]).counters[0] ?? -1) }
                    return values
                }
            }
            var all: [Int64] = []
            for try await values in group { all += values }
            return all
        }
        try expectEqual(returned.sorted(), (1...Int64(tasks * adds)).map { $0 }, "values returned to concurrent adders")
        let text = key("c_counter", "p", bytes("text"))
        try await storage.apply([.put(text, value: bytes("not a counter"))])
        try await expectFailure([.invalid], "adding to a row that is not 8 bytes") { try await storage.apply([.counterAdd(text, delta: 1)]) }
    }

    static func concurrentPutIfAbsent(_ storage: StorageBackend) async throws {
        for round in 0..<5 {
            let row = key("c_race", "p", bytes("claim-\(round)"))
            let winners = await withTaskGroup(of: Int?.self) { group in
                for contender in 0..<16 {
                    group.addTask {
                        do {
                            try await storage.apply([.putIfAbsent(row, value: bytes("\(contender)"))])
                            return contender
                        } catch {
                            return nil
                        }
                    }
                }
                var winners: [Int] = []
                for await winner in group { if let winner { winners.append(winner) } }
                return winners
            }
            try expectEqual(winners.count, 1, "winners of 16 concurrent put-if-absent calls (round \(round))")
            try expectEqual(try await storage.get(row), bytes("\(winners[0])"), "stored value is the winner's")
        }
    }

    static func concurrentBatches(_ storage: StorageBackend) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for writer in 0..<20 {
                group.addTask {
                    for batch in 0..<25 {
                        try await storage.apply((0..<4).map { .put(key("c_many", "w\(writer)", [UInt8(batch), UInt8($0)]), value: [UInt8(writer)]) })
                    }
                }
            }
            try await group.waitForAll()
        }
        for writer in 0..<20 {
            let rows = try await storage.scan(table: bytes("c_many"), partition: bytes("w\(writer)"), StorageScan())
            try expectEqual(rows.count, 100, "rows of writer \(writer)")
        }
    }

    static func errorsReported(_ storage: StorageBackend) async throws {
        let long = [UInt8](repeating: 0x61, count: 4096)
        try await expectFailure([.tooLarge, .invalid], "a sort key of 4096 bytes") {
            try await storage.apply([.put(StorageKey(table: bytes("c_errors"), partition: [], sort: long), value: [])], validate: false)
        }
        try await expectFailure([.tooLarge, .invalid], "a table name of 4096 bytes") {
            _ = try await storage.scan(table: long, partition: [], StorageScan(), validate: false)
        }
        try await expectFailure([.tooLarge, .invalid], "a value over the limit") {
            try await storage.apply([.put(key("c_errors", "p", bytes("big")), value: [UInt8](repeating: 1, count: StorageLimits.maxValueBytes + 1))], validate: false)
        }
        let row = key("c_errors", "p", bytes("after"))
        try await storage.apply([.put(row, value: bytes("still working"))])
        try expectEqual(try await storage.get(row), bytes("still working"), "storage after refused calls")
    }

    static let restartRows = 200

    static func writeBeforeRestart(_ storage: StorageBackend) async throws {
        try await storage.apply((0..<restartRows).map { .put(key("c_restart", "p", [UInt8($0 / 256), UInt8($0 % 256)]), value: bytes("row \($0)")) })
        try await storage.apply([.counterAdd(key("c_restart", "counters", bytes("n")), delta: 42)])
    }

    static func readAfterRestart(_ storage: StorageBackend) async throws {
        let rows = try await storage.scan(table: bytes("c_restart"), partition: bytes("p"), StorageScan())
        try expectEqual(rows.count, restartRows, "rows after restart")
        try expectEqual(rows.last?.value, bytes("row \(restartRows - 1)"), "last row after restart")
        try expectEqual(try await storage.apply([.counterAdd(key("c_restart", "counters", bytes("n")), delta: 1)]).counters, [0: 43], "counter after restart")
    }
}
