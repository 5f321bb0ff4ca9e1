// The parleyd being measured: one this tool starts with its own data folder, or a
// running one given by URL.
import Foundation
import Glibc

/// The server's addresses and, when its pid is known, its CPU time and memory.
final class ServerUnderTest: @unchecked Sendable {
    let httpURL: String
    let chat: ChatEndpoint?
    let pid: Int32?
    private let process: Process?

    private init(httpURL: String, chat: ChatEndpoint?, pid: Int32?, process: Process?) {
        self.httpURL = httpURL
        self.chat = chat
        self.pid = pid
        self.process = process
    }

    /// A server started elsewhere; the chat address comes from log-in.
    static func running(at httpURL: String, pid: Int32?) -> ServerUnderTest {
        ServerUnderTest(httpURL: httpURL, chat: nil, pid: pid, process: nil)
    }

    /// Starts the `parleyd` next to this executable on free loopback ports, with its data
    /// in `dataFolder` and any extra `settings` (key=value), pinned to `core` with taskset
    /// when given, and waits for its "running" line.
    static func start(dataFolder: URL, log: URL, core: Int?, pidFile: URL, settings: [String]) throws -> ServerUnderTest {
        let parleyd = executableFolder.appendingPathComponent("parleyd").path
        stopLeftover(recordedIn: pidFile, dataFolder: dataFolder)
        guard FileManager.default.isExecutableFile(atPath: parleyd) else { throw BenchFailure("no parleyd next to parley-bench at \(parleyd): build it first") }
        let arguments = [
            "serve", "--set", "data.folder=\(dataFolder.path)", "--set", "http.port=0", "--set", "chat.port=0",
            "--set", "chat.rate_limit_per_second=100000", "--set", "log.level=warning",
        ] + settings.flatMap { ["--set", $0] }
        let process = Process()
        if let core {
            // taskset execs parleyd in the same process, so the pid stays parleyd's.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
            process.arguments = ["-c", String(core), parleyd] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: parleyd)
            process.arguments = arguments
        }
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let output = try FileHandle(forWritingTo: log)
        process.standardOutput = output
        process.standardError = output
        try process.run()
        // A large storage-log state replays its whole log first: 12 s for 6.5 GB from the page
        // cache, much longer from the disk.
        let started = MonotonicClock.nanoseconds()
        let progress = ProgressLine("starting parleyd") { "waiting for its start-up line in \(log.path)" }
        defer { progress.stop() }
        let deadline = started + UInt64(startSeconds) * 1_000_000_000
        while MonotonicClock.nanoseconds() < deadline {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.contains(" running: ") }) {
                guard let (httpPort, chatURL) = parseRunningLine(String(line)), let chat = ChatEndpoint(url: chatURL) else {
                    process.terminate()
                    throw BenchFailure("cannot read parleyd's start-up line: \(line)")
                }
                try String(process.processIdentifier).write(to: pidFile, atomically: true, encoding: .utf8)
                return ServerUnderTest(httpURL: "http://127.0.0.1:\(httpPort)", chat: chat, pid: process.processIdentifier, process: process)
            }
            if !process.isRunning { throw BenchFailure("parleyd exited: \(text)") }
            usleep(50_000)
        }
        process.terminate()
        throw BenchFailure("parleyd did not start within \(startSeconds) s; see \(log.path)")
    }

    /// How long a started server may take to start listening.
    static let startSeconds = 600

    /// A parleyd that an earlier run started on this data folder and could not stop (the
    /// run was killed) would share the database with the new one: stop it first.
    private static func stopLeftover(recordedIn pidFile: URL, dataFolder: URL) {
        guard let text = try? String(contentsOf: pidFile, encoding: .utf8), let pid = Int32(text),
            let commandLine = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
            commandLine.contains("data.folder=\(dataFolder.path)")
        else { return }
        kill(pid, SIGTERM)
        for _ in 0..<100 where kill(pid, 0) == 0 { usleep(100_000) }
    }

    /// Reads "… running: HTTP API port N, chat ws://127.0.0.1:M/v1/ws; …".
    static func parseRunningLine(_ line: String) -> (httpPort: Int, chatURL: String)? {
        let words = line.split(separator: " ")
        guard let portIndex = words.firstIndex(of: "port"), portIndex + 1 < words.count,
            let port = Int(words[portIndex + 1].trimmingCharacters(in: .punctuationCharacters)),
            let url = words.first(where: { $0.hasPrefix("ws://") })
        else { return nil }
        return (port, url.trimmingCharacters(in: CharacterSet(charactersIn: ";,")))
    }

    static var executableFolder: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    }

    var cpuSeconds: Double? { pid.flatMap { ProcessStats.cpuSeconds(pid: $0) } }
    var residentBytes: Int? { pid.flatMap { ProcessStats.residentBytes(pid: $0) } }

    /// Stops a started server with SIGTERM and waits for it.
    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }
}
