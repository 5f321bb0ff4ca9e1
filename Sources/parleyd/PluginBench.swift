// `parleyd plugin bench`: throughput of a storage plugin through the host, as the
// server uses it (worker pool, batches, concurrent callers).
import ArgumentParser
import Foundation
import PluginHost

extension PluginCommand {
    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure a storage plugin: durable batched writes, scans and point reads per second.",
            discussion: """
                Each writer owns one partition (like a conversation) and appends rows with 8-byte \
                big-endian sort keys (like message sequences). Unless --config path=... is given, \
                the database lives in a temporary folder removed afterwards.
                """
        )

        @Argument(help: "A storage plugin file (.so).")
        var file: String

        @Option(help: "Rows to write in all.")
        var rows: Int = 200_000

        @Option(help: "Rows per atomic batch.")
        var batch: Int = 100

        @Option(help: "Concurrent writers (each with its own partition).")
        var writers: Int = 16

        @Option(help: "Bytes per value.")
        var valueBytes: Int = 100

        @Option(help: "Point reads to time.")
        var reads: Int = 20_000

        @Flag(help: "Print the results as JSON.")
        var json = false

        @OptionGroup var options: RunOptions

        func validate() throws {
            guard rows > 0, batch > 0, writers > 0, reads >= 0 else { throw ValidationError("--rows, --batch and --writers must be positive") }
            guard batch <= StorageLimits.maxBatchWrites else { throw ValidationError("--batch must be at most \(StorageLimits.maxBatchWrites)") }
            guard valueBytes <= StorageLimits.maxValueBytes else { throw ValidationError("--value-bytes must be at most \(StorageLimits.maxValueBytes)") }
        }

        func run() async throws {
            let logger = try options.logger()
            var configuration = try options.configuration()
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("parley-bench-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: scratch) }
            if configuration["path"] == nil { configuration["path"] = scratch.appendingPathComponent("bench.db").path }
            let library = try PluginLibrary.load(path: file)
            let pool = PluginWorkerPool(threads: options.workers, capacity: 65_536)
            defer { pool.shutdown() }
            let storage = try StorageBackend(instance: PluginInstance(library: library, configuration: configuration, pool: pool, logger: logger))

            let perWriter = (rows + writers - 1) / writers
            let value = [UInt8](repeating: 0x61, count: valueBytes)
            let table = Array("bench".utf8)
            let writeStart = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        let partition = Array("w\(writer)".utf8)
                        var sequence = 0
                        while sequence < perWriter {
                            let count = min(batch, perWriter - sequence)
                            let writes = (sequence..<sequence + count).map { seq in
                                StorageWrite.put(StorageKey(table: table, partition: partition, sort: sortKey(seq)), value: value)
                            }
                            try await storage.apply(writes)
                            sequence += count
                        }
                    }
                }
                try await group.waitForAll()
            }
            let writeSeconds = (ContinuousClock.now - writeStart).seconds
            let written = perWriter * writers

            let scanStart = ContinuousClock.now
            var scanned = 0
            for writer in 0..<writers {
                var lower = StorageBound.none
                while true {
                    let page = try await storage.scan(table: table, partition: Array("w\(writer)".utf8), StorageScan(lower: lower, limit: 1_000))
                    scanned += page.count
                    guard let last = page.last, page.count == 1_000 else { break }
                    lower = .exclusive(last.sortKey)
                }
            }
            let scanSeconds = (ContinuousClock.now - scanStart).seconds
            guard scanned == written else { throw ValidationError("scanned \(scanned) rows but wrote \(written)") }

            let readStart = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for reader in 0..<writers {
                    group.addTask {
                        var random = SystemRandomNumberGenerator()
                        for _ in 0..<(reads / writers) {
                            let key = StorageKey(table: table, partition: Array("w\(reader)".utf8), sort: sortKey(Int.random(in: 0..<perWriter, using: &random)))
                            guard try await storage.get(key) != nil else { throw ValidationError("a written row is missing") }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let readSeconds = (ContinuousClock.now - readStart).seconds
            let readCount = (reads / writers) * writers
            await storage.instance.shutdown()

            let results: [(String, Double)] = [
                ("rows_written_per_second", Double(written) / writeSeconds),
                ("batches_committed_per_second", Double(written) / Double(batch) / writeSeconds),
                ("rows_scanned_per_second", Double(scanned) / scanSeconds),
                ("point_reads_per_second", readCount == 0 ? 0 : Double(readCount) / readSeconds),
            ]
            if json {
                let object: [String: Any] = [
                    "plugin": library.info.name, "rows": written, "batch": batch, "writers": writers, "value_bytes": valueBytes,
                    "results": Dictionary(uniqueKeysWithValues: results.map { ($0.0, $0.1.rounded()) }),
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print("\(library.info.name): \(written) rows of \(valueBytes) bytes, batches of \(batch), \(writers) writers")
                for (name, rate) in results {
                    print("  \(name.padding(toLength: 30, withPad: " ", startingAt: 0)) \(Int(rate.rounded()))")
                }
            }
        }
    }
}

/// A sequence number as an 8-byte big-endian sort key, so byte order is numeric order.
private func sortKey(_ sequence: Int) -> [UInt8] {
    withUnsafeBytes(of: UInt64(sequence).bigEndian) { Array($0) }
}

extension Duration {
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
