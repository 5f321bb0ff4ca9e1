// Many chat connections held by one process: the idle and reconnect scenarios spread
// their connections over worker processes, each running one fleet, because a process
// may hold no more than 20,000 file descriptors.
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Opens one connection per token, from rotating 127.0.0.x source addresses, at most
/// `concurrency` connecting at a time; closes them all on request.
final class ConnectionFleet: @unchecked Sendable {
    private let group: any EventLoopGroup
    private let endpoint: ChatEndpoint
    private let tokens: [String]
    private let sources: [SocketAddress]
    private let concurrency: Int
    /// Touched only by the worker's command loop, one command at a time.
    private var connections: [BenchConnection] = []
    let openedSoFar = Atomic<Int>(0)

    init(group: any EventLoopGroup, endpoint: ChatEndpoint, tokens: [String], sources: [SocketAddress], concurrency: Int) {
        self.group = group
        self.endpoint = endpoint
        self.tokens = tokens
        self.sources = sources
        self.concurrency = concurrency
    }

    /// Opens every connection; with `syncing`, each also sends `sync` after `welcome`
    /// and counts as done at the reply, like a device that reconnects.
    func openAll(syncing: Bool) async -> FleetPhase {
        var phase = FleetPhase()
        let cpuBefore = ProcessStats.ownCPUSeconds()
        phase.started = MonotonicClock.nanoseconds()
        openedSoFar.store(0, ordering: .relaxed)
        await withTaskGroup(of: Result<(BenchConnection, UInt64), any Error>.self) { tasks in
            var next = 0
            var finished = 0
            while next < tokens.count || !tasks.isEmpty {
                while next < tokens.count, next - finished < concurrency {
                    let index = next
                    let (endpoint, token, source, loop) = (endpoint, tokens[index], sources[index % sources.count], group.next())
                    tasks.addTask {
                        let begin = MonotonicClock.nanoseconds()
                        do {
                            let connection = try await BenchConnection.connect(to: endpoint, token: token, on: loop, from: source).get()
                            if syncing { _ = try await connection.call("sync", id: "sync", expecting: "sync_result") }
                            return .success((connection, MonotonicClock.nanoseconds() - begin))
                        } catch {
                            return .failure(error)
                        }
                    }
                    next += 1
                }
                guard let result = await tasks.next() else { break }
                finished += 1
                switch result {
                case .success(let (connection, nanoseconds)):
                    connections.append(connection)
                    phase.latency.record(nanoseconds: nanoseconds)
                    phase.opened += 1
                    openedSoFar.add(1, ordering: .relaxed)
                case .failure(let error):
                    phase.failed += 1
                    phase.firstError = phase.firstError ?? "\(error)"
                }
            }
        }
        phase.finished = MonotonicClock.nanoseconds()
        phase.clientCPU = ProcessStats.ownCPUSeconds() - cpuBefore
        return phase
    }

    /// Closes every connection and waits for the sockets to go.
    func closeAll() async -> FleetPhase {
        var phase = FleetPhase()
        phase.started = MonotonicClock.nanoseconds()
        let closing = connections.map { connection in connection.eventLoop.flatSubmit { connection.close() } }
        for future in closing { try? await future.get() }
        phase.opened = connections.count
        connections = []
        phase.finished = MonotonicClock.nanoseconds()
        return phase
    }

    /// Source addresses 127.0.0.2, 127.0.0.3, …: each address has its own ephemeral ports.
    static func sourceAddresses(_ count: Int) throws -> [SocketAddress] {
        try (0..<count).map { try SocketAddress(ipAddress: "127.0.0.\(2 + $0 % 250)", port: 0) }
    }
}
