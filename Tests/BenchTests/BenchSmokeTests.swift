// Smoke runs of every parley-bench scenario: tiny sizes against a parleyd the tool
// starts itself, checking that the JSON report holds sane numbers.
import Foundation
import ParleyJSON
import ParleyTestSupport
import Testing

/// Runs the built parley-bench with `--json` and returns its parsed report.
struct BenchRun {
    /// One state folder for the whole suite, so accounts are created once.
    static let state = testRunFolder.appendingPathComponent("bench-state")

    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("parley-bench").path
    }

    let results: [String: JSONValue]
    let settings: [String: JSONValue]
    let notes: [JSONValue]

    init(_ arguments: [String]) throws {
        try FileManager.default.createDirectory(at: Self.state, withIntermediateDirectories: true)
        let output = Self.state.appendingPathComponent("stdout-\(UUID().uuidString).json")
        let errors = Self.state.appendingPathComponent("stderr-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments + ["--json", "--state", Self.state.path]
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        process.waitUntilExit()
        let text = try String(contentsOf: output, encoding: .utf8)
        let log = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else { throw BenchTestFailure("parley-bench \(arguments) exited \(process.terminationStatus): \(log)") }
        let report = try JSONParser.parse(Array(text.utf8))
        guard let results = report["results"]?.objectValue, let settings = report["settings"]?.objectValue else {
            throw BenchTestFailure("no results in \(text)")
        }
        self.results = results
        self.settings = settings
        notes = report["notes"]?.arrayValue ?? []
    }

    subscript(_ key: String) -> Double {
        guard case .number(let value) = results[key] else { return .nan }
        return value
    }
}

struct BenchTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

@Suite("parley-bench smoke runs", .serialized)
struct BenchSmokeTests {
    @Test func directDeliversEveryAcknowledgedMessageInOrderAndMeasuresLatencyAndServerCPU() throws {
        let run = try BenchRun(["direct", "--pairs", "2", "--window", "8", "--duration", "1", "--warmup", "0.3"])
        #expect(run["delivered_per_second"] > 10)
        #expect(run["acked_per_second"] > 10)
        #expect(run["messages_acked"] == run["messages_delivered"], "every acknowledged message reached its receiver")
        #expect(run["errors"] == 0 && run["out_of_order"] == 0)
        #expect(0 < run["e2e_p50_ms"] && run["e2e_p50_ms"] <= run["e2e_p99_ms"] && run["e2e_p99_ms"] <= run["e2e_max_ms"])
        #expect(0 < run["ack_p50_ms"] && run["ack_p50_ms"] <= run["ack_max_ms"])
        #expect(run["server_cpu_us_per_message"] > 0, "the started server's CPU time is read from /proc")
        #expect(run["client_cpu_cores"] > 0)
    }

    @Test func directAtAnOfferedRateSendsAboutThatRate() throws {
        let run = try BenchRun(["direct", "--pairs", "2", "--rate", "200", "--duration", "1", "--warmup", "0.3"])
        #expect(run["offered_per_second"] == 200)
        // Pacing never sends faster than offered; how close it gets depends on the machine's load.
        #expect(run["delivered_per_second"] > 0 && run["delivered_per_second"] < 280)
    }

    @Test func groupFansEveryMessageOutToEveryOtherMember() throws {
        let run = try BenchRun(["group", "--members", "6", "--senders", "2", "--window", "4", "--duration", "1", "--warmup", "0.3"])
        #expect(run["acked_per_second"] > 5)
        #expect(run["messages_delivered"] == run["messages_acked"] * 5, "each message reaches the five other members")
        #expect(run["delivered_per_second"] > run["acked_per_second"])
        #expect(run["errors"] == 0 && run["out_of_order"] == 0)
        #expect(run["server_cpu_us_per_sent_message"] > run["server_cpu_us_per_message"])
    }

    @Test func presenceTellsEveryContactWhenSubjectsComeAndGo() throws {
        let run = try BenchRun(["presence", "--subjects", "6", "--contacts", "2", "--grace", "1", "--server-set", "presence.grace_seconds=1"])
        #expect(run["online_events"] == 12 && run["offline_events"] == 12)
        #expect(run["online_p50_ms"] > 0 && run["online_p50_ms"] <= run["online_max_ms"])
        #expect(run["offline_p50_ms"] >= 1_000, "offline comes after the grace period")
    }

    @Test func syncCatchesUpEveryMissedMessageThroughFetchPages() throws {
        let run = try BenchRun(["sync", "--messages", "300", "--page", "100", "--rounds", "1"])
        #expect(run["pages"] == 3, "300 missed messages in pages of 100")
        #expect(run["connect_to_all_ms"] > 0 && run["sync_to_all_ms"] <= run["connect_to_all_ms"])
        #expect(run["messages_per_second"] > 0)
    }

    @Test func idleHoldsEveryConnectionAcrossWorkerProcessesAndReportsMemoryPerConnection() throws {
        let run = try BenchRun(["idle", "--connections", "40", "--devices", "4", "--per-process", "20", "--hold", "0.2"])
        #expect(run.settings["client processes"] == .string("2"))
        #expect(run["connections_open"] == 40 && run["connections_failed"] == 0)
        #expect(run["connects_per_second"] > 0)
        #expect(run["server_rss_open_mib"] > 0 && !run["server_rss_per_connection_kib"].isNaN)
    }

    @Test func reconnectBringsEveryDeviceBackAndSynced() throws {
        let run = try BenchRun(["reconnect", "--connections", "40", "--devices", "4", "--per-process", "20"])
        #expect(run["reconnected"] == 40 && run["failed"] == 0)
        #expect(run["reconnects_per_second"] > 0 && run["all_synced_ms"] > 0)
        #expect(run["reconnect_p50_ms"] <= run["reconnect_max_ms"])
    }
}
