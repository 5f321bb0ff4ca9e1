// The parley_host_api table every plugin receives: logging, allocation,
// configuration, metrics, and the result and completion functions.
import ParleyPluginABI
import Glibc
import Logging
import Metrics
import Synchronization

/// What the host knows about one plugin instance; a `parley_host *` points here.
final class PluginHostContext: @unchecked Sendable {
    let pluginName: String
    let logger: Logger
    /// NUL-terminated copies of the configuration, alive until the instance is destroyed.
    private let configuration: [String: UnsafeMutablePointer<CChar>]
    private let metrics = Mutex<[String: PluginMetric]>([:])

    init(pluginName: String, configuration: [String: String], logger: Logger) {
        self.pluginName = pluginName
        var logger = logger
        logger[metadataKey: "plugin"] = .string(pluginName)
        self.logger = logger
        self.configuration = configuration.mapValues { strdup($0)! }
    }

    deinit {
        for value in configuration.values { free(value) }
    }

    func configValue(_ key: String) -> UnsafePointer<CChar>? {
        configuration[key].map { UnsafePointer($0) }
    }

    /// Returns the metric registered under name, creating it on first use.
    func metric(kind: parley_metric_kind, name: String, help: String) -> PluginMetric? {
        let valid = !name.isEmpty && name.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
        guard valid else { return nil }
        let label = "parley_plugin_\(pluginName.replacingDashes)_\(name)"
        return metrics.withLock { metrics in
            if let existing = metrics[name] { return existing.kind == kind ? existing : nil }
            let metric = PluginMetric(kind: kind, label: label)
            metrics[name] = metric
            return metric
        }
    }

    var opaque: OpaquePointer { OpaquePointer(Unmanaged.passUnretained(self).toOpaque()) }

    static func from(_ pointer: OpaquePointer?) -> PluginHostContext? {
        pointer.map { Unmanaged<PluginHostContext>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }
}

/// A metric a plugin registered, recorded through swift-metrics.
final class PluginMetric: Sendable {
    let kind: parley_metric_kind
    private let counter: Counter?
    private let gauge: Gauge?
    private let recorder: Recorder?

    init(kind: parley_metric_kind, label: String) {
        self.kind = kind
        counter = kind == PARLEY_METRIC_COUNTER ? Counter(label: label) : nil
        gauge = kind == PARLEY_METRIC_GAUGE ? Gauge(label: label) : nil
        recorder = kind == PARLEY_METRIC_HISTOGRAM ? Recorder(label: label, aggregate: true) : nil
    }

    func add(_ delta: UInt64) { counter?.increment(by: Int64(clamping: delta)) }
    func set(_ value: Double) { gauge?.record(value) }
    func observe(_ value: Double) { recorder?.record(value) }

    static func from(_ pointer: OpaquePointer?) -> PluginMetric? {
        pointer.map { Unmanaged<PluginMetric>.fromOpaque(UnsafeRawPointer($0)).takeUnretainedValue() }
    }
}

extension String {
    var replacingDashes: String { String(map { $0 == "-" ? "_" : $0 }) }

    init(bytes: UnsafePointer<CChar>?, count: Int) {
        guard let bytes, count > 0 else { self = ""; return }
        self = String(decoding: UnsafeRawBufferPointer(start: bytes, count: count), as: UTF8.self)
    }
}

private nonisolated(unsafe) let hostVersionString = strdup(parleyVersion)!
private nonisolated(unsafe) let hostBuildTagString = strdup(PluginLibrary.hostBuildTag)!

/// The host API table, built once and valid for the life of the process.
nonisolated(unsafe) let hostAPI: UnsafePointer<parley_host_api> = {
    var api = parley_host_api()
    api.struct_size = UInt32(MemoryLayout<parley_host_api>.stride)
    api.abi_major = UInt16(PARLEY_ABI_MAJOR)
    api.abi_minor = UInt16(PARLEY_ABI_MINOR)
    api.host_version = UnsafePointer(hostVersionString)
    api.build_tag = UnsafePointer(hostBuildTagString)
    api.log = { host, level, message, length in
        guard let context = PluginHostContext.from(host) else { return }
        let text = String(bytes: message, count: length)
        let swiftLevel: Logger.Level =
            switch level {
            case PARLEY_LOG_TRACE: .trace
            case PARLEY_LOG_DEBUG: .debug
            case PARLEY_LOG_INFO: .info
            case PARLEY_LOG_WARNING: .warning
            default: .error
            }
        context.logger.log(level: swiftLevel, "\(text)")
    }
    api.alloc = { size in malloc(size) }
    api.free = { pointer in free(pointer) }
    api.config_get = { host, key in
        guard let context = PluginHostContext.from(host), let key else { return nil }
        return context.configValue(String(cString: key))
    }
    api.metric_register = { host, kind, name, help in
        guard let context = PluginHostContext.from(host), let name else { return nil }
        let metric = context.metric(kind: kind, name: String(cString: name), help: help.map { String(cString: $0) } ?? "")
        return metric.map { OpaquePointer(Unmanaged.passUnretained($0).toOpaque()) }
    }
    api.metric_add = { metric, delta in PluginMetric.from(metric)?.add(delta) }
    api.metric_set = { metric, value in PluginMetric.from(metric)?.set(value) }
    api.metric_observe = { metric, value in PluginMetric.from(metric)?.observe(value) }
    api.complete = { op, status in
        guard let op else { return }
        PluginOperation.finish(op, status: status)
    }
    api.set_error = { op, message, length in
        guard let operation = PluginOperation.from(op) else { return }
        let text = String(bytes: message, count: min(length, PluginOperation.maxErrorBytes))
        operation.output.errorMessage = text
    }
    api.emit_row = { op, sortKey, value in
        guard let operation = PluginOperation.from(op) else { return 1 }
        guard operation.output.rows.count < operation.rowLimit else { return 1 }
        operation.output.rows.append((sortKey: [UInt8](sortKey), value: [UInt8](value)))
        return operation.output.rows.count < operation.rowLimit ? 0 : 1
    }
    api.emit_item = { op, index, outcome, value, detail in
        guard let operation = PluginOperation.from(op) else { return }
        let text = String(decoding: [UInt8](detail), as: UTF8.self)
        operation.output.items.append(PluginItem(index: index, outcome: outcome, value: value, detail: text))
    }
    api.emit_bytes = { op, chunk in
        guard let operation = PluginOperation.from(op) else { return 1 }
        operation.output.bytes.append(contentsOf: [UInt8](chunk))
        return 0
    }
    api.emit_blob_info = { op, size, sha256, contentType in
        guard let operation = PluginOperation.from(op) else { return }
        let text = String(decoding: [UInt8](contentType), as: UTF8.self)
        operation.output.blobInfo = PluginBlobInfo(size: size, sha256: [UInt8](sha256), contentType: text)
    }
    let pointer = UnsafeMutablePointer<parley_host_api>.allocate(capacity: 1)
    pointer.initialize(to: api)
    return UnsafePointer(pointer)
}()
