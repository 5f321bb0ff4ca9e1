// Calls from the plugin into the host's parley_host_api table.
import ParleyPluginABI

/// A failure inside the plugin, reported to the host as a status and a message.
struct StoreError: Error {
    var status: parley_status
    var message: String
    /// The failed write of a batch, when a condition failed.
    var index: Int? = nil

    static func io(_ message: String) -> StoreError { StoreError(status: parley_status(PARLEY_E_IO), message: message) }
    static func invalid(_ message: String) -> StoreError { StoreError(status: parley_status(PARLEY_E_INVALID), message: message) }
    static func tooLarge(_ message: String) -> StoreError { StoreError(status: parley_status(PARLEY_E_TOO_LARGE), message: message) }
}

/// The host table and this instance's handle, which stay valid for the life of the process.
struct HostCalls: @unchecked Sendable {
    let api: UnsafePointer<parley_host_api>
    let host: OpaquePointer?

    func log(_ level: parley_log_level, _ message: String) {
        var message = message
        message.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { api.pointee.log(host, level, $0.baseAddress, $0.count) }
        }
    }

    func config(_ key: String) -> String? {
        api.pointee.config_get(host, key).map { String(cString: $0) }
    }

    func metric(_ kind: parley_metric_kind, _ name: String, _ help: String) -> OpaquePointer? {
        api.pointee.metric_register(host, kind, name, help)
    }

    func add(_ metric: OpaquePointer?, _ delta: UInt64) {
        if let metric { api.pointee.metric_add(metric, delta) }
    }

    func observe(_ metric: OpaquePointer?, _ value: Double) {
        if let metric { api.pointee.metric_observe(metric, value) }
    }

    /// Reports an error on op and returns its status, for a synchronous return.
    func fail(_ op: OpaquePointer?, _ error: StoreError) -> parley_status {
        var message = error.message
        message.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { api.pointee.set_error(op, $0.baseAddress, $0.count) }
        }
        if let index = error.index {
            api.pointee.emit_item(op, index, error.status, 0, parley_bytes(data: nil, len: 0))
        }
        return error.status
    }

    /// Emits a row; returns false when the host wants no more.
    func emitRow(_ op: OpaquePointer?, sortKey: parley_bytes, value: parley_bytes) -> Bool {
        api.pointee.emit_row(op, sortKey, value) == 0
    }

    func emitCounter(_ op: OpaquePointer?, index: Int, value: Int64) {
        api.pointee.emit_item(op, index, parley_status(PARLEY_OK), UInt64(bitPattern: value), parley_bytes(data: nil, len: 0))
    }

    func complete(_ op: OpaquePointer?, _ status: parley_status) {
        api.pointee.complete(op, status)
    }
}

/// Writes message into a C buffer of size bytes, truncated and NUL-terminated.
func copyCString(_ message: String, to buffer: UnsafeMutablePointer<CChar>?, size: Int) {
    guard let buffer, size > 0 else { return }
    let bytes = Array(message.utf8.prefix(size - 1))
    for (index, byte) in bytes.enumerated() { buffer[index] = CChar(bitPattern: byte) }
    buffer[bytes.count] = 0
}

extension parley_bytes {
    var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: data, count: data == nil ? 0 : len) }
}
