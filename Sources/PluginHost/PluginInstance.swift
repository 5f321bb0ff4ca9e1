// A created plugin instance: its handle, its host context, and the calls made on it.
import ParleyPluginABI
public import Logging
import Metrics
import Synchronization

/// One running instance of a plugin. Calls go through the worker pool; `shutdown`
/// disables the instance, drains the calls in flight and destroys it. The library
/// itself stays loaded.
public final class PluginInstance: @unchecked Sendable {
    /// One call into the plugin: its instance handle and the operation.
    typealias Call = (UnsafeMutableRawPointer?, OpaquePointer) -> parley_status

    public let library: PluginLibrary
    public var info: PluginInfo { library.info }
    let context: PluginHostContext
    let pool: PluginWorkerPool
    private let handle: UnsafeMutableRawPointer?
    private let inFlight = Atomic<Int>(0)
    private let callErrors: Counter
    private let stopped = Atomic<Bool>(false)

    /// Calls the plugin's create() with `configuration`; throws `createFailed`
    /// with the plugin's own message when it refuses.
    public init(library: PluginLibrary, configuration: [String: String], pool: PluginWorkerPool, logger: Logger) throws(PluginLoadError) {
        self.library = library
        self.pool = pool
        callErrors = Counter(label: "parley_plugin_call_errors_total", dimensions: [("plugin", library.info.name)])
        let context = PluginHostContext(pluginName: library.info.name, configuration: configuration, logger: logger)
        self.context = context
        var instance: UnsafeMutableRawPointer?
        var error = [CChar](repeating: 0, count: 1024)
        let status = error.withUnsafeMutableBufferPointer { buffer in
            library.descriptor.create(hostAPI, context.opaque, &instance, buffer.baseAddress, buffer.count)
        }
        guard status == parley_status(PARLEY_OK) else {
            let message = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw .createFailed(plugin: library.info.name, status: PluginStatus(raw: status), message: message.isEmpty ? "no reason given" : message)
        }
        handle = instance
    }

    /// Runs one plugin call on the worker pool and returns what it produced, or
    /// throws the host's or the plugin's error.
    func perform(_ operation: PluginOperation, _ call: @escaping Call) async throws(PluginCallError) -> PluginOutput {
        try admit(operation, call)
        defer { inFlight.subtract(1, ordering: .acquiringAndReleasing) }
        return try outcome(await operation.run(on: pool)).get()
    }

    /// Runs one plugin call on the current thread, which must be a worker of this
    /// instance's pool (a job submitted to `pool`), and calls `completion` on the
    /// thread that finishes it.
    func performHere(_ operation: PluginOperation, _ call: @escaping Call, completion: @escaping @Sendable (Result<PluginOutput, PluginCallError>) -> Void) {
        do {
            try admit(operation, call)
        } catch {
            completion(.failure(error))
            return
        }
        operation.start { [self] output in
            let result = outcome(output)
            inFlight.subtract(1, ordering: .acquiringAndReleasing)
            completion(result)
        }
    }

    /// Runs one plugin call on the current thread, which must be a worker of this instance's
    /// pool, and returns what it produced; see `PluginOperation.runWaiting`.
    func performWaiting(_ operation: PluginOperation, _ call: @escaping Call) throws(PluginCallError) -> PluginOutput {
        try admit(operation, call)
        defer { inFlight.subtract(1, ordering: .acquiringAndReleasing) }
        return try outcome(operation.runWaiting()).get()
    }

    /// Counts a call as in flight and hands `operation` the plugin's handle with `call`; after
    /// `shutdown` began, refuses it and counts nothing. Whoever admitted a call subtracts it
    /// from `inFlight` when it finishes.
    private func admit(_ operation: PluginOperation, _ call: @escaping Call) throws(PluginCallError) {
        inFlight.add(1, ordering: .acquiringAndReleasing)
        guard !stopped.load(ordering: .acquiring) else {
            inFlight.subtract(1, ordering: .acquiringAndReleasing)
            throw .shutDown
        }
        let handle = handle
        operation.call = { op in call(handle, op) }
    }

    /// The output of a finished call, or the host's or the plugin's error.
    private func outcome(_ output: PluginOutput) -> Result<PluginOutput, PluginCallError> {
        if let hostError = output.hostError {
            callErrors.increment()
            return .failure(hostError)
        }
        guard output.status == .ok else {
            // A failed condition is an answer, not a plugin error.
            if output.status != .conflict { callErrors.increment() }
            let failed = output.items.first { $0.outcome != parley_status(PARLEY_OK) }
            return .failure(.plugin(name: info.name, status: output.status, message: output.errorMessage, index: failed?.index))
        }
        return .success(output)
    }

    /// Refuses new calls, waits for those in flight, then calls destroy(). Safe to call twice.
    public func shutdown() async {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        while inFlight.load(ordering: .acquiring) > 0 {
            try? await Task.sleep(for: .milliseconds(5))
        }
        // destroy() may block while it flushes, so it runs on a worker thread too.
        let destroy = library.descriptor.destroy!
        let handle = SendableHandle(pointer: handle)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do {
                try pool.submit {
                    destroy(handle.pointer)
                    continuation.resume()
                }
            } catch {
                destroy(handle.pointer)
                continuation.resume()
            }
        }
    }
}

/// A plugin's instance pointer, which only the plugin dereferences.
private struct SendableHandle: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer?
}
