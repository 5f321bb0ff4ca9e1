// The parent's side of one worker process (see WorkerCommand).
import Foundation
import Synchronization

/// A `parley-bench worker` child: send it a command, await its `FleetPhase`, and read
/// how many connections it has opened so far.
final class WorkerProcess: @unchecked Sendable {
    private struct Replies {
        var progress = 0
        var results: [String] = []
        var waiter: CheckedContinuation<String, any Error>?
        var ended = false
    }

    private let process = Process()
    private let input = Pipe()
    private let replies = Mutex(Replies())

    /// Starts `parley-bench worker` holding one connection per token.
    init(chat: ChatEndpoint, tokens: [String], tokensFile: URL, sourceAddresses: Int, concurrency: Int) throws {
        try tokens.joined(separator: "\n").write(to: tokensFile, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = [
            "worker", "--chat", chat.url, "--tokens-file", tokensFile.path,
            "--source-addresses", String(sourceAddresses), "--concurrency", String(concurrency),
        ]
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        LineReader.start(output.fileHandleForReading, line: { [weak self] line in self?.received(line) }, ended: { [weak self] in self?.ended() })
        try process.run()
    }

    private func received(_ line: String) {
        replies.withLock { state in
            if line.hasPrefix("progress "), let count = Int(line.dropFirst("progress ".count)) {
                state.progress = count
            } else if line.hasPrefix("result ") {
                let result = String(line.dropFirst("result ".count))
                if let waiter = state.waiter {
                    state.waiter = nil
                    waiter.resume(returning: result)
                } else {
                    state.results.append(result)
                }
            }
        }
    }

    private func ended() {
        replies.withLock { state in
            state.ended = true
            state.waiter?.resume(throwing: BenchFailure("a worker process ended early"))
            state.waiter = nil
        }
    }

    var progress: Int { replies.withLock { $0.progress } }

    func send(_ command: String) {
        input.fileHandleForWriting.write(Data((command + "\n").utf8))
    }

    /// The worker's answer to the last command.
    func result() async throws -> FleetPhase {
        let line = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<String, any Error>) in
            replies.withLock { state in
                if !state.results.isEmpty {
                    continuation.resume(returning: state.results.removeFirst())
                } else if state.ended {
                    continuation.resume(throwing: BenchFailure("a worker process ended early"))
                } else {
                    state.waiter = continuation
                }
            }
        }
        return try JSONDecoder().decode(FleetPhase.self, from: Data(line.utf8))
    }

    /// Asks the worker to close its connections and exit, and waits for it.
    func stop() {
        send("exit")
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}

/// Worker processes sharing N connections, driven together.
struct WorkerFleet: Sendable {
    let workers: [WorkerProcess]

    /// Splits `tokens` (one per connection) over processes of at most `perProcess` connections.
    init(chat: ChatEndpoint, tokens: [String], perProcess: Int, stateFolder: URL, sourceAddresses: Int, concurrency: Int) throws {
        var workers: [WorkerProcess] = []
        for (index, start) in stride(from: 0, to: tokens.count, by: perProcess).enumerated() {
            let share = Array(tokens[start..<min(start + perProcess, tokens.count)])
            workers.append(try WorkerProcess(
                chat: chat, tokens: share, tokensFile: stateFolder.appendingPathComponent("worker-\(index)-tokens.txt"),
                sourceAddresses: sourceAddresses, concurrency: concurrency))
        }
        self.workers = workers
    }

    /// Sends `command` to every worker at once and adds up their results.
    func run(_ command: String) async throws -> FleetPhase {
        for worker in workers { worker.send(command) }
        var total = FleetPhase()
        for worker in workers { total.add(try await worker.result()) }
        return total
    }

    var progress: Int { workers.reduce(0) { $0 + $1.progress } }

    func stop() {
        for worker in workers { worker.stop() }
    }
}
