// Smoke runs of every parley-bench scenario through `parley-bench all --smoke`: tiny
// sizes, each against a parleyd the tool starts itself, checking that every report holds
// sane numbers and that `all` lists the targets.
import Foundation
import ParleyJSON
import ParleyTestSupport
import Testing

/// The report of one scenario run: its settings, figures and notes.
struct BenchRun {
    let results: [String: JSONValue]
    let settings: [String: JSONValue]
    let notes: [JSONValue]

    init(_ report: JSONValue) throws {
        guard let results = report["results"]?.objectValue, let settings = report["settings"]?.objectValue else {
            throw BenchTestFailure("no results in \(report)")
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

/// One `parley-bench all --smoke --json` for the whole suite: every scenario at tiny sizes,
/// each against a parleyd the tool starts, in one state folder so accounts are created once.
enum SmokeRuns {
    static let state = testRunFolder.appendingPathComponent("bench-state")

    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("parley-bench").path
    }

    /// The whole report of `all`, made the first time a test asks.
    static let report: Result<JSONValue, BenchTestFailure> = {
        do {
            return .success(try runAll())
        } catch let failure as BenchTestFailure {
            return .failure(failure)
        } catch {
            return .failure(BenchTestFailure("\(error)"))
        }
    }()

    /// The report of the run `name` (a scenario, or `direct_half_load`).
    static func run(_ name: String) throws -> BenchRun {
        guard let run = try report.get()["runs"]?[name] else { throw BenchTestFailure("no run \(name) in the report") }
        return try BenchRun(run)
    }

    private static func runAll() throws -> JSONValue {
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        let output = state.appendingPathComponent("all-stdout.json")
        let errors = state.appendingPathComponent("all-stderr.log")
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["all", "--smoke", "--json", "--state", state.path]
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        process.waitUntilExit()
        let text = try String(contentsOf: output, encoding: .utf8)
        let log = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else { throw BenchTestFailure("parley-bench all exited \(process.terminationStatus): \(log)") }
        return try JSONParser.parse(Array(text.utf8))
    }
}

struct BenchTestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

@Suite("parley-bench smoke runs", .serialized, .timeLimit(.minutes(3)))
struct BenchSmokeTests {
    @Test func directDeliversEveryAcknowledgedMessageInOrderAndMeasuresLatencyAndServerCPU() throws {
        let run = try SmokeRuns.run("direct")
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
        let run = try SmokeRuns.run("direct_half_load")
        #expect(run["offered_per_second"] == 200)
        // Pacing never sends faster than offered; how close it gets depends on the machine's load.
        #expect(run["delivered_per_second"] > 0 && run["delivered_per_second"] < 280)
    }

    @Test func groupFansEveryMessageOutToEveryOtherMember() throws {
        let run = try SmokeRuns.run("group")
        #expect(run["acked_per_second"] > 5)
        #expect(run["messages_delivered"] == run["messages_acked"] * 5, "each message reaches the five other members")
        #expect(run["delivered_per_second"] > run["acked_per_second"])
        #expect(run["errors"] == 0 && run["out_of_order"] == 0)
        #expect(run["server_cpu_us_per_sent_message"] > run["server_cpu_us_per_message"])
    }

    @Test func presenceTellsEveryContactWhenSubjectsComeAndGo() throws {
        let run = try SmokeRuns.run("presence")
        #expect(run["online_events"] == 12 && run["offline_events"] == 12)
        #expect(run["online_p50_ms"] > 0 && run["online_p50_ms"] <= run["online_max_ms"])
        #expect(run["offline_p50_ms"] >= 1_000, "offline comes after the grace period")
    }

    @Test func syncCatchesUpEveryMissedMessageThroughFetchPages() throws {
        let run = try SmokeRuns.run("sync")
        #expect(run["pages"] == 3, "300 missed messages in pages of 100")
        #expect(run["connect_to_all_ms"] > 0 && run["sync_to_all_ms"] <= run["connect_to_all_ms"])
        #expect(run["messages_per_second"] > 0)
    }

    @Test func idleHoldsEveryConnectionAcrossWorkerProcessesAndReportsMemoryPerConnection() throws {
        let run = try SmokeRuns.run("idle")
        #expect(run.settings["client processes"] == .string("2"))
        #expect(run["connections_open"] == 40 && run["connections_failed"] == 0)
        #expect(run["connects_per_second"] > 0)
        #expect(run["server_rss_open_mib"] > 0 && !run["server_rss_per_connection_kib"].isNaN)
    }

    @Test func reconnectBringsEveryDeviceBackAndSynced() throws {
        let run = try SmokeRuns.run("reconnect")
        #expect(run["reconnected"] == 40 && run["failed"] == 0)
        #expect(run["reconnects_per_second"] > 0 && run["all_synced_ms"] > 0)
        #expect(run["reconnect_p50_ms"] <= run["reconnect_max_ms"])
    }

    @Test func allRunsEveryScenarioAndListsEveryTargetUnjudgedAtSmokeSizes() throws {
        let report = try SmokeRuns.report.get()
        #expect(report["smoke"] == .bool(true))
        let runs = report["runs"]?.objectValue ?? [:]
        #expect(Set(runs.keys) == ["direct", "direct_half_load", "group", "sync", "idle", "reconnect", "presence"])
        let targets = report["targets"]?.arrayValue ?? []
        #expect(targets.count == 10)
        for target in targets {
            #expect(target["met"] == .null, "smoke sizes judge nothing")
            guard case .number = target["measured"], case .number = target["goal"], let run = target["run"]?.stringValue,
                  let figure = target["figure"]?.stringValue else {
                Issue.record("target without a measured figure: \(target)")
                continue
            }
            #expect(runs[run]?["results"]?[figure] == target["measured"], "the target reads \(figure) of \(run)")
        }
        #expect(report["notes"]?.arrayValue?.contains(.string("smoke sizes: no target is judged")) == true)
    }
}
