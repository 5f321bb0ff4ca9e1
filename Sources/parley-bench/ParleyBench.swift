import ArgumentParser

/// parley-bench: the load generator. Each subcommand is one scenario; each run is
/// bounded in time and count, prints progress to stderr and its report to stdout.
@main
struct ParleyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley-bench",
        abstract: "Measures a parleyd: starts one (or targets one with --server) and drives it over HTTP and WebSocket.",
        discussion: "Accounts are created once and kept in the state folder (--state), with the started server's data. See docs/BENCHMARKS.md.",
        subcommands: [DirectScenario.self, GroupScenario.self, SyncScenario.self, PresenceScenario.self, IdleScenario.self, ReconnectScenario.self, AllScenarios.self, WorkerCommand.self]
    )
}
