// Start-up of the parts every parleyd node needs: the data folder, the plugin
// catalog, the worker pool and the configured storage plugin.
import Foundation
public import Logging
public import PluginHost

/// Why parleyd could not start. Operators see `description`; the process exits with `exitCode`.
public struct StartupError: Error, CustomStringConvertible {
    public var description: String
    /// EX_CONFIG (78): the configuration, or a plugin it names, is unusable.
    public var exitCode: Int32 = 78

    public init(_ description: String) { self.description = description }
}

/// The plugins and storage of a running node. `shutdown` drains and destroys them.
public final class ServerRuntime: Sendable {
    public let configuration: ServerConfiguration
    public let storage: StorageBackend
    public let pool: PluginWorkerPool
    public let catalog: PluginCatalog

    private init(configuration: ServerConfiguration, storage: StorageBackend, pool: PluginWorkerPool, catalog: PluginCatalog) {
        self.configuration = configuration
        self.storage = storage
        self.pool = pool
        self.catalog = catalog
    }

    /// Loads every plugin file it finds (a broken file that nothing uses is logged and
    /// skipped) and starts the storage plugin the configuration names; any failure of
    /// that plugin is a `StartupError` naming the cause.
    public static func start(_ configuration: ServerConfiguration, logger: Logger) throws(StartupError) -> ServerRuntime {
        let dataFolder = configuration.dataFolder
        do {
            try FileManager.default.createDirectory(atPath: dataFolder, withIntermediateDirectories: true)
        } catch {
            throw StartupError("configuration key '\(ServerSetting.dataFolder.rawValue)': cannot create \(dataFolder): \(error.localizedDescription) [config.invalid]")
        }
        let catalog = PluginCatalog(folders: configuration.pluginFolders + [PluginCatalog.executableFolder], logger: logger)
        let name = configuration[.storagePlugin]
        let library: PluginLibrary
        switch catalog.library(named: name) {
        case .success(let found): library = found
        case .failure(let error): throw StartupError("configuration key '\(ServerSetting.storagePlugin.rawValue)': \(error)")
        }
        guard library.info.kinds.contains(.storage) else {
            throw StartupError("configuration key '\(ServerSetting.storagePlugin.rawValue)': plugin \(name) (\(library.info.path)) does not provide the storage kind [plugin.wrong_kind]")
        }
        var settings = configuration.settings(forPlugin: name)
        if settings["path"] == nil {
            settings["path"] = (dataFolder as NSString).appendingPathComponent("\(name).db")
        }
        let pool: PluginWorkerPool
        do {
            pool = PluginWorkerPool(
                threads: try configuration.integer(.pluginWorkers, in: 1...256),
                capacity: try configuration.integer(.pluginQueueDepth, in: 1...1_000_000)
            )
        } catch {
            throw StartupError(error.description)
        }
        do {
            let instance = try PluginInstance(library: library, configuration: settings, pool: pool, logger: logger)
            let storage = try StorageBackend(instance: instance)
            logger.info("storage: \(name) \(library.info.version) from \(library.info.path)")
            return ServerRuntime(configuration: configuration, storage: storage, pool: pool, catalog: catalog)
        } catch let error as PluginLoadError {
            pool.shutdown()
            throw StartupError("storage plugin \(name) (\(library.info.path)) did not start: \(error)")
        } catch {
            pool.shutdown()
            throw StartupError("storage plugin \(name) (\(library.info.path)) did not start: \(error)")
        }
    }

    /// Drains plugin calls, destroys the plugin instances and stops the worker threads.
    public func shutdown() async {
        await storage.instance.shutdown()
        pool.shutdown()
    }
}
