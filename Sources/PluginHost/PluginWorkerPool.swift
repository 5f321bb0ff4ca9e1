// Threads that run plugin calls, which may block, away from event loops.
import Dispatch
import Foundation
import Synchronization

/// A fixed set of threads running plugin calls from a bounded queue. A full queue
/// is reported to the caller as `PluginCallError.queueFull` instead of growing memory.
public final class PluginWorkerPool: Sendable {
    public typealias Job = @Sendable () -> Void

    private struct State: ~Copyable {
        var jobs: [Job?]
        var head = 0
        var count = 0
        var stopping = false
    }

    private let state: Mutex<State>
    private let available = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let threadCount: Int
    public let capacity: Int

    /// Starts `threads` worker threads sharing a queue of at most `capacity` jobs.
    public init(threads: Int, capacity: Int, name: String = "parley-plugin") {
        precondition(threads > 0 && capacity > 0)
        self.threadCount = threads
        self.capacity = capacity
        self.state = Mutex(State(jobs: Array(repeating: nil, count: capacity)))
        for index in 0..<threads {
            let thread = Thread { [self] in self.runWorker() }
            thread.name = "\(name)-\(index)"
            thread.start()
        }
    }

    /// Queues a job, or throws when the queue is full or the pool is shut down.
    public func submit(_ job: @escaping Job) throws(PluginCallError) {
        let outcome: PluginCallError? = state.withLock { state in
            if state.stopping { return .shutDown }
            if state.count == capacity { return .queueFull(capacity: capacity) }
            state.jobs[(state.head + state.count) % capacity] = job
            state.count += 1
            return nil
        }
        if let outcome { throw outcome }
        available.signal()
    }

    /// Runs every queued job, then stops the threads and waits for them to exit.
    public func shutdown() {
        let alreadyStopping = state.withLock { state in
            defer { state.stopping = true }
            return state.stopping
        }
        if alreadyStopping { return }
        for _ in 0..<threadCount { available.signal() }
        for _ in 0..<threadCount { finished.wait() }
    }

    private func runWorker() {
        while true {
            available.wait()
            let job: Job? = state.withLock { state in
                guard state.count > 0 else { return nil }
                let job = state.jobs[state.head]
                state.jobs[state.head] = nil
                state.head = (state.head + 1) % capacity
                state.count -= 1
                return job
            }
            guard let job else { break }
            job()
        }
        finished.signal()
    }
}

extension PluginWorkerPool {
    /// Runs blocking work on the pool and returns its result to the waiting task.
    public func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async throws(PluginCallError) -> T {
        let result: Result<T, PluginCallError> = await withCheckedContinuation { continuation in
            do {
                try submit { continuation.resume(returning: .success(body())) }
            } catch {
                continuation.resume(returning: .failure(error as! PluginCallError))
            }
        }
        return try result.get()
    }
}
