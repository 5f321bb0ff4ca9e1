// parleyd's settings: defaults, overridden by a JSON file, then by PARLEY_*
// environment variables, then by --set KEY=VALUE; every value checked at start.
import Foundation

/// A setting that is missing, malformed or unknown. `key` names it as the operator wrote it.
public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    public var key: String
    public var problem: String

    public var description: String { "configuration key '\(key)': \(problem) [config.invalid]" }
}

/// Every setting parleyd reads, with its default and meaning; `parleyd serve --help` prints this table.
public enum ServerSetting: String, CaseIterable, Sendable {
    case dataFolder = "data.folder"
    case pluginFolders = "plugins.folders"
    case pluginWorkers = "plugins.workers"
    case pluginQueueDepth = "plugins.queue_depth"
    case storagePlugin = "storage.plugin"
    case logLevel = "log.level"
    case listeners = "listeners"
    case httpHost = "http.host"
    case httpPort = "http.port"
    case chatHost = "chat.host"
    case chatPort = "chat.port"
    case chatPublicURL = "chat.public_url"
    case tlsCertificate = "tls.certificate"
    case tlsKey = "tls.key"
    case maxFrameBytes = "chat.max_frame_bytes"
    case pingInterval = "chat.ping_interval_seconds"
    case idleTimeout = "chat.idle_timeout_seconds"
    case rateLimit = "chat.rate_limit_per_second"
    case outboxFrames = "chat.outbox_frames"
    case maxBodyBytes = "messages.max_body_bytes"
    case maxGroupMembers = "groups.max_members"
    case presenceGrace = "presence.grace_seconds"

    public var defaultValue: String {
        switch self {
        case .dataFolder: "./data"
        case .pluginFolders: ""
        case .pluginWorkers: "4"
        case .pluginQueueDepth: "4096"
        case .storagePlugin: "storage-sqlite"
        case .logLevel: "info"
        case .listeners: "http,chat"
        case .httpHost: "127.0.0.1"
        case .httpPort: "8080"
        case .chatHost: "127.0.0.1"
        case .chatPort: "8081"
        case .chatPublicURL: ""
        case .tlsCertificate: ""
        case .tlsKey: ""
        case .maxFrameBytes: "131072"
        case .pingInterval: "15"
        case .idleTimeout: "45"
        case .rateLimit: "200"
        case .outboxFrames: "2000"
        case .maxBodyBytes: "65536"
        case .maxGroupMembers: "100"
        case .presenceGrace: "5"
        }
    }

    public var help: String {
        switch self {
        case .dataFolder: "folder for the database and other state; created if missing"
        case .pluginFolders: "comma-separated plugin folders searched before <data.folder>/plugins and the executable's folder"
        case .pluginWorkers: "threads running plugin calls (1-256)"
        case .pluginQueueDepth: "plugin calls that may wait for a worker before callers get 'busy' (1-1000000)"
        case .storagePlugin: "name of the storage plugin"
        case .logLevel: "trace, debug, info, notice, warning, error or critical"
        case .listeners: "which listeners this node runs: http, chat, or both (http,chat)"
        case .httpHost: "address the HTTP API listens on"
        case .httpPort: "port of the HTTP API (0 picks a free one)"
        case .chatHost: "address the chat (WebSocket) listener listens on"
        case .chatPort: "port of the chat listener (0 picks a free one)"
        case .chatPublicURL: "WebSocket URL that discovery hands to clients; default ws(s)://chat.host:chat.port/v1/ws"
        case .tlsCertificate: "PEM certificate chain; with tls.key, both listeners use TLS (https, wss)"
        case .tlsKey: "PEM private key for tls.certificate"
        case .maxFrameBytes: "largest WebSocket frame accepted; larger ones close the connection with 1009 (1024-16777216)"
        case .pingInterval: "seconds between server pings on a quiet connection (1-3600)"
        case .idleTimeout: "seconds without any frame or pong before a connection is closed (2-7200)"
        case .rateLimit: "frames per second one connection may send, bursts of twice that (1-100000)"
        case .outboxFrames: "frames queued for a client that reads too slowly before it is closed with 4008 (1-1000000)"
        case .maxBodyBytes: "largest message body in bytes (1-1048576)"
        case .maxGroupMembers: "most members a group may have (2-100)"
        case .presenceGrace: "seconds a user stays online after their last connection closes, so quick reconnects do not flap (0-300)"
        }
    }

    /// The environment variable that sets it, e.g. PARLEY_DATA_FOLDER.
    public var environmentVariable: String { ServerConfiguration.environmentName(rawValue) }
}

