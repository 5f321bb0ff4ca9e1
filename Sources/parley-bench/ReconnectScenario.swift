// reconnect: every device drops and comes back at once.
import ArgumentParser
import Foundation

/// Opens N connections, closes them all, then has all N reconnect at once with their
/// tokens, each counting as back once its `sync` is answered. Reports reconnects per
/// second and the time until all have synced.
struct ReconnectScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reconnect", abstract: "N devices reconnect at once: reconnects per second, time until all synced.")

    @OptionGroup var options: BenchOptions
    @OptionGroup var fleetOptions: FleetOptions

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let fleet = try await fleetOptions.launch(in: session)
        defer { fleet.stop() }
        let progress = ProgressLine("reconnect") { "connected \(fleet.progress) of \(fleetOptions.connections)" }
        let first = try await fleet.run("open-sync")
        _ = try await fleet.run("close")
        // Let the server notice every close before the herd comes back.
        try await Task.sleep(for: .milliseconds(500))
        let before = session.cpuSnapshot()
        let again = try await fleet.run("open-sync")
        let after = session.cpuSnapshot()
        progress.stop()
        _ = try await fleet.run("close")

        var report = BenchReport(scenario: "reconnect")
        fleetOptions.describe(in: &report, fleet: fleet)
        report.setting("server", session.serverDescription)
        report.figure("reconnected", Double(again.opened), "devices reconnected and synced")
        report.figure("failed", Double(again.failed + first.failed), "connections failed")
        report.figure("reconnects_per_second", Double(again.opened) / again.seconds, "reconnects per second")
        report.figure("all_synced_ms", again.seconds * 1e3, "time until all synced (ms)", decimals: 1)
        report.latencies("reconnect", again.latency, "reconnect to sync reply")
        if let serverSeconds = before.serverSeconds(until: after) {
            report.figure("server_cpu_us_per_reconnect", serverSeconds * 1e6 / Double(max(again.opened, 1)), "server CPU per reconnect (µs)", decimals: 1)
        }
        report.figure("client_cpu_cores", again.clientCPU / again.seconds, "client CPU while reconnecting (cores)", decimals: 2)
        if let error = again.firstError ?? first.firstError { report.note("first connect failure: \(error)") }
        session.noteClientSaturation(again.clientCPU / again.seconds, in: &report)
        return report
    }
}
