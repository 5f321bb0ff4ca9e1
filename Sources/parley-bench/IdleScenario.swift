// idle: many authenticated connections that send nothing; what they cost the server.
import ArgumentParser
import Foundation

/// Opens N authenticated connections from worker processes, holds them, and reports
/// the server's resident memory per connection and the connect rate.
struct IdleScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "idle", abstract: "N idle authenticated connections: server memory per connection, connect rate.")

    @OptionGroup var options: BenchOptions
    @OptionGroup var fleetOptions: FleetOptions

    @Option(help: "Seconds to hold the connections open before measuring memory again.")
    var hold = 2.0

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let fleet = try await fleetOptions.launch(in: session)
        defer { fleet.stop() }
        let memoryBefore = session.server.residentBytes
        let before = session.cpuSnapshot()
        let progress = ProgressLine("idle") { "connected \(fleet.progress) of \(fleetOptions.connections)" }
        let opened = try await fleet.run("open")
        progress.stop()
        let after = session.cpuSnapshot()
        let memoryOpen = session.server.residentBytes
        try await Task.sleep(for: .seconds(hold))
        let memoryHeld = session.server.residentBytes
        _ = try await fleet.run("close")

        var report = BenchReport(scenario: "idle")
        fleetOptions.describe(in: &report, fleet: fleet)
        report.setting("server", session.serverDescription)
        report.figure("connections_open", Double(opened.opened), "connections open")
        report.figure("connections_failed", Double(opened.failed), "connections failed")
        report.figure("connects_per_second", Double(opened.opened) / opened.seconds, "connects per second (to welcome)")
        report.latencies("connect", opened.latency, "connect to welcome")
        if let memoryBefore, let memoryOpen, let memoryHeld {
            let perConnection = Double(max(memoryOpen, memoryHeld) - memoryBefore) / Double(max(opened.opened, 1))
            report.figure("server_rss_before_mib", Double(memoryBefore) / 1_048_576, "server RSS before (MiB)", decimals: 1)
            report.figure("server_rss_open_mib", Double(memoryOpen) / 1_048_576, "server RSS all open (MiB)", decimals: 1)
            report.figure("server_rss_held_mib", Double(memoryHeld) / 1_048_576, "server RSS after holding (MiB)", decimals: 1)
            report.figure("server_rss_per_connection_kib", perConnection / 1024, "server RSS per connection (KiB)", decimals: 2)
        }
        if let serverSeconds = before.serverSeconds(until: after) {
            report.figure("server_cpu_us_per_connect", serverSeconds * 1e6 / Double(max(opened.opened, 1)), "server CPU per connect (µs)", decimals: 1)
        }
        report.figure("client_cpu_cores", opened.clientCPU / opened.seconds, "client CPU while connecting (cores)", decimals: 2)
        if let error = opened.firstError { report.note("first connect failure: \(error)") }
        session.noteClientSaturation(opened.clientCPU / opened.seconds, in: &report)
        return report
    }
}
