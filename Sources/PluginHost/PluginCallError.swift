/// A plugin call that did not succeed: the plugin's status and message, or the
/// host's reason for not making the call.
public enum PluginCallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The plugin reported an error status, with its message when it set one.
    /// For a failed batch condition, `index` is the write that failed.
    case plugin(name: String, status: PluginStatus, message: String, index: Int?)
    /// The host refused the arguments before calling the plugin.
    case invalidArgument(String)
    /// The worker pool's queue is full; the caller may retry later.
    case queueFull(capacity: Int)
    /// The plugin is disabled (shutting down).
    case shutDown

    /// A stable identifier, e.g. `plugin.conflict` or `plugin.queue_full`.
    public var code: String {
        switch self {
        case .plugin(_, let status, _, _): "plugin.\(status)"
        case .invalidArgument: "plugin.invalid_argument"
        case .queueFull: "plugin.queue_full"
        case .shutDown: "plugin.shut_down"
        }
    }

    /// The plugin's status, or the status that best describes a host-side refusal.
    public var status: PluginStatus {
        switch self {
        case .plugin(_, let status, _, _): status
        case .invalidArgument: .invalid
        case .queueFull: .busy
        case .shutDown: .unsupported
        }
    }

    public var description: String {
        switch self {
        case .plugin(let name, let status, let message, let index):
            let at = index.map { " at write \($0)" } ?? ""
            return "plugin \(name) failed (\(status))\(at): \(message.isEmpty ? "no message" : message) [\(code)]"
        case .invalidArgument(let reason):
            return "invalid plugin call: \(reason) [\(code)]"
        case .queueFull(let capacity):
            return "plugin worker queue is full (\(capacity) calls waiting) [\(code)]"
        case .shutDown:
            return "plugin is shut down [\(code)]"
        }
    }
}
