// Finds plugin files in the plugin folders and loads every one that passes the checks.
import Foundation
public import Logging

/// The plugins found in a set of folders, by name. A file that fails to load is
/// kept with its error: harmless while no configuration uses it, fatal at start
/// when one does.
public struct PluginCatalog: Sendable {
    public private(set) var plugins: [String: PluginLibrary] = [:]
    public private(set) var refused: [(path: String, error: PluginLoadError)] = []

    /// The folder holding the running executable, where SwiftPM builds plugins.
    public static var executableFolder: String {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return executable.deletingLastPathComponent().path
    }

    /// Loads every `*.so` in `folders`, in order; when two files carry the same
    /// plugin name, the one in the earlier folder wins and the other is refused.
    public init(folders: [String], logger: Logger) {
        var scanned = Set<String>()
        for folder in folders {
            let resolved = URL(fileURLWithPath: folder).resolvingSymlinksInPath().standardizedFileURL.path
            guard scanned.insert(resolved).inserted else { continue }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
            if names.isEmpty && !FileManager.default.fileExists(atPath: folder) {
                logger.debug("plugin folder \(folder) does not exist")
            }
            for name in names.sorted() where name.hasSuffix(".so") {
                let path = (folder as NSString).appendingPathComponent(name)
                do {
                    let library = try PluginLibrary.load(path: path)
                    if let first = plugins[library.info.name] {
                        let error = PluginLoadError.duplicateName(name: library.info.name, first: first.info.path, second: path)
                        refused.append((path, error))
                        logger.warning("skipping plugin file: \(error)")
                    } else {
                        plugins[library.info.name] = library
                        logger.debug("found plugin \(library.info.name) \(library.info.version) at \(path)")
                    }
                } catch {
                    refused.append((path, error))
                    logger.warning("skipping plugin file: \(error)")
                }
            }
        }
    }

    /// The plugin named `name`, or the reason it is not available.
    public func library(named name: String) -> Result<PluginLibrary, PluginCatalogError> {
        if let library = plugins[name] { return .success(library) }
        let searched = refused.map { "\($0.path): \($0.error)" }
        return .failure(PluginCatalogError(name: name, refusedFiles: searched))
    }
}

/// A configured plugin that no folder provides.
public struct PluginCatalogError: Error, CustomStringConvertible {
    public var name: String
    public var refusedFiles: [String]

    public var description: String {
        var text = "no plugin named '\(name)' was found in the plugin folders [plugin.not_found]"
        if !refusedFiles.isEmpty {
            text += "; these files were refused:\n  " + refusedFiles.joined(separator: "\n  ")
        }
        return text
    }
}
