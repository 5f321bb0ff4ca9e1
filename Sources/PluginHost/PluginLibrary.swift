// Opens a plugin file and checks its descriptor against this host's ABI.
public import ParleyPluginABI
import Glibc

/// The name of the one symbol a plugin exports.
public let pluginEntrySymbol = PARLEY_PLUGIN_ENTRY_SYMBOL

/// The plugin kinds of the ABI.
public enum PluginKind: String, Sendable, CaseIterable {
    case storage, push, media, crypto

    var bit: UInt32 {
        switch self {
        case .storage: UInt32(PARLEY_KIND_STORAGE)
        case .push: UInt32(PARLEY_KIND_PUSH)
        case .media: UInt32(PARLEY_KIND_MEDIA)
        case .crypto: UInt32(PARLEY_KIND_CRYPTO)
        }
    }
}

/// What a plugin says about itself, read from its descriptor.
public struct PluginInfo: Sendable, Equatable {
    public var path: String
    public var name: String
    public var version: String
    public var description: String
    public var kinds: [PluginKind]
    public var abiMajor: Int
    public var abiMinor: Int
    /// The toolchain that built a Swift plugin, or nil for plugins with no shared runtime.
    public var buildTag: String?
}

/// A plugin file that passed every load-time check. The library stays loaded for
/// the life of the process: plugins are never `dlclose`d.
public final class PluginLibrary: @unchecked Sendable {
    public let info: PluginInfo
    /// The descriptor copied to host size; fields the plugin's header did not have are zero.
    let descriptor: parley_plugin_descriptor

    /// The ABI version this host implements.
    public static let hostABI = (major: Int(PARLEY_ABI_MAJOR), minor: Int(PARLEY_ABI_MINOR))
    /// The toolchain that built this host; Swift plugins must carry the same tag.
    public static let hostBuildTag = String(cString: parley_swift_build_tag())

    private init(info: PluginInfo, descriptor: parley_plugin_descriptor) {
        self.info = info
        self.descriptor = descriptor
    }

    /// Loads and checks the plugin at `path` with `RTLD_NOW | RTLD_LOCAL`.
    /// Throws a `PluginLoadError` naming the cause of any refusal.
    public static func load(path: String) throws(PluginLoadError) -> PluginLibrary {
        var status = stat()
        guard stat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else {
            throw .fileMissing(path: path)
        }
        if let reason = notELFReason(path: path) {
            throw .notSharedObject(path: path, reason: reason)
        }
        // dlopen searches the system library path for a name without a slash.
        let openPath = path.contains("/") ? path : "./" + path
        guard let handle = dlopen(openPath, RTLD_NOW | RTLD_LOCAL) else {
            throw .notSharedObject(path: path, reason: dlerror().map { String(cString: $0) } ?? "dlopen failed")
        }
        guard let symbol = dlsym(handle, pluginEntrySymbol) else {
            throw .missingEntrySymbol(path: path)
        }
        let entry = unsafeBitCast(symbol, to: parley_plugin_entry_fn.self)
        guard let raw = entry() else { throw .nullDescriptor(path: path) }
        let descriptor = try checkedDescriptor(raw, path: path)
        return PluginLibrary(info: try info(of: descriptor, path: path), descriptor: descriptor)
    }

    private static func notELFReason(path: String) -> String? {
        guard let file = fopen(path, "rb") else { return "cannot open: \(String(cString: strerror(errno)))" }
        defer { fclose(file) }
        var magic = [UInt8](repeating: 0, count: 4)
        let count = fread(&magic, 1, 4, file)
        if count == 4 && magic == [0x7F, 0x45, 0x4C, 0x46] { return nil }
        return "the file does not start with an ELF header"
    }

