// `parleyd plugin ...`: tools for operators and plugin authors.
import ArgumentParser
import Foundation
import Logging
import PluginHost
import StorageConformance

struct PluginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugin",
        abstract: "Inspect, list, test and benchmark plugins.",
        subcommands: [Inspect.self, List.self, Test.self, Bench.self]
    )
}

/// Options shared by the commands that run a plugin.
struct RunOptions: ParsableArguments {
    @Option(name: .customLong("config"), help: ArgumentHelp("A plugin configuration entry, KEY=VALUE; repeatable.", valueName: "key=value"))
    var entries: [String] = []

    @Option(help: "Log level: trace, debug, info, warning, error.")
    var logLevel: String = "warning"

    @Option(help: "Plugin worker threads.")
    var workers: Int = 4

    func configuration() throws -> [String: String] {
        var configuration: [String: String] = [:]
        for entry in entries {
            guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex else {
                throw ValidationError("--config expects KEY=VALUE, got '\(entry)'")
            }
            configuration[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
        }
        return configuration
    }

    func logger() throws -> Logger {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level must be one of trace, debug, info, warning, error; got '\(logLevel)'")
        }
        var logger = Logger(label: "parleyd") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = level
        return logger
    }
}

extension PluginCommand {
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a plugin file's name, version, kinds, ABI version and build tag.",
            discussion: "Exits non-zero, naming the cause, for any file the server would refuse to load."
        )

        @Argument(help: "Plugin files (.so).")
        var files: [String]

        func run() throws {
            var refused = 0
            for file in files {
                do {
                    let info = try PluginLibrary.load(path: file).info
                    print("""
                        \(file)
                          name:        \(info.name)
                          version:     \(info.version)
                          description: \(info.description)
                          kinds:       \(info.kinds.map(\.rawValue).joined(separator: ", "))
                          abi:         \(info.abiMajor).\(info.abiMinor) (host \(PluginLibrary.hostABI.major).\(PluginLibrary.hostABI.minor))
                          build tag:   \(info.buildTag ?? "none (no shared runtime)") (host \(PluginLibrary.hostBuildTag))
                        """)
                } catch {
                    refused += 1
                    printError("\(file): refused: \(error)")
                }
            }
            if refused > 0 { throw ExitCode(1) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the plugins found in the plugin folders.")

        @Option(name: .customLong("plugin-dir"), help: "A plugin folder, searched before the executable's folder; repeatable.")
        var folders: [String] = []

        func run() throws {
            let catalog = PluginCatalog(folders: folders + [PluginCatalog.executableFolder], logger: Logger(label: "parleyd") { _ in SwiftLogNoOpLogHandler() })
            for (name, library) in catalog.plugins.sorted(by: { $0.key < $1.key }) {
                print("\(name) \(library.info.version) [\(library.info.kinds.map(\.rawValue).joined(separator: ","))] \(library.info.path)")
            }
            for (path, error) in catalog.refused {
                print("refused \(path): \(error)")
            }
        }
    }

    struct Test: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the storage conformance suite against a storage plugin.",
            discussion: """
                Unless --config path=... is given, the plugin gets a fresh database file in a temporary \
                folder, which is removed afterwards. Exits non-zero if any check fails.
                """
        )

        @Argument(help: "A storage plugin file (.so).")
        var file: String

        @OptionGroup var options: RunOptions

        func run() async throws {
            let logger = try options.logger()
            var configuration = try options.configuration()
            let library: PluginLibrary
            do {
                library = try PluginLibrary.load(path: file)
            } catch {
                printError("\(file): refused: \(error)")
                throw ExitCode(1)
            }
            guard library.info.kinds.contains(.storage) else {
                printError("\(library.info.name) does not provide the storage kind; the conformance suite tests storage plugins")
                throw ExitCode(1)
            }
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("parley-conformance-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: scratch) }
            if configuration["path"] == nil {
                configuration["path"] = scratch.appendingPathComponent("conformance.db").path
            }
            let pool = PluginWorkerPool(threads: options.workers, capacity: 4096)
            defer { pool.shutdown() }
            print("storage conformance: \(library.info.name) \(library.info.version) (\(file))")
            let suite = StorageConformanceSuite { [configuration] in
                try StorageBackend(instance: PluginInstance(library: library, configuration: configuration, pool: pool, logger: logger))
            }
            let results = await suite.run { result in
                print(result.passed ? "  pass  \(result.name)" : "  FAIL  \(result.name)\n        \(result.failure!)")
            }
            let failed = results.filter { !$0.passed }.count
            print("\(results.count - failed) passed, \(failed) failed")
            if failed > 0 { throw ExitCode(1) }
        }
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// Writes a line to standard output at once, even when it is a file or a pipe.
func printLine(_ message: String) {
    FileHandle.standardOutput.write(Data((message + "\n").utf8))
}
