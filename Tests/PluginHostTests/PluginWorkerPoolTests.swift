// The worker pool bounds its queue and reports a full queue to the caller, wakes workers
// once per burst without losing a job, and runs reads in place on a worker.
import Dispatch
import Foundation
import PluginHost
import Synchronization
import Testing

@Suite("Plugin worker pool", .timeLimit(.minutes(3)))
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

    /// A job that blocks its worker does not hold up the next: submitting wakes a sleeping
    /// worker, and so does a worker that takes a job and leaves others queued behind it.
    @Test(arguments: [true, false]) func aBlockedJobDoesNotHoldUpTheNext(wakeEach: Bool) throws {
        let pool = PluginWorkerPool(threads: 2, capacity: 8)
        defer { pool.shutdown() }
        // Both workers asleep first, so each job needs a wake-up rather than a worker starting.
        Thread.sleep(forTimeInterval: 0.05)
        let secondRan = DispatchSemaphore(value: 0)
        let firstDone = DispatchSemaphore(value: 0)
        let first: PluginWorkerPool.Job = {
            // Waits for the second job, which only another worker can run.
            if secondRan.wait(timeout: .now() + 10) == .success { firstDone.signal() }
        }
        if wakeEach {
            try pool.submit(first)
            try pool.submit { secondRan.signal() }
        } else {
            // Both queued without a wake-up, then one: the worker that takes the first wakes
            // the other for the second.
            try pool.submit(first, wake: false)
            try pool.submit({ secondRan.signal() }, wake: false)
            pool.wake()
        }
        #expect(firstDone.wait(timeout: .now() + 10) == .success, "the second job ran while the first blocked")
    }

    /// Jobs from several threads, woken per job, per burst or not at all (left to a worker
    /// that is awake), all run once; shutdown runs what is queued and returns.
    @Test func everyJobRunsOnceWhateverTheWakeUps() throws {
        let pool = PluginWorkerPool(threads: 3, capacity: 100_000)
        let ran = Atomic<Int>(0)
        let submitted = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for index in 0..<5_000 {
                let wake = (index + thread) % 7 == 0
                if (try? pool.submit({ ran.add(1, ordering: .relaxed) }, wake: wake)) != nil {
                    submitted.add(1, ordering: .relaxed)
                }
                if index % 500 == 499 { pool.wake() }
            }
        }
        pool.wake()
        let deadline = ContinuousClock.now + .seconds(10)
        while ran.load(ordering: .relaxed) < submitted.load(ordering: .relaxed), ContinuousClock.now < deadline {
            Thread.sleep(forTimeInterval: 0.001)
        }
        #expect(submitted.load(ordering: .relaxed) == 20_000)
        #expect(ran.load(ordering: .relaxed) == 20_000, "every job ran once")
        try pool.submit({ ran.add(1, ordering: .relaxed) }, wake: false)
        pool.shutdown()
        #expect(ran.load(ordering: .relaxed) == 20_001, "shutdown ran the job queued without a wake-up")
    }

    /// `getHere` and `scanHere` on a worker return what the plugin emitted, also when it
    /// answers PENDING and completes later from a thread of its own.
    @Test func readsOnAWorkerWaitForALateCompletion() async throws {
        let output = try TestSupport.scratchFolder().appendingPathComponent("late.so")
        try TestSupport.compilePlugin([TestSupport.fixtures.appendingPathComponent("late_reads.c").path], include: TestSupport.liveInclude, output: output)
        let pool = PluginWorkerPool(threads: 1, capacity: 8)
        defer { pool.shutdown() }
        let storage = try StorageBackend(instance: PluginInstance(library: PluginLibrary.load(path: output.path), configuration: [:], pool: pool, logger: TestSupport.logger))
        let partition = Array("p".utf8)
        let key = StorageKey(table: "t", partition: partition, sort: Array("k".utf8))
        let (found, absent, rows) = try await storage.run {
            Result { () throws(PluginCallError) in
                (try storage.getHere(key), try storage.getHere(StorageKey(table: "t", partition: partition, sort: [])),
                 try storage.scanHere(table: Array("t".utf8), partition: partition, StorageScan(limit: 2)))
            }
        }.get()
        #expect(found == partition)
        #expect(absent == nil)
        #expect(rows == [StorageRow(sortKey: Array("a".utf8), value: partition), StorageRow(sortKey: Array("b".utf8), value: partition)])
        #expect(try await storage.get(key) == partition, "the task's read agrees")
        await storage.instance.shutdown()
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