/// The resolved configuration of one parleyd process.
public struct ServerConfiguration: Sendable {
    /// Server settings by key, after every source was applied.
    public private(set) var values: [String: String]
    /// Plugin settings (`plugin.NAME.SETTING`) from the file, and from --set.
    private var filePluginSettings: [String: [String: String]] = [:]
    private var overridePluginSettings: [String: [String: String]] = [:]
    /// PARLEY_PLUGIN_<NAME>_<SETTING> variables, resolved once plugin names are known.
    private var pluginEnvironment: [(String, String)] = []
    /// PARLEY_* variables that set nothing (a misspelled setting, most likely), each with the
    /// closest setting's variable when one is near; logged at start, not fatal, since other
    /// programs (the `parley` client) read PARLEY_* variables of their own.
    public private(set) var unusedEnvironment: [(name: String, suggestion: String?)] = []

    /// PARLEY_* variables that other programs of the project read, not settings of parleyd.
    static let otherProgramsVariables: Set<String> = [
        "PARLEY_CONFIG", "PARLEY_CONFIG_DIR", "PARLEY_SERVER", "PARLEY_PASSWORD", "PARLEY_FOLLOW_SECONDS", "PARLEY_BENCHMARKS",
    ]

    public static func environmentName(_ key: String) -> String {
        "PARLEY_" + key.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }.map(String.init).joined()
    }

    /// Reads `file` (JSON, optional), the environment and `overrides` (KEY=VALUE).
    public init(file: String?, environment: [String: String], overrides: [String]) throws(ConfigurationError) {
        values = Dictionary(uniqueKeysWithValues: ServerSetting.allCases.map { ($0.rawValue, $0.defaultValue) })
        if let file {
            for (key, value) in try Self.readJSON(file) { try set(key, value, fromFile: true) }
        }
        for setting in ServerSetting.allCases {
            if let value = environment[setting.environmentVariable] { values[setting.rawValue] = value }
        }
        for (name, value) in environment where name.hasPrefix("PARLEY_PLUGIN_") {
            pluginEnvironment.append((String(name.dropFirst("PARLEY_PLUGIN_".count)), value))
        }
        unusedEnvironment = Self.unused(environment.keys)
        for override in overrides {
            guard let equals = override.firstIndex(of: "="), equals != override.startIndex else {
                throw ConfigurationError(key: override, problem: "--set expects KEY=VALUE")
            }
            try set(String(override[..<equals]), String(override[override.index(after: equals)...]), fromFile: false)
        }
        try validate()
    }

    /// The PARLEY_* names that are neither a setting, a plugin's setting nor another
    /// program's, sorted, with the nearest setting's name when at most two edits away.
    static func unused(_ names: some Sequence<String>) -> [(name: String, suggestion: String?)] {
        let settings = ServerSetting.allCases.map(\.environmentVariable)
        return names.filter { name in
            name.hasPrefix("PARLEY_") && !name.hasPrefix("PARLEY_PLUGIN_") && !settings.contains(name) && !otherProgramsVariables.contains(name)
        }.sorted().map { name in
            let nearest = settings.map { ($0, editDistance(Array(name.utf8), Array($0.utf8))) }.min { $0.1 < $1.1 }
            return (name, nearest.flatMap { $0.1 <= 2 ? $0.0 : nil })
        }
    }

    /// Levenshtein distance between two byte strings.
    private static func editDistance(_ a: [UInt8], _ b: [UInt8]) -> Int {
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1] + Array(repeating: 0, count: b.count)
            for (j, y) in b.enumerated() {
                current[j + 1] = Swift.min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }

    private mutating func set(_ key: String, _ value: String, fromFile: Bool) throws(ConfigurationError) {
        if key.hasPrefix("plugin.") {
            let parts = key.split(separator: ".", maxSplits: 2)
            guard parts.count == 3, !parts[1].isEmpty, !parts[2].isEmpty else {
                throw ConfigurationError(key: key, problem: "plugin settings are named plugin.<plugin name>.<setting>")
            }
            if fromFile {
                filePluginSettings[String(parts[1]), default: [:]][String(parts[2])] = value
            } else {
                overridePluginSettings[String(parts[1]), default: [:]][String(parts[2])] = value
            }
        } else if ServerSetting(rawValue: key) != nil {
            values[key] = value
        } else {
            throw ConfigurationError(key: key, problem: "unknown setting; `parleyd serve --help` lists them")
        }
    }

    private static func readJSON(_ file: String) throws(ConfigurationError) -> [(String, String)] {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw ConfigurationError(key: "--config", problem: "cannot read \(file)")
        }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw ConfigurationError(key: "--config", problem: "\(file) is not valid JSON: \(error.localizedDescription)")
        }
        guard let root = object as? [String: Any] else {
            throw ConfigurationError(key: "--config", problem: "\(file) must hold a JSON object")
        }
        var flat: [(String, String)] = []
        try flatten(root, prefix: "", into: &flat)
        return flat
    }

    /// Turns nested objects into dotted keys; arrays of strings become comma-separated lists.
    private static func flatten(_ object: [String: Any], prefix: String, into flat: inout [(String, String)]) throws(ConfigurationError) {
        for (name, value) in object {
            let key = prefix.isEmpty ? name : "\(prefix).\(name)"
            switch value {
            case let nested as [String: Any]:
                try flatten(nested, prefix: key, into: &flat)
            case let list as [Any]:
                flat.append((key, list.map { "\($0)" }.joined(separator: ",")))
            case let number as NSNumber where String(cString: number.objCType) == "c":
                flat.append((key, number.boolValue ? "true" : "false"))
            case let number as NSNumber:
                flat.append((key, number.stringValue))
            case let text as String:
                flat.append((key, text))
            default:
                throw ConfigurationError(key: key, problem: "expected a string, number, boolean, list or object")
            }
        }
    }

    private func validate() throws(ConfigurationError) {
        _ = try integer(.pluginWorkers, in: 1...256)
        _ = try integer(.httpPort, in: 0...65_535)
        _ = try integer(.chatPort, in: 0...65_535)
        _ = try integer(.maxFrameBytes, in: 1024...16_777_216)
        _ = try integer(.pingInterval, in: 1...3600)
        _ = try integer(.idleTimeout, in: 2...7200)
        _ = try integer(.rateLimit, in: 1...100_000)
        _ = try integer(.outboxFrames, in: 1...1_000_000)
        _ = try integer(.maxGroupMembers, in: 2...100)
        _ = try integer(.presenceGrace, in: 0...300)
        _ = try integer(.maxBodyBytes, in: 1...1_048_576)
        let listeners = Set(self[.listeners].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        guard !listeners.isEmpty, listeners.isSubset(of: ["http", "chat"]) else {
            throw ConfigurationError(key: ServerSetting.listeners.rawValue, problem: "must be http, chat, or http,chat; got '\(self[.listeners])'")
        }
        guard self[.tlsCertificate].isEmpty == self[.tlsKey].isEmpty else {
            throw ConfigurationError(key: self[.tlsCertificate].isEmpty ? ServerSetting.tlsCertificate.rawValue : ServerSetting.tlsKey.rawValue, problem: "tls.certificate and tls.key are set together")
        }
        _ = try integer(.pluginQueueDepth, in: 1...1_000_000)
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(self[.logLevel]) else {
            throw ConfigurationError(key: ServerSetting.logLevel.rawValue, problem: "must be one of trace, debug, info, notice, warning, error, critical; got '\(self[.logLevel])'")
        }
        guard !self[.dataFolder].isEmpty else { throw ConfigurationError(key: ServerSetting.dataFolder.rawValue, problem: "must not be empty") }
        guard !self[.storagePlugin].isEmpty else { throw ConfigurationError(key: ServerSetting.storagePlugin.rawValue, problem: "must name a storage plugin") }
    }

    public subscript(_ setting: ServerSetting) -> String { values[setting.rawValue] ?? setting.defaultValue }

    public func integer(_ setting: ServerSetting, in range: ClosedRange<Int>) throws(ConfigurationError) -> Int {
        guard let value = Int(self[setting]), range.contains(value) else {
            throw ConfigurationError(key: setting.rawValue, problem: "must be a whole number from \(range.lowerBound) to \(range.upperBound); got '\(self[setting])'")
        }
        return value
    }

    public var dataFolder: String { self[.dataFolder] }

    public var runsHTTP: Bool { self[.listeners].contains("http") }
    public var runsChat: Bool { self[.listeners].contains("chat") }

    /// Operator folders first, then <data>/plugins, then the executable's folder.
    public var pluginFolders: [String] {
        self[.pluginFolders].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            + [(dataFolder as NSString).appendingPathComponent("plugins")]
    }

    /// The settings for plugin `name`: the file's, then PARLEY_PLUGIN_<NAME>_<SETTING>
    /// variables, then --set plugin.<name>.<setting>, each overriding the one before.
    public func settings(forPlugin name: String) -> [String: String] {
        var settings = filePluginSettings[name] ?? [:]
        let prefix = Self.environmentName(name).dropFirst("PARLEY_".count) + "_"
        for (variable, value) in pluginEnvironment where variable.hasPrefix(prefix) {
            settings[variable.dropFirst(prefix.count).lowercased()] = value
        }
        settings.merge(overridePluginSettings[name] ?? [:]) { $1 }
        return settings
    }
}
