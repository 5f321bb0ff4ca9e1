import ArgumentParser

/// Options every scenario takes: which server, where state lives, how to report, and CPU pinning.
struct BenchOptions: ParsableArguments {
    @Option(help: "Measure a running parleyd at this HTTP API URL (http://host:port) instead of starting one.")
    var server: String?

    @Option(name: .customLong("server-pid"), help: "The pid of that running parleyd, for its CPU and memory figures.")
    var serverPID: Int32?

    @Option(help: "State folder: the started server's data and the accounts created, reused by later runs.")
    var state = "./.parley-bench"

    @Option(name: .customLong("server-set"), help: "An extra setting for the started parleyd, key=value (repeatable), e.g. storage.plugin=storage-lmdb.")
    var serverSettings: [String] = []

    @Flag(help: "Print the report as JSON instead of a table.")
    var json = false

    @Option(name: .customLong("report-file"), help: "Also write the report as JSON to this file.")
    var reportFile: String?

    @Option(name: .customLong("server-cpu"), help: "Pin the started parleyd to this CPU core (taskset).")
    var serverCPU: Int?

    @Option(name: .customLong("client-cpu"), help: "Pin parley-bench and its workers to this CPU core.")
    var clientCPU: Int?

    /// These options as arguments again, for a run of another scenario (`all`).
    var arguments: [String] {
        var arguments = ["--state", state]
        if let server { arguments += ["--server", server] }
        if let serverPID { arguments += ["--server-pid", String(serverPID)] }
        for setting in serverSettings { arguments += ["--server-set", setting] }
        if let serverCPU { arguments += ["--server-cpu", String(serverCPU)] }
        if let clientCPU { arguments += ["--client-cpu", String(clientCPU)] }
        return arguments
    }
}
