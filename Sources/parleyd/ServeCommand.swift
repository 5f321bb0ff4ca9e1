// `parleyd serve`: runs a node until SIGTERM or SIGINT.
import ArgumentParser
import Dispatch
import Foundation
import CMalloc
import Logging
import Metrics
import ParleyServer
import Prometheus

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the Parley server.",
        discussion: """
            With no configuration it keeps its data in ./data, stores on SQLite (the storage-sqlite \
            plugin), serves the HTTP API on 127.0.0.1:8080 and the chat listener on 127.0.0.1:8081.

            Settings come from, in increasing priority: the defaults, a JSON file (--config FILE or \
            the PARLEY_CONFIG environment variable; nested objects or dotted keys), environment variables (PARLEY_ + the key in capitals \
            with '.' as '_'), and --set KEY=VALUE. Plugin settings are plugin.<plugin>.<setting> \
            (environment: PARLEY_PLUGIN_<PLUGIN>_<SETTING>). An invalid setting stops start-up \
            with a message naming it, and exit status 78.

            Settings:
            \(ServerSetting.allCases.map { "  \($0.rawValue) (default: \($0.defaultValue.isEmpty ? "none" : $0.defaultValue))\n      \($0.help); env \($0.environmentVariable)" }.joined(separator: "\n"))
            """
    )

    @Option(name: .customLong("config"), help: "A JSON configuration file.")
    var file: String?

    @Option(name: .customLong("set"), help: ArgumentHelp("Set one setting, KEY=VALUE; repeatable.", valueName: "key=value"))
    var overrides: [String] = []

    func run() async throws {
        keepFreedMemory()
        let configuration: ServerConfiguration
        do {
            configuration = try ServerConfiguration(file: file ?? ProcessInfo.processInfo.environment["PARLEY_CONFIG"], environment: ProcessInfo.processInfo.environment, overrides: overrides)
        } catch {
            printError("parleyd: \(error)")
            throw ExitCode(78)
        }
        let level = Logger.Level(rawValue: configuration[.logLevel]) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let metrics = ServerMetrics()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics.registry))
        let logger = Logger(label: "parleyd")
        for (name, suggestion) in configuration.unusedEnvironment {
            logger.warning("environment variable \(name) is not a parleyd setting and is ignored\(suggestion.map { "; did you mean \($0)?" } ?? "") [config.unknown_variable]")
        }
        // Listened for before the node starts: a SIGTERM right after the "running" line (a
        // supervisor stopping a server it just started) was lost while the handlers were set up.
        let termination = SignalOnce.listen(to: [SIGTERM, SIGINT])
        let node: ParleyNode
        do {
            node = try await ParleyNode.start(configuration, metrics: metrics, logger: logger)
        } catch {
            printError("parleyd: cannot start: \(error)")
            throw ExitCode(error.exitCode)
        }
        printLine("parleyd \(parleyVersionString) running: HTTP API \(node.httpPort.map { "port \($0)" } ?? "off"), chat \(node.chatPort != nil ? node.chatURL : "off"); data in \(configuration.dataFolder)")
        await termination.wait()
        logger.info("shutting down")
        await node.shutdown()
    }
}

/// The first of some signals, kept from the moment `listen` returns: `wait` returns at once
/// when it came before, or when it comes.
private final class SignalOnce: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []
    private var fired = false
    private var continuation: CheckedContinuation<Void, Never>?
    private let lock = NSLock()

    static func listen(to numbers: [Int32]) -> SignalOnce {
        let once = SignalOnce()
        for number in numbers {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { once.fire() }
            source.resume()
            once.sources.append(source)
        }
        return once
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            lock.lock()
            if fired {
                lock.unlock()
                continuation.resume()
            } else {
                self.continuation = continuation
                lock.unlock()
            }
        }
    }

    private func fire() {
        lock.lock()
        fired = true
        let continuation = self.continuation
        self.continuation = nil
        lock.unlock()
        continuation?.resume()
    }
}

/// glibc hands freed memory at the top of a heap back to the kernel once more than 128 KiB
/// is free, and a group fan-out allocates and frees megabytes of frame buffers with every
/// commit: each round trip then costs page faults (about 5% of the server's time in a
/// profile of a 100-member group). Keep up to 16 MiB free per heap for reuse (64 MiB
/// measured the same), and serve allocations up to 32 MiB from the heaps, unless the
/// operator tunes malloc with GLIBC_TUNABLES. docs/OPERATIONS.md, section 15.
private func keepFreedMemory() {
    guard ProcessInfo.processInfo.environment["GLIBC_TUNABLES"] == nil else { return }
    mallopt(M_TRIM_THRESHOLD, 16 << 20)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
}
