// What the log-structured plugin promises operators beyond the conformance suite:
// torn tails (a last group cut short, whichever of its blocks reached the disk) are cut
// off, damage refuses the start, compaction reclaims space without losing rows, and one
// folder is open in one place at a time.
import Foundation
import PluginHost
import Testing

@Suite("storage-log", .timeLimit(.minutes(3)))
struct StorageLogTests {
    private func open(_ configuration: [String: String], pool: PluginWorkerPool) throws -> StorageBackend {
        let library = try PluginLibrary.load(path: try TestSupport.builtPlugin("parley-storage-log"))
        return try StorageBackend(instance: PluginInstance(library: library, configuration: configuration, pool: pool, logger: TestSupport.logger))
    }

    private func createFailure(_ configuration: [String: String], pool: PluginWorkerPool) throws -> String {
        do {
            let storage = try open(configuration, pool: pool)
            _ = storage
        } catch let error as PluginLoadError {
            #expect(error.code == "plugin.create_failed")
            return error.description
        }
        throw TestFailure("the plugin started with \(configuration)")
    }

    /// Every row of the one partition the tests write.
    private func allRows(_ storage: StorageBackend) async throws -> [StorageRow] {
        try await storage.scan(table: Array("t".utf8), partition: Array("p".utf8), StorageScan())
    }

    private func key(_ row: Int) -> StorageKey {
        StorageKey(table: "t", partition: Array("p".utf8), sort: withUnsafeBytes(of: UInt32(row).bigEndian) { Array($0) })
    }

    private func value(_ row: Int, _ version: Int, size: Int = 100) -> [UInt8] {
        let text = Array("row \(row) version \(version) ".utf8)
        return Array((text + [UInt8](repeating: UInt8(truncatingIfNeeded: row &+ version), count: size)).prefix(max(size, text.count)))
    }

