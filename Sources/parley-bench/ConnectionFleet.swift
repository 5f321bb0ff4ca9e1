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
    /// and counts as done at the reply, like a device that reconnects. Each event loop
    /// opens its share itself, so no connection costs a hop to the task pool.
    func openAll(syncing: Bool) async -> FleetPhase {
        var phase = FleetPhase()
        let cpuBefore = ProcessStats.ownCPUSeconds()
        phase.started = MonotonicClock.nanoseconds()
        openedSoFar.store(0, ordering: .relaxed)
        var loops: [any EventLoop] = []
        for loop in group.makeIterator() { loops.append(loop) }
        var openers: [LoopOpener] = []
        for (offset, loop) in loops.enumerated() {
            let share = stride(from: offset, to: tokens.count, by: loops.count).map { (tokens[$0], sources[$0 % sources.count]) }
            let (endpoint, limit) = (endpoint, max(1, concurrency / loops.count))
            let opener = LoopOpener(loop: loop, endpoint: endpoint, work: share, limit: limit, syncing: syncing, fleet: self)
            openers.append(opener)
            loop.execute { opener.start() }
        }
        for opener in openers {
            try? await opener.done.futureResult.get()
            let (part, opened) = (try? await opener.loop.submit { (opener.phase, opener.opened) }.get()) ?? (FleetPhase(), [])
            phase.latency.add(part.latency)
            phase.opened += part.opened
            phase.failed += part.failed
            phase.firstError = phase.firstError ?? part.firstError
            connections += opened
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

/// Opens one event loop's share of a fleet's connections, at most `limit` at a time,
/// starting the next as each finishes. Confined to `loop`.
private final class LoopOpener: @unchecked Sendable {
    private static let syncFrame = #"{"type":"sync","id":"sync","cursors":{}}"#

    let loop: any EventLoop
    let done: EventLoopPromise<Void>
    private(set) var phase = FleetPhase()
    private(set) var opened: [BenchConnection] = []
    private let endpoint: ChatEndpoint
    private let work: [(token: String, source: SocketAddress)]
    private let limit: Int
    private let syncing: Bool
    private let fleet: ConnectionFleet
    private var next = 0
    private var inFlight = 0

    init(loop: any EventLoop, endpoint: ChatEndpoint, work: [(token: String, source: SocketAddress)], limit: Int, syncing: Bool, fleet: ConnectionFleet) {
        self.loop = loop
        self.endpoint = endpoint
        self.work = work
        self.limit = limit
        self.syncing = syncing
        self.fleet = fleet
        done = loop.makePromise()
    }

    func start() {
        fill()
        if work.isEmpty { done.succeed() }
    }

    private func fill() {
        while next < work.count, inFlight < limit {
            open(work[next])
            next += 1
            inFlight += 1
        }
    }

    private func open(_ item: (token: String, source: SocketAddress)) {
        let begin = MonotonicClock.nanoseconds()
        var connecting = BenchConnection.connect(to: endpoint, token: item.token, on: loop, from: item.source)
        if syncing {
            connecting = connecting.flatMap { connection in
                connection.request(id: "sync", Self.syncFrame).flatMapThrowing { reply in
                    guard reply.withUnsafeReadableBytes({ FrameScanner(bytes: $0).string("type", equals: "sync_result") }) else {
                        throw BenchFailure("sync was answered with \(String(buffer: reply))")
                    }
                    return connection
                }
            }
        }
        connecting.whenComplete { result in
            switch result {
            case .success(let connection):
                self.opened.append(connection)
                self.phase.latency.record(nanoseconds: MonotonicClock.nanoseconds() - begin)
                self.phase.opened += 1
                self.fleet.openedSoFar.add(1, ordering: .relaxed)
            case .failure(let error):
                self.phase.failed += 1
                self.phase.firstError = self.phase.firstError ?? "\(error)"
            }
            self.inFlight -= 1
            self.fill()
            if self.inFlight == 0, self.next == self.work.count { self.done.succeed() }
        }
    }
}