    /// Reads the fixed header fields, checks versions, then copies the descriptor
    /// to this host's size without reading past the plugin's `struct_size`.
    private static func checkedDescriptor(
        _ raw: UnsafePointer<parley_plugin_descriptor>, path: String
    ) throws(PluginLoadError) -> parley_plugin_descriptor {
        let rawBytes = UnsafeRawPointer(raw)
        let magic = rawBytes.loadUnaligned(as: UInt32.self)
        guard magic == PARLEY_PLUGIN_MAGIC else { throw .badMagic(path: path, found: magic) }
        let major = Int(rawBytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        let minor = Int(rawBytes.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        guard major == hostABI.major else {
            throw .abiMajorMismatch(path: path, plugin: major, host: hostABI.major)
        }
        guard minor <= hostABI.minor else {
            throw .abiMinorTooNew(path: path, plugin: minor, host: hostABI.minor)
        }
        let size = Int(raw.pointee.struct_size)
        // The v1.0 descriptor ends with the crypto table pointer; later minors only append.
        let minimum = MemoryLayout<parley_plugin_descriptor>.offset(of: \parley_plugin_descriptor.crypto)! + MemoryLayout<UnsafeRawPointer>.size
        guard size >= minimum else {
            throw .descriptorTooSmall(path: path, size: size, minimum: minimum)
        }
        return copyVersioned(raw)
    }

    private static func info(of descriptor: parley_plugin_descriptor, path: String) throws(PluginLoadError) -> PluginInfo {
        let name = descriptor.name.map { String(cString: $0) } ?? ""
        let validName = !name.isEmpty && name.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        guard validName else { throw .invalidName(path: path, name: name) }
        let kinds = PluginKind.allCases.filter { descriptor.kinds & $0.bit != 0 }
        for kind in kinds {
            let table: UnsafeRawPointer? =
                switch kind {
                case .storage: UnsafeRawPointer(descriptor.storage)
                case .push: UnsafeRawPointer(descriptor.push)
                case .media: UnsafeRawPointer(descriptor.media)
                case .crypto: UnsafeRawPointer(descriptor.crypto)
                }
            if table == nil { throw .missingTable(path: path, kind: kind.rawValue) }
        }
        guard descriptor.create != nil else { throw .missingFunction(path: path, function: "create") }
        guard descriptor.destroy != nil else { throw .missingFunction(path: path, function: "destroy") }
        if kinds.contains(.storage) {
            let storage = copyVersioned(descriptor.storage!)
            for (function, present) in [("storage.get", storage.get != nil), ("storage.scan", storage.scan != nil), ("storage.apply", storage.apply != nil)] where !present {
                throw .missingFunction(path: path, function: function)
            }
        }
        let buildTag = descriptor.build_tag.map { String(cString: $0) }
        if let buildTag, buildTag != hostBuildTag {
            throw .buildTagMismatch(path: path, plugin: buildTag, host: hostBuildTag)
        }
        return PluginInfo(
            path: path, name: name,
            version: descriptor.version.map { String(cString: $0) } ?? "",
            description: descriptor.description.map { String(cString: $0) } ?? "",
            kinds: kinds,
            abiMajor: Int(descriptor.abi_major), abiMinor: Int(descriptor.abi_minor),
            buildTag: buildTag
        )
    }
}

/// A struct that starts with `uint32_t struct_size`, as every ABI struct does.
protocol VersionedStruct {
    init()
}

extension parley_plugin_descriptor: VersionedStruct {}
extension parley_storage_vtable: VersionedStruct {}

/// Copies a plugin-owned struct into a zeroed host-sized one, reading no more
/// than the plugin's `struct_size`: fields from a newer header than the plugin's
/// read as zero (NULL), as the ABI's growth rule requires.
func copyVersioned<T: VersionedStruct>(_ source: UnsafePointer<T>) -> T {
    var copy = T()
    let pluginSize = Int(UnsafeRawPointer(source).loadUnaligned(as: UInt32.self))
    withUnsafeMutableBytes(of: &copy) { destination in
        destination.copyMemory(from: UnsafeRawBufferPointer(start: source, count: min(pluginSize, destination.count)))
    }
    return copy
}