    /// Segment files in the folder, by name.
    private func segments(_ folder: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".log") }.sorted()
    }

    private func size(_ path: String) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0
    }

    private func truncate(_ path: String, to length: UInt64) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.truncate(atOffset: length)
    }

    private func append(_ bytes: [UInt8], to path: String) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(bytes))
    }

    @Test func tornTailIsCutAwayAndWritesContinue() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        let rows = 50

        var storage = try open(["path": folder], pool: pool)
        for row in 0..<rows { try await storage.apply([.put(key(row), value: value(row, 1))]) }
        await storage.instance.shutdown()
        let newest = "\(folder)/\(try #require(try segments(folder).last))"
        let acknowledged = try size(newest)

        // One more batch, then cut its record in half, as a crash mid-write would.
        storage = try open(["path": folder], pool: pool)
        try await storage.apply([.put(key(rows), value: value(rows, 1, size: 4_000)), .put(key(rows + 1), value: value(rows + 1, 1))])
        await storage.instance.shutdown()
        let full = try size(newest)
        #expect(full > acknowledged + 4_000)
        try truncate(newest, to: acknowledged + (full - acknowledged) / 2)

        storage = try open(["path": folder], pool: pool)
        var read = try await allRows(storage)
        #expect(read.count == rows, "the half-written batch must vanish whole")
        #expect(read.map(\.value) == (0..<rows).map { value($0, 1) })
        #expect(try size(newest) == acknowledged, "the torn record is cut off the file")
        try await storage.apply([.put(key(rows + 2), value: value(rows + 2, 1))])
        #expect(try await storage.get(key(rows + 2)) == value(rows + 2, 1))
        await storage.instance.shutdown()

        // Garbage after the last record (a write that never reached its checksum).
        try append(Array("garbage that is not a record".utf8) + [UInt8](repeating: 0xAB, count: 300), to: newest)
        storage = try open(["path": folder], pool: pool)
        read = try await allRows(storage)
        #expect(read.count == rows + 1)
        try await storage.apply([.put(key(0), value: value(0, 2))])
        await storage.instance.shutdown()

        storage = try open(["path": folder], pool: pool)
        #expect(try await storage.get(key(0)) == value(0, 2))
        #expect(try await storage.get(key(rows + 2)) == value(rows + 2, 1))
        await storage.instance.shutdown()
    }

    /// The plugin's own C tests (both CRC-32C paths, the syncs at start-up, injected write
    /// failures), built with `cc` as `make test` in its folder does, and run.
    @Test func pluginCTestsPass() throws {
        let binary = try TestSupport.scratchFolder().appendingPathComponent("test_storage_log")
        let source = TestSupport.packageRoot.appendingPathComponent("plugins/storage-log/test_storage_log.c").path
        let build = try TestSupport.run("/usr/bin/env", ["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-pthread", "-I", TestSupport.liveInclude, source, "-o", binary.path])
        #expect(build.status == 0, "\(build.output)")
        let result = try TestSupport.run(binary.path, [])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("all passed"))
    }

    /// Bytes of a file.
    private func contents(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    private func overwrite(_ path: String, at offset: UInt64, with bytes: [UInt8]) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data(bytes))
    }

    private func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    private func le64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        UInt64(le32(bytes, at)) | UInt64(le32(bytes, at + 4)) << 32
    }

    /// A group of a segment: its 32-byte group header record at `start`, then its batch records, up to `end`.
    private struct Group {
        let start: Int, end: Int, sequence: UInt64
        let records: [Int]
    }

    /// The groups of a segment (after its 32-byte header), by the lengths in their headers and records.
    private func groups(_ bytes: [UInt8]) -> [Group] {
        var found: [Group] = []
        var at = 32
        while at + 32 <= bytes.count {
            let length = le64(bytes, at + 16)
            guard length >= 32, length <= 1 << 32 else { break } // not a group header
            let end = at + Int(length)
            var records: [Int] = []
            var record = at + 32
            while record + 8 <= min(end, bytes.count) {
                records.append(record)
                record += 8 + Int(le32(bytes, record))
            }
            found.append(Group(start: at, end: end, sequence: le64(bytes, at + 24), records: records))
            at = end
        }
        return found
    }

    /// Offsets of the batch records of a segment (group headers left out).
    private func recordOffsets(_ bytes: [UInt8]) -> [Int] {
        groups(bytes).flatMap(\.records)
    }

    /// The row of a batch record holding one put of `key(row)`: its sort key, after the op header, table and partition.
    private func row(_ bytes: [UInt8], record at: Int) -> Int {
        let op = at + 16
        let sort = op + 10 + Int(bytes[op + 1]) + (Int(bytes[op + 2]) | Int(bytes[op + 3]) << 8)
        return Int(UInt32(bytes[sort]) << 24 | UInt32(bytes[sort + 1]) << 16 | UInt32(bytes[sort + 2]) << 8 | UInt32(bytes[sort + 3]))
    }

    /// CRC-32C (Castagnoli), bit by bit: the reference the plugin's table and SSE4.2 paths must match.
    private func crc32c(_ bytes: [UInt8], _ start: UInt32 = 0) -> UInt32 {
        var crc = ~start
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return ~crc
    }

    /// Batch records carry a plain CRC-32C. Group headers carry the CRC-32C XORed with the
    /// segment's nonce (bytes 20 to 23 of the segment header, random and non-zero), so that a
    /// group header a client places in a key cannot verify.
    @Test func recordChecksumsAreStandardCRC32C() async throws {
        #expect(crc32c(Array("123456789".utf8)) == 0xE306_9283, "the reference itself")
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        let storage = try open(["path": folder], pool: pool)
        // Records of many lengths, so both the 8-byte steps and the byte tail of the CRC are used.
        for row in 0..<40 { try await storage.apply([.put(key(row), value: value(row, 1, size: row * 7 + row % 8))]) }
        await storage.instance.shutdown()
        let bytes = try contents("\(folder)/\(try #require(try segments(folder).last))")
        let offsets = recordOffsets(bytes)
        #expect(offsets.count == 40)
        // One group per batch here (each waited for): a group header record, then the batch's record.
        let found = groups(bytes)
        #expect(found.count == 40 && found.last?.end == bytes.count)
        for (index, group) in found.enumerated() {
            #expect(le32(bytes, group.start) == 24 && bytes[group.start + 8] == 0x02, "group header at \(group.start)")
            #expect(bytes[group.start + 9..<group.start + 16].allSatisfy { $0 == 0 }, "reserved bytes at \(group.start)")
            #expect(group.sequence == UInt64(index + 1), "group sequences count from 1")
            #expect(group.records.count == 1)
        }
        let nonce = le32(bytes, 20)
        #expect(nonce != 0, "the segment header holds a non-zero nonce")
        for at in offsets {
            let length = Int(le32(bytes, at))
            let covered = Array(bytes[at..<at + 4]) + Array(bytes[at + 8..<at + 8 + length])
            #expect(le32(bytes, at + 4) == crc32c(covered), "record at \(at)")
        }
        for at in found.map(\.start) {
            let covered = Array(bytes[at..<at + 4]) + Array(bytes[at + 8..<at + 32])
            #expect(le32(bytes, at + 4) == crc32c(covered) ^ nonce, "group header at \(at)")
        }
        // Each segment draws its own nonce.
        let other = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let second = try open(["path": other], pool: pool)
        try await second.apply([.put(key(0), value: value(0, 1))])
        await second.instance.shutdown()
        #expect(le32(try contents("\(other)/\(try #require(try segments(other).last))"), 20) != nonce)
    }

    /// The reviewer's case: 60 zero bytes over the end of one group (its record now fails its
    /// checksum) and the header of the next, in the middle of the newest segment. The damaged
    /// group's own end no longer holds a valid header, but valid groups follow further on: that
    /// is damage, not a torn last group, so the start is refused and nothing is cut. (Before, the
    /// file was cut there, silently dropping the 89 acknowledged groups after it.)
    @Test func damageOverAGroupsEndAndTheNextHeaderRefusesToStart() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        var storage = try open(["path": folder], pool: pool)
        for row in 0..<100 { try await storage.apply([.put(key(row), value: value(row, 1))]) }
        await storage.instance.shutdown()
        let name = try #require(try segments(folder).last)
        let newest = "\(folder)/\(name)"
        let before = try contents(newest)
        let found = groups(before)
        #expect(found.count == 100 && found.last?.end == before.count)
        let damaged = found[10]
        let from = damaged.end - 28
        try overwrite(newest, at: UInt64(from), with: [UInt8](repeating: 0, count: 60))

        let message = try createFailure(["path": folder], pool: pool)
        #expect(message.contains(name) && message.contains("in the group at offset \(damaged.start)")
                && message.contains("valid group follows it at offset \(found[12].start)"), "\(message)")
        #expect(message.contains("Restore the folder from a backup"), "\(message)")
        #expect(try size(newest) == UInt64(before.count), "nothing may be cut off")

        // Restored (here: the damaged bytes put back), every row is there.
        try overwrite(newest, at: UInt64(from), with: Array(before[from..<from + 60]))
        storage = try open(["path": folder], pool: pool)
        let read = try await allRows(storage)
        #expect(read.map(\.value) == (0..<100).map { value($0, 1) })
        await storage.instance.shutdown()
    }

    /// Keys may hold any bytes (a client id is stored raw in a sort key), so a client can place a
    /// complete group header, checksummed with plain CRC-32C and with a huge sequence, in the
    /// log. When a crash then tears the header of the group that holds it, the search for a
    /// later group header must not take the forged one for a real group and refuse the start.
    @Test func aGroupHeaderForgedInAKeyDoesNotBlockRecovery() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        var storage = try open(["path": folder], pool: pool)
        for row in 0..<20 { try await storage.apply([.put(key(row), value: value(row, 1))]) }
        let acknowledged = try size("\(folder)/\(try #require(try segments(folder).last))")
        func le(_ value: UInt64, _ bytes: Int) -> [UInt8] { (0..<bytes).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }
        let payload: [UInt8] = [0x02, 0, 0, 0, 0, 0, 0, 0] + le(32, 8) + le(1 << 40, 8)
        let forged = le(24, 4) + le(UInt64(crc32c(le(24, 4) + payload)), 4) + payload
        let forgedKey = StorageKey(table: "t", partition: Array("client".utf8), sort: Array("id-".utf8) + forged)
        try await storage.apply([.put(forgedKey, value: Array("{}".utf8))])
        await storage.instance.shutdown()
        let newest = "\(folder)/\(try #require(try segments(folder).last))"
        let bytes = try contents(newest)
        let last = try #require(groups(bytes).last)
        #expect(last.start == Int(acknowledged) && last.end == bytes.count)
        // A power loss kept the group's record (with the forged header in it) but not its header.
        try overwrite(newest, at: UInt64(last.start), with: [UInt8](repeating: 0, count: 32))

        storage = try open(["path": folder], pool: pool)
        #expect(try size(newest) == acknowledged, "the torn group is cut off")
        #expect(try await storage.get(forgedKey) == nil)
        #expect(try await allRows(storage).count == 20)
        await storage.instance.shutdown()
    }

    /// Puts `rows` all at once, so the writer thread takes several of them as one group.
    private func putConcurrently(_ storage: StorageBackend, _ rows: Range<Int>) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for row in rows { tasks.addTask { _ = try await storage.apply([.put(key(row), value: value(row, 1, size: 3_000))]) } }
            try await tasks.waitForAll()
        }
    }

    private func roundUp(_ offset: Int) -> Int { (offset + 4_095) / 4_096 * 4_096 }

    /// Writes 20 rows one by one, then bursts of concurrent rows until the newest segment's last
    /// group holds at least 4 batches and spans several 4 KiB blocks. Returns that group and the
    /// number of rows written.
    private func writeABigLastGroup(_ storage: StorageBackend, _ newest: () throws -> String) async throws -> (Group, Int) {
        for row in 0..<20 { try await storage.apply([.put(key(row), value: value(row, 1, size: 3_000))]) }
        var next = 20
        for _ in 0..<30 {
            try await putConcurrently(storage, next..<next + 40)
            next += 40
            if let last = groups(try contents(try newest())).last, last.records.count >= 4,
               last.records.last! >= roundUp(last.start + 32) + 4_096 {
                return (last, next)
            }
        }
        throw TestFailure("the writer never took 4 concurrent batches as one group")
    }

    /// A power loss in the middle of the last group's write: the disk kept a later block of the
    /// group (a whole record of it) but not an earlier one. Nothing of that group was acknowledged,
    /// so recovery removes the whole group and starts.
    @Test func tornLastGroupWithALaterBlockKeptIsCutWhole() async throws {
        let pool = PluginWorkerPool(threads: 4, capacity: 256)
        defer { pool.shutdown() }
        for lost in ["group header", "middle block"] {
            let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
            var storage = try open(["path": folder], pool: pool)
            let (group, written) = try await writeABigLastGroup(storage) { "\(folder)/\(try #require(try segments(folder).last))" }
            await storage.instance.shutdown()
            let newest = "\(folder)/\(try #require(try segments(folder).last))"
            let bytes = try contents(newest)
            #expect(group.end == bytes.count)
            let tornRows = Set(group.records.map { row(bytes, record: $0) })
            let lostStart = lost == "group header" ? group.start : roundUp(group.start + 32)
            let lostEnd = lost == "group header" ? roundUp(group.start + 1) : lostStart + 4_096
            try overwrite(newest, at: UInt64(lostStart), with: [UInt8](repeating: 0, count: lostEnd - lostStart))
            // The last record of the group is intact: the old rule (a valid record follows the bad one) would refuse.
            let last = group.records.last!
            #expect(last >= lostEnd)
            #expect(le32(bytes, last + 4) == crc32c(Array(bytes[last..<last + 4]) + Array(bytes[last + 8..<group.end])))

            storage = try open(["path": folder], pool: pool)
            #expect(try size(newest) == UInt64(group.start), "\(lost): the file is cut where the torn group started")
            let kept = (0..<written).filter { !tornRows.contains($0) }
            let read = try await allRows(storage)
            #expect(read.map(\.value) == kept.map { value($0, 1, size: 3_000) }, "\(lost): every earlier group, none of the torn one")
            for torn in tornRows { #expect(try await storage.get(key(torn)) == nil, "\(lost): row \(torn) was in the torn group") }
            try await storage.apply([.put(key(written), value: value(written, 2))])
            await storage.instance.shutdown()
            storage = try open(["path": folder], pool: pool)
            #expect(try await storage.get(key(written)) == value(written, 2), "\(lost)")
            #expect(try await allRows(storage).count == kept.count + 1)
            await storage.instance.shutdown()
        }
    }

    /// The same damage in a group that a complete, valid group follows is not a torn write: the
    /// start is refused, naming the file and the offset, and nothing is cut.
    @Test func damageInAGroupThatAValidGroupFollowsRefusesToStart() async throws {
        let pool = PluginWorkerPool(threads: 4, capacity: 256)
        defer { pool.shutdown() }
        for damage in ["group header", "record"] {
            let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
            let storage = try open(["path": folder], pool: pool)
            let (group, written) = try await writeABigLastGroup(storage) { "\(folder)/\(try #require(try segments(folder).last))" }
            try await storage.apply([.put(key(written), value: value(written, 1, size: 3_000))])
            await storage.instance.shutdown()
            let name = try #require(try segments(folder).last)
            let newest = "\(folder)/\(name)"
            let before = try contents(newest)
            #expect(before.count > group.end, "a complete group follows the damaged one")
            let offset: Int
            if damage == "group header" {
                offset = group.start
                try overwrite(newest, at: UInt64(offset), with: [UInt8](repeating: 0, count: 32))
            } else {
                offset = group.records[1]
                try overwrite(newest, at: UInt64(offset + 8 + 40), with: [before[offset + 8 + 40] ^ 0x10])
            }
            let message = try createFailure(["path": folder], pool: pool)
            #expect(message.contains(name) && message.contains("offset \(offset)") && message.contains("valid group follows it at offset \(group.end)"),
                    "\(damage): \(message)")
            #expect(message.contains("truncate the file to \(group.start) bytes"), "\(damage): \(message)")
            #expect(try size(newest) == UInt64(before.count), "\(damage): nothing may be cut off")
        }
    }

    @Test func damageFollowedByValidRecordsInTheNewestSegmentRefusesToStart() async throws {
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        // Bit rot in a payload, and a length field that now runs past the end of the file:
        // either way, acknowledged batches follow, so the start is refused and nothing is cut.
        for damage in ["payload", "length"] {
            let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
            let storage = try open(["path": folder], pool: pool)
            for row in 0..<30 { try await storage.apply([.put(key(row), value: value(row, 1, size: 200))]) }
            await storage.instance.shutdown()
            let name = try #require(try segments(folder).last)
            let newest = "\(folder)/\(name)"
            let before = try contents(newest)
            let record = recordOffsets(before)[10]
            if damage == "payload" {
                try overwrite(newest, at: UInt64(record + 8 + 40), with: [before[record + 8 + 40] ^ 0x10])
            } else {
                try overwrite(newest, at: UInt64(record), with: [0xF0, 0xFF, 0xFF, 0x00])
            }
            let message = try createFailure(["path": folder], pool: pool)
            #expect(message.contains(name) && message.contains("offset \(record)") && message.contains("valid group follows"),
                    "\(damage): \(message)")
            #expect(try size(newest) == UInt64(before.count), "\(damage): nothing may be cut off")

            // The operator's last resort (after restoring from a backup): cut the file where the named
            // group starts (one batch per group here, so just before the record), knowing what that loses.
            #expect(message.contains("truncate the file to \(record - 32) bytes"), "\(damage): \(message)")
            try truncate(newest, to: UInt64(record - 32))
            let reopened = try open(["path": folder], pool: pool)
            let rows = try await allRows(reopened)
            #expect(rows.map(\.value) == (0..<10).map { value($0, 1, size: 200) }, "\(damage)")
            await reopened.instance.shutdown()
        }
    }

    @Test func tornTailOfZerosOrAPartialRecordStillRecovers() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        var storage = try open(["path": folder], pool: pool)
        for row in 0..<20 { try await storage.apply([.put(key(row), value: value(row, 1, size: 300))]) }
        await storage.instance.shutdown()
        let newest = "\(folder)/\(try #require(try segments(folder).last))"
        let acknowledged = try size(newest)

        // Pages of a group that never reached the disk read back as zeros.
        try append([UInt8](repeating: 0, count: 8_192), to: newest)
        storage = try open(["path": folder], pool: pool)
        #expect(try await allRows(storage).count == 20)
        #expect(try size(newest) == acknowledged)
        await storage.instance.shutdown()

        // The start of a record whose rest is missing, then zeros.
        let bytes = try contents(newest)
        let last = recordOffsets(bytes).last!
        try append(Array(bytes[last..<last + 100]) + [UInt8](repeating: 0, count: 5_000), to: newest)
        storage = try open(["path": folder], pool: pool)
        #expect(try await allRows(storage).count == 20)
        #expect(try size(newest) == acknowledged)
        try await storage.apply([.put(key(99), value: value(99, 1))])
        await storage.instance.shutdown()
        storage = try open(["path": folder], pool: pool)
        #expect(try await storage.get(key(99)) == value(99, 1))
        await storage.instance.shutdown()
    }

    @Test func damageBeforeTheNewestSegmentRefusesToStart() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        let storage = try open(["path": folder, "segment_mb": "1"], pool: pool)
        // Rows that stay live, so the first segment is never compacted away.
        for row in 0..<4 { try await storage.apply([.put(key(row), value: value(row, 1, size: 300_000))]) }
        await storage.instance.shutdown()
        let files = try segments(folder)
        #expect(files.count >= 2)
        let first = "\(folder)/\(files[0])"
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: first))
        try handle.seek(toOffset: 1_000)
        try handle.write(contentsOf: Data([0xFF, 0x00, 0xFF, 0x00]))
        try handle.close()
        let message = try createFailure(["path": folder], pool: pool)
        #expect(message.contains(files[0]) && message.contains("offset"), "\(message)")
    }

    @Test func compactionKeepsLatestValuesAndRemovesSegments() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        let configuration = ["path": folder, "segment_mb": "1"]
        let rows = 20, rounds = 150
        var storage = try open(configuration, pool: pool)
        // A row written once and never touched: its segment stays mostly live only if
        // compaction copies it correctly.
        let keeper = StorageKey(table: "keep", partition: [], sort: [])
        try await storage.apply([.put(keeper, value: Array("kept".utf8))])
        var highest = 0
        for round in 0..<rounds {
            try await storage.apply((0..<rows).map { .put(key($0), value: value($0, round, size: 2_000)) })
            if round % 10 == 5 {
                // Delete some rows, rewrite one of them later.
                try await storage.apply([.delete(key(round % rows)), .delete(key((round + 1) % rows))])
                try await storage.apply([.put(key(round % rows), value: value(round % rows, round, size: 2_000))])
            }
            if let name = try segments(folder).last, let id = Int(name.prefix(8)) { highest = max(highest, id) }
        }
        // Rows deleted at the end stay deleted.
        try await storage.apply([.delete(key(3)), .delete(key(7))])
        #expect(highest >= 5, "about 6 MB were written in 1 MB segments")
        // Compaction runs on the writer thread between groups; give it a moment to catch up.
        let deadline = ContinuousClock.now + .seconds(20)
        while try segments(folder).count > 3, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        await storage.instance.shutdown()
        let remaining = try segments(folder)
        #expect(remaining.count < highest, "compaction left \(remaining) of \(highest) segments")
        #expect(remaining.count <= 3, "compaction left \(remaining)")

        for reopen in 0..<2 {
            storage = try open(configuration, pool: pool)
            #expect(try await storage.get(keeper) == Array("kept".utf8), "reopen \(reopen)")
            for row in 0..<rows {
                let stored = try await storage.get(key(row))
                if row == 3 || row == 7 {
                    #expect(stored == nil, "row \(row) was deleted (reopen \(reopen))")
                } else {
                    #expect(stored == value(row, rounds - 1, size: 2_000), "row \(row) after reopen \(reopen)")
                }
            }
            let scanned = try await allRows(storage)
            #expect(scanned.count == rows - 2)
            await storage.instance.shutdown()
        }
    }

    @Test func secondInstanceOnTheSameFolderIsRefused() async throws {
        let folder = try TestSupport.scratchFolder().appendingPathComponent("log").path
        let pool = PluginWorkerPool(threads: 2, capacity: 64)
        defer { pool.shutdown() }
        let first = try open(["path": folder], pool: pool)
        try await first.apply([.put(key(1), value: value(1, 1))])
        let message = try createFailure(["path": folder], pool: pool)
        #expect(message.contains("in use"), "\(message)")
        #expect(try await first.get(key(1)) == value(1, 1), "the first instance keeps working")
        await first.instance.shutdown()
        let second = try open(["path": folder], pool: pool)
        #expect(try await second.get(key(1)) == value(1, 1))
        await second.instance.shutdown()
    }

    @Test func badSettingsAndForeignFoldersAreRefusedByName() throws {
        let scratch = try TestSupport.scratchFolder()
        let pool = PluginWorkerPool(threads: 1, capacity: 4)
        defer { pool.shutdown() }
        let folder = scratch.appendingPathComponent("log").path
        #expect(try createFailure([:], pool: pool).contains("'path'"))
        #expect(try createFailure(["path": folder, "segment_mb": "0"], pool: pool).contains("'segment_mb'"))
        #expect(try createFailure(["path": folder, "group_commit_max_batches": "65537"], pool: pool).contains("'group_commit_max_batches'"))
        #expect(try createFailure(["path": folder, "compact_dead_ratio": "0.95"], pool: pool).contains("'compact_dead_ratio'"))
        #expect(try createFailure(["path": scratch.appendingPathComponent("missing/log").path], pool: pool).contains("parent folder does not exist"))
        let foreign = scratch.appendingPathComponent("foreign")
        try FileManager.default.createDirectory(at: foreign, withIntermediateDirectories: true)
        try "hello".write(to: foreign.appendingPathComponent("notes.txt"), atomically: true, encoding: .utf8)
        #expect(try createFailure(["path": foreign.path], pool: pool).contains("notes.txt"))
    }
}
