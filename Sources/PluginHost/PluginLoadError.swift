import ParleyPluginABI

/// Why the host refused to load a plugin file. Each case has a stable `code`
/// that operators can search for, and a description that names the cause and,
/// for version mismatches, both versions.
public enum PluginLoadError: Error, Equatable, Sendable, CustomStringConvertible {
    case fileMissing(path: String)
    case notSharedObject(path: String, reason: String)
    case missingEntrySymbol(path: String)
    case nullDescriptor(path: String)
    case badMagic(path: String, found: UInt32)
    case abiMajorMismatch(path: String, plugin: Int, host: Int)
    case abiMinorTooNew(path: String, plugin: Int, host: Int)
    case descriptorTooSmall(path: String, size: Int, minimum: Int)
    case invalidName(path: String, name: String)
    case missingTable(path: String, kind: String)
    case missingFunction(path: String, function: String)
    case buildTagMismatch(path: String, plugin: String, host: String)
    case createFailed(plugin: String, status: PluginStatus, message: String)
    case duplicateName(name: String, first: String, second: String)

    /// A stable identifier for the cause, e.g. `plugin.abi_major_mismatch`.
    public var code: String {
        switch self {
        case .fileMissing: "plugin.file_missing"
        case .notSharedObject: "plugin.not_shared_object"
        case .missingEntrySymbol: "plugin.missing_entry_symbol"
        case .nullDescriptor: "plugin.null_descriptor"
        case .badMagic: "plugin.bad_magic"
        case .abiMajorMismatch: "plugin.abi_major_mismatch"
        case .abiMinorTooNew: "plugin.abi_minor_too_new"
        case .descriptorTooSmall: "plugin.descriptor_too_small"
        case .invalidName: "plugin.invalid_name"
        case .missingTable: "plugin.missing_table"
        case .missingFunction: "plugin.missing_function"
        case .buildTagMismatch: "plugin.build_tag_mismatch"
        case .createFailed: "plugin.create_failed"
        case .duplicateName: "plugin.duplicate_name"
        }
    }

    public var description: String {
        let text: String
        switch self {
        case .fileMissing(let path):
            text = "\(path): no such file"
        case .notSharedObject(let path, let reason):
            text = "\(path): not a loadable shared object: \(reason)"
        case .missingEntrySymbol(let path):
            text = "\(path): no exported symbol '\(pluginEntrySymbol)'; is this a Parley plugin?"
        case .nullDescriptor(let path):
            text = "\(path): '\(pluginEntrySymbol)' returned NULL instead of a descriptor"
        case .badMagic(let path, let found):
            text = "\(path): descriptor magic is 0x\(String(found, radix: 16, uppercase: true)), expected 0x\(String(PARLEY_PLUGIN_MAGIC, radix: 16, uppercase: true))"
        case .abiMajorMismatch(let path, let plugin, let host):
            text = "\(path): plugin ABI major version \(plugin) does not match the host's ABI major version \(host); rebuild the plugin against this host's include/parley/plugin.h"
        case .abiMinorTooNew(let path, let plugin, let host):
            text = "\(path): plugin needs ABI minor version \(plugin) but this host provides \(host); upgrade parleyd"
        case .descriptorTooSmall(let path, let size, let minimum):
            text = "\(path): descriptor struct_size \(size) is smaller than the ABI v1.0 size \(minimum)"
        case .invalidName(let path, let name):
            text = "\(path): plugin name '\(name)' is not of the form [a-z0-9-]+"
        case .missingTable(let path, let kind):
            text = "\(path): plugin declares the \(kind) kind but its \(kind) table is NULL"
        case .missingFunction(let path, let function):
            text = "\(path): required function \(function) is NULL"
        case .buildTagMismatch(let path, let plugin, let host):
            text = "\(path): plugin was built by \(plugin) but this host by \(host); Swift plugins must be built by the host's toolchain"
        case .createFailed(let plugin, let status, let message):
            text = "plugin \(plugin) failed to start (\(status)): \(message)"
        case .duplicateName(let name, let first, let second):
            text = "two plugins are named '\(name)': \(first) and \(second)"
        }
        return "\(text) [\(code)]"
    }
}
