// What every scenario runs inside: the pinned client, the server under test, its
// accounts, and one event loop group.
import CPUAffinity
import Foundation
import NIOCore
import NIOPosix
import ParleyClient

/// Sets up the run a scenario needs and tears it down afterwards.
final class BenchSession: @unchecked Sendable {
    let options: BenchOptions
    let server: ServerUnderTest
    let group: MultiThreadedEventLoopGroup
    let stateFolder: URL
    private let stores: [AccountPool: AccountStore]
    private var chatEndpoint: ChatEndpoint?

    private init(options: BenchOptions, server: ServerUnderTest, stores: [AccountPool: AccountStore], stateFolder: URL) {
        self.options = options
        self.server = server
        self.stores = stores
        self.stateFolder = stateFolder
        chatEndpoint = server.chat
        // Pinned to one core (`--client-cpu`), one loop, as the server does.
        group = MultiThreadedEventLoopGroup(numberOfThreads: CPUAffinity.eventLoopCount(machineCores: System.coreCount))
    }

    /// Runs `scenario` in a fresh session and prints its report to stdout.
    static func run(_ options: BenchOptions, scenario: (BenchSession) async throws -> BenchReport) async throws {
        // Before any thread starts, so every thread and worker process inherits the core.
        if let core = options.clientCPU { try CPUAffinity.pinCurrentProcess(toCore: core) }
        let stateFolder = URL(fileURLWithPath: options.state).standardizedFileURL
        try FileManager.default.createDirectory(at: stateFolder, withIntermediateDirectories: true)
        let server: ServerUnderTest
        let accountsPrefix: String
        if let url = options.server {
            server = .running(at: url, pid: options.serverPID)
            let name = url.replacingOccurrences(of: "://", with: "-").map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "-" }
            accountsPrefix = "accounts-\(String(name))-"
        } else {
            let dataFolder = stateFolder.appendingPathComponent("server-data")
            accountsPrefix = "accounts-"
            // Accounts of a data folder that is gone are worthless.
            if !FileManager.default.fileExists(atPath: dataFolder.path) {
                for pool in AccountPool.allCases { try? FileManager.default.removeItem(at: stateFolder.appendingPathComponent("\(accountsPrefix)\(pool.rawValue).json")) }
            }
            server = try .start(
                dataFolder: dataFolder, log: stateFolder.appendingPathComponent("parleyd.log"), core: options.serverCPU,
                pidFile: stateFolder.appendingPathComponent("parleyd.pid"), settings: options.serverSettings)
        }
        var stores: [AccountPool: AccountStore] = [:]
        for pool in AccountPool.allCases {
            stores[pool] = try AccountStore(file: stateFolder.appendingPathComponent("\(accountsPrefix)\(pool.rawValue).json"), pool: pool)
        }
        let session = BenchSession(options: options, server: server, stores: stores, stateFolder: stateFolder)
        // Interrupted, the run stops the server it started (its worker processes end with it).
        let interruption = Interruption { server.stop() }
        defer { interruption.end() }
        let report: BenchReport
        do {
            report = try await scenario(session)
        } catch {
            try? await session.group.shutdownGracefully()
            server.stop()
            throw error
        }
        try? await session.group.shutdownGracefully()
        server.stop()
        if let file = options.reportFile { try report.json.write(toFile: file, atomically: true, encoding: .utf8) }
        print(options.json ? report.json : report.table)
    }

    var api: ParleyAPI { ParleyAPI(baseURL: server.httpURL) }

    /// The first `count` accounts of a scenario's pool, creating the missing ones.
    func accounts(_ count: Int, of pool: AccountPool) async throws -> [BenchAccount] {
        try await stores[pool]!.provision(count, api: api)
    }

    /// The chat listener: from the started server's output, or from a log-in reply.
    func chat() async throws -> ChatEndpoint {
        if let chatEndpoint { return chatEndpoint }
        let account = try await accounts(1, of: .connections)[0]
        let login = try await api.logIn(username: account.username, password: account.password, deviceName: "parley-bench discovery")
        // That log-in made a device nobody uses; revoke it again.
        _ = try? await api.call("POST", "/v1/logout", token: login.token)
        guard let endpoint = ChatEndpoint(url: login.websocketURL) else { throw BenchFailure("cannot use the chat URL \(login.websocketURL) (only ws:// is supported)") }
        chatEndpoint = endpoint
        return endpoint
    }

    /// Connects one connection per token, spread over the event loops, at most `concurrency`
    /// at a time; `starting` is told the index of each connection as it starts.
    func connect(tokens: [String], concurrency: Int = 256, starting: @escaping @Sendable (Int) -> Void = { _ in }) async throws -> [BenchConnection] {
        let endpoint = try await chat()
        var connections = [BenchConnection?](repeating: nil, count: tokens.count)
        try await withThrowingTaskGroup(of: (Int, BenchConnection).self) { tasks in
            var next = 0
            var finished = 0
            while next < tokens.count || !tasks.isEmpty {
                while next < tokens.count, next - finished < concurrency {
                    let index = next
                    let loop = group.next()
                    tasks.addTask {
                        starting(index)
                        return (index, try await BenchConnection.connect(to: endpoint, token: tokens[index], on: loop).get())
                    }
                    next += 1
                }
                guard let (index, connection) = try await tasks.next() else { break }
                connections[index] = connection
                finished += 1
            }
        }
        return connections.map { $0! }
    }

    /// How the report names the server: started (and where pinned) or the URL given.
    var serverDescription: String {
        if let url = options.server { return url }
        let settings = options.serverSettings.isEmpty ? "" : " with " + options.serverSettings.joined(separator: ", ")
        return "started parleyd" + (options.serverCPU.map { " on core \($0)" } ?? "") + settings
    }

    /// Warns in the report when the client used nearly all the CPU it had, so its own
    /// speed may have limited the figures.
    func noteClientSaturation(_ cores: Double, in report: inout BenchReport) {
        let available = options.clientCPU == nil ? Double(System.coreCount) : 1
        if cores > 0.85 * available {
            report.note(String(format: "the client used %.2f of its %.0f core(s): it may have been the bottleneck", cores, available))
        }
    }

    /// A snapshot of the server's and this process's CPU time.
    func cpuSnapshot() -> CPUSnapshot {
        CPUSnapshot(time: MonotonicClock.nanoseconds(), server: server.cpuSeconds, client: ProcessStats.ownCPUSeconds())
    }
}

/// CPU seconds of the server and of the client at one moment.
struct CPUSnapshot: Sendable {
    var time: UInt64
    var server: Double?
    var client: Double

    /// Server CPU seconds used between two snapshots, when known.
    func serverSeconds(until later: CPUSnapshot) -> Double? {
        guard let before = server, let after = later.server else { return nil }
        return after - before
    }

    /// The share of one core the client used between two snapshots.
    func clientCores(until later: CPUSnapshot) -> Double {
        (later.client - client) / MonotonicClock.seconds(from: time, to: later.time)
    }

    func seconds(until later: CPUSnapshot) -> Double {
        MonotonicClock.seconds(from: time, to: later.time)
    }
}
