// all: every scenario in turn, each against a newly started parleyd, and the project's
// performance targets judged on what the runs measured.
import ArgumentParser
import Foundation
import ParleyJSON
import Synchronization

/// Runs every scenario at the sizes its target names (or tiny ones with `--smoke`), each
/// as its own run of this tool, so each starts its own server and ends it. Each
/// scenario's table is printed as it ends; then a table of the targets.
struct AllScenarios: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "all",
        abstract: "Every scenario in turn, each against its own started parleyd, then the targets met or missed.",
        discussion: "The targets are per server core: pin with --server-cpu 0 --client-cpu 1. Options other than --smoke and --json are passed to every scenario.")

    @OptionGroup var options: BenchOptions

    @Flag(help: "Tiny sizes, a few seconds per scenario: shows that every scenario works; no target is judged.")
    var smoke = false

    func run() async throws {
        let folder = URL(fileURLWithPath: options.state).standardizedFileURL
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        var reports: [(run: PlannedRun, report: JSONValue, json: [UInt8])] = []
        var failures: [String] = []
        // Interrupted, the scenario running then is stopped (and stops its server) first.
        let running = Mutex<Process?>(nil)
        let interruption = Interruption {
            guard let child = running.withLock({ $0 }), child.isRunning else { return }
            child.terminate()
            child.waitUntilExit()
        }
        defer { interruption.end() }
        for run in PlannedRun.all {
            let arguments = (smoke ? run.smokeArguments : run.arguments) + options.arguments
            let file = folder.appendingPathComponent("all-\(run.name).json")
            try? FileManager.default.removeItem(at: file)
            FileHandle.standardError.write(Data("parley-bench all: \(run.name): parley-bench \(arguments.joined(separator: " "))\n".utf8))
            if let failure = try runTool(arguments + ["--report-file", file.path], running: running) {
                failures.append("\(run.name) \(failure)")
                continue
            }
            guard let bytes = FileManager.default.contents(atPath: file.path) else {
                failures.append("\(run.name) ended without writing its report")
                continue
            }
            do {
                reports.append((run, try JSONParser.parse(Array(bytes)), Array(bytes)))
            } catch {
                failures.append("\(run.name) wrote a report that is not JSON: \(error)")
            }
        }

        let judged = Target.all.map { target in
            let measured = reports.first { $0.run.name == target.run }.flatMap { target.measured(in: $0.report) }
            return (target: target, measured: measured, met: smoke ? nil : measured.map(target.isMet))
        }
        var notes = failures
        if smoke { notes.append("smoke sizes: no target is judged") }
        if !smoke && (options.serverCPU == nil || options.clientCPU == nil) && options.server == nil {
            notes.append("the targets are per server core: pin the server and the tool with --server-cpu 0 --client-cpu 1")
        }

        var writer = JSONWriter()
        writer.beginObject()
        writer.field("scenario", "all")
        writer.field("smoke", smoke)
        writer.beginObject("runs")
        for (run, _, json) in reports { writer.rawField(run.name, json) }
        writer.endObject()
        writer.beginArray("targets")
        for (target, measured, met) in judged {
            writer.beginObject()
            writer.field("target", target.label)
            writer.field("run", target.run)
            writer.field("figure", target.key)
            if let measured { writer.rawField("measured", Array(String(measured).utf8)) } else { writer.fieldNull("measured") }
            writer.field("comparison", target.comparison.rawValue)
            writer.rawField("goal", Array(String(target.goal).utf8))
            if let met { writer.field("met", met) } else { writer.fieldNull("met") }
            writer.endObject()
        }
        writer.endArray()
        writer.beginArray("notes")
        for note in notes { writer.element(note) }
        writer.endArray()
        writer.endObject()
        let json = String(decoding: writer.bytes, as: UTF8.self)
        if let file = options.reportFile { try json.write(toFile: file, atomically: true, encoding: .utf8) }

        if options.json {
            print(json)
        } else {
            let rows = judged.map { target, measured, met in
                [target.label, measured.map { BenchReport.grouped($0, decimals: target.decimals) } ?? "-",
                 target.comparison.symbol + " " + BenchReport.grouped(target.goal, decimals: 0),
                 met.map { $0 ? "met" : "missed" } ?? "-"]
            }
            print("\nparley-bench all: the targets")
            print(Self.table(header: ["target", "measured", "goal", ""], rows: rows))
            for note in notes { print("note: \(note)") }
        }
        if !failures.isEmpty { throw ExitCode(1) }
    }

    /// Runs this tool again with `arguments`, kept in `running` while it runs; its table goes
    /// where this run's output goes, or to stderr when this run prints JSON. Returns nil when
    /// it succeeded, or how it failed.
    private func runTool(_ arguments: [String], running: borrowing Mutex<Process?>) throws -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        if options.json { process.standardOutput = FileHandle.standardError }
        running.withLock { $0 = process }
        defer { running.withLock { $0 = nil } }
        try process.run()
        process.waitUntilExit()
        switch (process.terminationReason, process.terminationStatus) {
        case (.exit, 0): return nil
        case (.exit, let status): return "failed (exit status \(status))"
        case (.uncaughtSignal, let signal): return "was killed by signal \(signal)"
        @unknown default: return "ended in an unknown way"
        }
    }

    /// Columns padded to their widest cell: the first left-aligned, the others right-aligned.
    private static func table(header: [String], rows: [[String]]) -> String {
        let lines = [header] + rows
        let widths = header.indices.map { column in lines.map { $0[column].count }.max() ?? 0 }
        return lines.map { cells in
            cells.enumerated().map { column, cell in
                let padding = String(repeating: " ", count: widths[column] - cell.count)
                return column == 0 ? cell + padding : padding + cell
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}

/// One scenario run of `all`: its name in the report and its arguments at the targets'
/// sizes and at smoke sizes.
struct PlannedRun: Sendable {
    let name: String
    let arguments: [String]
    let smokeArguments: [String]

    static let all = [
        PlannedRun(
            name: "direct", arguments: ["direct", "--pairs", "100", "--window", "32", "--duration", "10"],
            smokeArguments: ["direct", "--pairs", "2", "--window", "8", "--duration", "1", "--warmup", "0.3"]),
        PlannedRun(
            name: "direct_half_load", arguments: ["direct", "--pairs", "50", "--window", "64", "--rate", "50000", "--duration", "8"],
            smokeArguments: ["direct", "--pairs", "2", "--rate", "200", "--duration", "1", "--warmup", "0.3"]),
        PlannedRun(
            name: "group", arguments: ["group", "--members", "100", "--senders", "10", "--window", "8"],
            smokeArguments: ["group", "--members", "6", "--senders", "2", "--window", "4", "--duration", "1", "--warmup", "0.3"]),
        PlannedRun(
            name: "sync", arguments: ["sync", "--messages", "10000", "--page", "500", "--rounds", "5"],
            smokeArguments: ["sync", "--messages", "300", "--page", "100", "--rounds", "1"]),
        PlannedRun(
            name: "idle", arguments: ["idle", "--connections", "19000", "--devices", "1000"],
            smokeArguments: ["idle", "--connections", "40", "--devices", "4", "--per-process", "20", "--hold", "0.2"]),
        PlannedRun(
            name: "reconnect", arguments: ["reconnect", "--connections", "10000", "--devices", "1000"],
            smokeArguments: ["reconnect", "--connections", "40", "--devices", "4", "--per-process", "20"]),
        PlannedRun(
            name: "presence", arguments: ["presence", "--subjects", "1000", "--contacts", "5"],
            smokeArguments: ["presence", "--subjects", "6", "--contacts", "2", "--grace", "1", "--server-set", "presence.grace_seconds=1"]),
    ]
}

/// One of the project's performance targets (docs/BENCHMARKS.md, "The targets"): a
/// figure of one run and the bound it must keep.
struct Target: Sendable {
    enum Comparison: String, Sendable {
        case atLeast = "at_least"
        case atMost = "at_most"
        case below

        var symbol: String {
            switch self {
            case .atLeast: "≥"
            case .atMost: "≤"
            case .below: "<"
            }
        }
    }

    let label: String
    let run: String
    let key: String
    let comparison: Comparison
    let goal: Double
    let decimals: Int

    func measured(in report: JSONValue) -> Double? {
        guard case .number(let value) = report["results"]?[key] else { return nil }
        return value
    }

    func isMet(_ value: Double) -> Bool {
        switch comparison {
        case .atLeast: value >= goal
        case .atMost: value <= goal
        case .below: value < goal
        }
    }

    static let all = [
        Target(label: "1:1 messages delivered per second, durably", run: "direct", key: "delivered_per_second", comparison: .atLeast, goal: 100_000, decimals: 0),
        Target(label: "server CPU per delivered 1:1 message, saturated (µs)", run: "direct", key: "server_cpu_us_per_message", comparison: .atMost, goal: 10, decimals: 2),
        Target(label: "server CPU per delivered 1:1 message, 50,000/s offered (µs)", run: "direct_half_load", key: "server_cpu_us_per_message", comparison: .atMost, goal: 10, decimals: 2),
        Target(label: "end-to-end p99 at 50,000 messages/s offered (ms)", run: "direct_half_load", key: "e2e_p99_ms", comparison: .below, goal: 5, decimals: 2),
        Target(label: "group of 100: deliveries per second", run: "group", key: "delivered_per_second", comparison: .atLeast, goal: 1_000_000, decimals: 0),
        Target(label: "idle connections held", run: "idle", key: "connections_open", comparison: .atLeast, goal: 19_000, decimals: 0),
        Target(label: "server memory per idle connection (KiB)", run: "idle", key: "server_rss_per_connection_kib", comparison: .atMost, goal: 8, decimals: 2),
        Target(label: "reconnects per second", run: "reconnect", key: "reconnects_per_second", comparison: .atLeast, goal: 10_000, decimals: 0),
        Target(label: "server CPU per reconnect (µs; 100 is 10,000/s a core)", run: "reconnect", key: "server_cpu_us_per_reconnect", comparison: .atMost, goal: 100, decimals: 1),
        Target(label: "sync: connect to all missed messages received (ms)", run: "sync", key: "connect_to_all_ms", comparison: .atMost, goal: 200, decimals: 1),
    ]
}
