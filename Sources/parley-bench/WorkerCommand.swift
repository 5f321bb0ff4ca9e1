// The hidden `worker` subcommand: parley-bench re-executes itself as workers that each
// hold a share of the idle and reconnect scenarios' connections.
import ArgumentParser
import CPUAffinity
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Runs one `ConnectionFleet` and obeys commands on stdin, one a line: `open`,
/// `open-sync`, `close`, `exit`. Answers each with `result <json>` on stdout (a
/// `FleetPhase`), with `progress <opened>` lines in between.
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "Holds connections for another parley-bench process.", shouldDisplay: false)

    @Option(help: "The chat listener, ws://host:port/path.")
    var chat: String

    @Option(name: .customLong("tokens-file"), help: "A file of bearer tokens, one a line: one connection each.")
    var tokensFile: String

    @Option(name: .customLong("source-addresses"), help: "How many 127.0.0.x source addresses to rotate through.")
    var sourceAddresses = 8

    @Option(help: "Connections opening at once.")
    var concurrency = 256

    func run() async throws {
        guard let endpoint = ChatEndpoint(url: chat) else { throw ValidationError("--chat must be a ws:// URL") }
        let tokens = try String(contentsOfFile: tokensFile, encoding: .utf8).split(separator: "\n").map(String.init)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: CPUAffinity.eventLoopCount(machineCores: System.coreCount))
        let fleet = ConnectionFleet(group: group, endpoint: endpoint, tokens: tokens, sources: try ConnectionFleet.sourceAddresses(sourceAddresses), concurrency: concurrency)
        let (commands, continuation) = AsyncStream<String>.makeStream()
        LineReader.start(FileHandle.standardInput, line: { continuation.yield($0) }, ended: { continuation.finish() })
        let reporter = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                Self.emit("progress \(fleet.openedSoFar.load(ordering: .relaxed))")
            }
        }
        commandLoop: for await command in commands {
            let phase: FleetPhase
            switch command {
            case "open": phase = await fleet.openAll(syncing: false)
            case "open-sync": phase = await fleet.openAll(syncing: true)
            case "close": phase = await fleet.closeAll()
            default: break commandLoop
            }
            let json = try JSONEncoder().encode(phase)
            Self.emit("result " + String(decoding: json, as: UTF8.self))
        }
        reporter.cancel()
        _ = await fleet.closeAll()
        try await group.shutdownGracefully()
    }

    private static func emit(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }
}
