public import ParleyPluginABI

/// The status codes of the ABI (`PARLEY_OK`, `PARLEY_E_*`) as a Swift value.
public enum PluginStatus: Int32, Sendable, CustomStringConvertible {
    case ok = 0
    case pending = 1
    case invalid = -1
    case conflict = -2
    case io = -3
    case unsupported = -4
    case busy = -5
    case noMemory = -6
    case corrupt = -7
    case tooLarge = -8
    case notFound = -9
    case verify = -10
    case `internal` = -11

    /// Maps a raw status; codes this host does not know become `.internal`.
    public init(raw: parley_status) {
        self = PluginStatus(rawValue: raw) ?? .internal
    }

    /// A stable name, e.g. `conflict`, used in error codes and logs.
    public var description: String {
        switch self {
        case .ok: "ok"
        case .pending: "pending"
        case .invalid: "invalid"
        case .conflict: "conflict"
        case .io: "io"
        case .unsupported: "unsupported"
        case .busy: "busy"
        case .noMemory: "no_memory"
        case .corrupt: "corrupt"
        case .tooLarge: "too_large"
        case .notFound: "not_found"
        case .verify: "verify"
        case .internal: "internal"
        }
    }
}
