import ArgumentParser
import Foundation

/// Options of the scenarios that hold many connections in worker processes.
struct FleetOptions: ParsableArguments {
    @Option(help: "Connections to open.")
    var connections = 1_000

    @Option(help: "Distinct devices (accounts) behind the connections; connections reuse their tokens in turn. At most the number of connections.")
    var devices = 1_000

    @Option(name: .customLong("per-process"), help: "Connections per worker process (a process may hold 20,000 file descriptors).")
    var perProcess = 9_000

    @Option(name: .customLong("source-addresses"), help: "127.0.0.x source addresses the connections rotate through.")
    var sourceAddresses = 8

    @Option(help: "Connections opening at once in each worker process.")
    var concurrency = 256

    func validate() throws {
        guard connections > 0, devices > 0, (1...19_000).contains(perProcess), (1...250).contains(sourceAddresses), concurrency > 0 else {
            throw ValidationError("connections, devices and concurrency must be positive, per-process 1 to 19,000, source-addresses 1 to 250")
        }
    }

    /// Provisions the devices and starts the worker processes holding one connection per token.
    func launch(in session: BenchSession) async throws -> WorkerFleet {
        let accounts = try await session.accounts(min(devices, connections), of: .connections)
        let tokens = (0..<connections).map { accounts[$0 % accounts.count].token }
        return try WorkerFleet(
            chat: try await session.chat(), tokens: tokens, perProcess: perProcess, stateFolder: session.stateFolder,
            sourceAddresses: sourceAddresses, concurrency: concurrency)
    }

    func describe(in report: inout BenchReport, fleet: WorkerFleet) {
        report.setting("connections", connections)
        report.setting("distinct devices", min(devices, connections))
        report.setting("client processes", fleet.workers.count)
        report.setting("source addresses", sourceAddresses)
        report.setting("opening at once per process", concurrency)
    }
}
