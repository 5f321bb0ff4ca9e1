// Threads that run plugin calls, which may block, away from event loops.
import Dispatch
import Foundation
import Synchronization

/// A fixed set of threads running plugin calls from a bounded queue. A full queue
/// is reported to the caller as `PluginCallError.queueFull` instead of growing memory.
///
/// A submission wakes a sleeping worker only when no wake-up is already on its way; a
/// worker that takes a job and sees more queued wakes the next. A burst of jobs from an
/// event loop thus costs one wake-up, not one per job: on a busy core each wake-up is a
/// system call and usually a switch of threads, which cost more than a small job itself.
public final class PluginWorkerPool: Sendable {
    public typealias Job = @Sendable () -> Void

    private struct State: ~Copyable {
        var jobs: [Job?]
        var head = 0
        var count = 0
        var stopping = false
        /// Workers that found the queue empty and sleep (or are about to) on `available`.
        var sleeping = 0
        /// Signals sent to `available` that no worker has woken from yet.
        var waking = 0

        /// Takes one sleeper off the list for a signal, if one is needed: there is work,
        /// a worker sleeps, and no wake-up is already on its way.
        mutating func wakeOne() -> Bool {
            guard count > 0, sleeping > 0, waking == 0 else { return false }
            sleeping -= 1
            waking += 1
            return true
        }
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

    /// Queues a job, or throws when the queue is full or the pool is shut down. With `wake`
    /// false no sleeping worker is woken for it (one already awake may take it): the caller
    /// calls `wake()` soon, once for a burst of jobs.
    public func submit(_ job: @escaping Job, wake: Bool = true) throws(PluginCallError) {
        let outcome: Result<Bool, PluginCallError> = state.withLock { state in
            if state.stopping { return .failure(.shutDown) }
            if state.count == capacity { return .failure(.queueFull(capacity: capacity)) }
            state.jobs[(state.head + state.count) % capacity] = job
            state.count += 1
            return .success(wake && state.wakeOne())
        }
        if try outcome.get() { available.signal() }
    }

    /// Wakes a sleeping worker for jobs queued with `wake` false, unless one is on its way.
    public func wake() {
        if state.withLock({ $0.wakeOne() }) { available.signal() }
    }

    /// Runs every queued job, then stops the threads and waits for them to exit.
    public func shutdown() {
        let sleepers: Int? = state.withLock { state in
            if state.stopping { return nil }
            state.stopping = true
            defer { state.sleeping = 0 }
            state.waking += state.sleeping
            return state.sleeping
        }
        guard let sleepers else { return }
        for _ in 0..<sleepers { available.signal() }
        for _ in 0..<threadCount { finished.wait() }
    }

    private func runWorker() {
        var woken = false
        while true {
            enum Next { case run(Job, wakeAnother: Bool), sleep, exit }
            let next: Next = state.withLock { state in
                if woken { state.waking -= 1 }
                if state.count > 0 {
                    let job = state.jobs[state.head]!
                    state.jobs[state.head] = nil
                    state.head = (state.head + 1) % capacity
                    state.count -= 1
                    return .run(job, wakeAnother: state.wakeOne())
                }
                if state.stopping { return .exit }
                state.sleeping += 1
                return .sleep
            }
            switch next {
            case .run(let job, let wakeAnother):
                woken = false
                if wakeAnother { available.signal() }
                job()
            case .sleep:
                available.wait()
                woken = true
            case .exit:
                finished.signal()
                return
            }
        }
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
