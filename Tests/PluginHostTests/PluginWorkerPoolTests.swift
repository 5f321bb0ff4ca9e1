// The worker pool bounds its queue and reports a full queue to the caller.
import Dispatch
import Foundation
import PluginHost
import Synchronization
import Testing

@Suite("Plugin worker pool")
struct PluginWorkerPoolTests {
    @Test func fullQueueIsAnErrorNotUnboundedMemory() throws {
        let pool = PluginWorkerPool(threads: 1, capacity: 2)
        let release = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        let ran = Atomic<Int>(0)
        try pool.submit {
            started.signal()
            release.wait()
            ran.add(1, ordering: .relaxed)
        }
        started.wait()
        try pool.submit { ran.add(1, ordering: .relaxed) }
        try pool.submit { ran.add(1, ordering: .relaxed) }
        #expect(throws: PluginCallError.queueFull(capacity: 2)) {
            try pool.submit { ran.add(1, ordering: .relaxed) }
        }
        release.signal()
        pool.shutdown()
        #expect(ran.load(ordering: .relaxed) == 3, "every accepted job ran before shutdown returned")
        #expect(throws: PluginCallError.shutDown) { try pool.submit {} }
    }

    @Test func storageCallOnFullQueueFailsWithQueueFull() async throws {
        let folder = try TestSupport.scratchFolder()
        let library = try PluginLibrary.load(path: try TestSupport.builtPlugin("parley-storage-sqlite"))
        let pool = PluginWorkerPool(threads: 1, capacity: 1)
        defer { pool.shutdown() }
        let storage = try StorageBackend(instance: PluginInstance(library: library, configuration: ["path": folder.appendingPathComponent("db").path], pool: pool, logger: TestSupport.logger))
        let release = DispatchSemaphore(value: 0)
        let started = DispatchSemaphore(value: 0)
        try pool.submit {
            started.signal()
            release.wait()
        }
        started.wait()
        let drained = DispatchSemaphore(value: 0)
        try pool.submit { drained.signal() }
        let key = StorageKey(table: "t", partition: [], sort: [])
        await #expect(throws: PluginCallError.queueFull(capacity: 1)) { try await storage.get(key) }
        release.signal()
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                drained.wait()
                continuation.resume()
            }
        }
        try await storage.apply([.put(key, value: [1])])
        #expect(try await storage.get(key) == [1], "the backend keeps working once the queue drains")
        await storage.instance.shutdown()
        await #expect(throws: PluginCallError.shutDown) { try await storage.get(key) }
    }
}
