import ArgumentParser

/// Options every scenario takes: which server, where state lives, how to report, and CPU pinning.
struct BenchOptions: ParsableArguments {
    @Option(help: "Measure a running parleyd at this HTTP API URL (http://host:port) instead of starting one.")
    var server: String?

    @Option(name: .customLong("server-pid"), help: "The pid of that running parleyd, for its CPU and memory figures.")
    var serverPID: Int32?

    @Option(help: "State folder: the started server's data and the accounts created, reused by later runs.")
    var state = "./.parley-bench"

    @Flag(help: "Print the report as JSON instead of a table.")
    var json = false

    @Option(name: .customLong("server-cpu"), help: "Pin the started parleyd to this CPU core (taskset).")
    var serverCPU: Int?

    @Option(name: .customLong("client-cpu"), help: "Pin parley-bench and its workers to this CPU core.")
    var clientCPU: Int?
}
