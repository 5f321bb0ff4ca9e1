// One plugin call in flight: owns its inputs, collects its results, and resumes
// the waiting Swift task when the call finishes.
import ParleyPluginABI
import Glibc
import Synchronization
import Dispatch

/// A result item reported with `emit_item`.
public struct PluginItem: Sendable, Equatable {
    public var index: Int
    public var outcome: Int32
    public var value: UInt64
    public var detail: String
}

/// Facts about a media blob reported with `emit_blob_info`.
public struct PluginBlobInfo: Sendable, Equatable {
    public var size: UInt64
    public var sha256: [UInt8]
    public var contentType: String
}

/// Everything an operation produced.
struct PluginOutput: Sendable {
    var rows: [(sortKey: [UInt8], value: [UInt8])] = []
    var items: [PluginItem] = []
    var bytes: [UInt8] = []
    var blobInfo: PluginBlobInfo?
    var status: PluginStatus = .ok
    var errorMessage = ""
    /// Set when the host could not make the call at all.
    var hostError: PluginCallError?
}

/// The object behind a `parley_op *`. The plugin sees it as an opaque pointer
/// that holds one retain from the call until the operation finishes.
final class PluginOperation: @unchecked Sendable {
    static let maxErrorBytes = 1024

    /// Memory holding the inputs the plugin borrows; freed when the operation
    /// finishes, because a PENDING call may read them until it calls complete().
    /// Inputs are packed into chunks so a batch costs a few allocations, not one per key.
    private var inputs: [UnsafeMutableRawPointer] = []
    private var chunkFree = 0
    private var chunkNext: UnsafeMutableRawPointer?
    private static let chunkSize = 16_384

    /// Written only by the plugin's calls for this op, which the ABI serializes.
    var output = PluginOutput()
    /// Rows the caller wants at most; emit_row asks the plugin to stop after it.
    var rowLimit = Int.max
    private let finished = Atomic<Bool>(false)
    private var continuation: CheckedContinuation<PluginOutput, Never>?
    /// Set instead of `continuation` by `start(here:)`: runs on the thread that finishes the call.
    private var onFinish: (@Sendable (PluginOutput) -> Void)?

    /// Copies bytes into memory owned by the operation and returns a borrowed view.
    func borrow(_ bytes: [UInt8]) -> parley_bytes {
        guard !bytes.isEmpty else { return parley_bytes(data: nil, len: 0) }
        let memory = allocate(byteCount: bytes.count, alignment: 1)
        bytes.withUnsafeBytes { memory.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return parley_bytes(data: memory.assumingMemoryBound(to: UInt8.self), len: bytes.count)
    }

    /// Allocates an operation-owned array the plugin may read until completion.
    func borrowArray<T>(of type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        let memory = allocate(byteCount: max(1, count) * MemoryLayout<T>.stride, alignment: MemoryLayout<T>.alignment)
        return memory.bindMemory(to: T.self, capacity: max(1, count))
    }

    func allocate(byteCount: Int, alignment: Int) -> UnsafeMutableRawPointer {
        if byteCount > Self.chunkSize / 4 {
            let memory = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: max(alignment, 16))
            inputs.append(memory)
            return memory
        }
        if let next = chunkNext {
            let padding = (alignment - Int(bitPattern: next) % alignment) % alignment
            if padding + byteCount <= chunkFree {
                chunkNext = next + padding + byteCount
                chunkFree -= padding + byteCount
                return next + padding
            }
        }
        let chunk = UnsafeMutableRawPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
        inputs.append(chunk)
        chunkNext = chunk + byteCount
        chunkFree = Self.chunkSize - byteCount
        return chunk
    }

    /// The plugin call, built by the caller from C values the operation owns.
    var call: ((OpaquePointer) -> parley_status)?

    /// Submits the call to the pool and waits for it to finish. The continuation
    /// is installed before the call starts, so a completion from another thread
    /// can never race ahead of it.
    func run(on pool: PluginWorkerPool) async -> PluginOutput {
        await withCheckedContinuation { continuation in
            self.continuation = continuation
            do throws(PluginCallError) {
                try pool.submit { self.invoke() }
            } catch {
                self.output.hostError = error
                self.continuation = nil
                continuation.resume(returning: self.output)
            }
        }
    }

    /// Runs the call on the current thread, which must be a plugin worker, and calls
    /// `completion` on the thread that finishes it: this one, or the plugin's own
    /// thread when the call returned PENDING. No task or continuation is involved,
    /// which saves two thread hops per call on the chat hot path.
    func start(here completion: @escaping @Sendable (PluginOutput) -> Void) {
        onFinish = completion
        invoke()
    }

    /// Runs the call on the current thread, which must be a plugin worker, and returns what
    /// it produced. A call the plugin finishes at once (every in-tree plugin's reads) returns
    /// without waiting; one answered PENDING holds this worker until the plugin completes it.
    func runWaiting() -> PluginOutput {
        let done = DispatchSemaphore(value: 0)
        start(here: { _ in done.signal() })
        done.wait()
        return output
    }

    /// Runs the call on the current (worker) thread, finishing at once when the
    /// plugin did not return PENDING.
    private func invoke() {
        let pointer = OpaquePointer(Unmanaged.passRetained(self).toOpaque())
        let status = call!(pointer)
        if status != parley_status(PARLEY_PENDING) {
            PluginOperation.finish(pointer, status: status)
        }
    }

    /// Ends the operation (from `complete` or a synchronous return): frees inputs,
    /// resumes the caller, drops the plugin's retain. A second complete() is a
    /// plugin bug the ABI forbids: the op may already be freed, so it cannot be detected
    /// reliably; the flag only keeps a racing double completion from resuming twice.
    static func finish(_ pointer: OpaquePointer, status: parley_status) {
        let unmanaged = Unmanaged<PluginOperation>.fromOpaque(UnsafeRawPointer(pointer))
        let operation = unmanaged.takeUnretainedValue()
        guard !operation.finished.exchange(true, ordering: .acquiringAndReleasing) else { return }
        operation.output.status = status == parley_status(PARLEY_PENDING) ? .internal : PluginStatus(raw: status)
        if status == parley_status(PARLEY_PENDING) {
            operation.output.errorMessage = "plugin completed with PARLEY_PENDING, which is not a final status"
        }
        operation.discard()
        let continuation = operation.continuation
        operation.continuation = nil
        let onFinish = operation.onFinish
        operation.onFinish = nil
        continuation?.resume(returning: operation.output)
        onFinish?(operation.output)
        unmanaged.release()
    }

    static func from(_ pointer: OpaquePointer?) -> PluginOperation? {
        pointer.map { Unmanaged<PluginOperation>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }

    /// Frees the inputs of an operation that never reached the plugin (a batch with nothing
    /// to store, one that broke a limit, a call after shutdown); `finish` has already freed
    /// those of every other.
    deinit {
        discard()
    }

    private func discard() {
        for input in inputs { input.deallocate() }
        inputs.removeAll()
    }
}

extension Array where Element == UInt8 {
    init(_ bytes: parley_bytes) {
        if bytes.len == 0 || bytes.data == nil {
            self = []
        } else {
            self = Array(UnsafeBufferPointer(start: bytes.data, count: bytes.len))
        }
    }
}
