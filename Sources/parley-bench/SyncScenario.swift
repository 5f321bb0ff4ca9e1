// sync: a device misses messages while offline, then reconnects and catches up.
import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import ParleyJSON
import Synchronization

/// One device of the receiver is offline while the sender stores M messages in their
/// conversation; it then connects and follows the protocol's sync algorithm (sync with
/// its cursor, fetch pages forward). Reports the time until it holds all of them.
struct SyncScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sync", abstract: "A device offline while M messages arrive reconnects: time to receive them all.")

    @OptionGroup var options: BenchOptions

    @Option(help: "Messages stored while the device is offline.")
    var messages = 10_000

    @Option(help: "Messages per fetch page (1 to 1000).")
    var page = 500

    @Option(help: "Times to repeat the offline-and-catch-up round.")
    var rounds = 3

    @Option(name: .customLong("body-bytes"), help: "Bytes in each message body.")
    var bodyBytes = 100

    func validate() throws {
        guard messages > 0, (1...1000).contains(page), rounds > 0, bodyBytes >= 20 else {
            throw ValidationError("messages and rounds must be positive, page 1 to 1000, body-bytes at least 20")
        }
    }

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    /// What one catch-up took.
    private struct Round {
        var connectToAll: Double
        var syncToAll: Double
        var pages: Int
        var serverCPU: Double?
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let accounts = try await session.accounts(2, of: .sync)
        let sender = accounts[0], receiver = accounts[1]
        let endpoint = try await session.chat()
        let sending = try await session.connect(tokens: [sender.token])[0]
        let conversation = try await sending.openConversation(with: receiver.username)
        let counters = LiveCounters()
        let progress = ProgressLine("sync") { counters.status }
        defer { progress.stop() }
        var results: [Round] = []
        for round in 0..<rounds {
            // Where the device stands before it goes offline.
            let device = try await session.connect(tokens: [receiver.token])[0]
            let cursor = try await lastSequence(of: conversation, on: device, cursors: [:]) ?? 0
            await device.closeAndWait()

            let filler = try await sending.eventLoop.submit {
                MessageSender(connection: sending, conversation: conversation, runID: "sync-\(UInt64.random(in: 0...UInt64.max))-\(round)", window: 256, limit: messages, bodyBytes: bodyBytes, measurement: MeasurementWindow(), counters: counters)
            }.get()
            try await sending.eventLoop.flatSubmit { filler.sendAll() }.timeout(after: 300, "storing the missed messages").get()
            try await Task.sleep(for: .milliseconds(200))

            let before = session.cpuSnapshot()
            let reconnected = try await BenchConnection.connect(to: endpoint, token: receiver.token, on: session.group.next()).get()
            let welcomed = MonotonicClock.nanoseconds()
            let (received, pages) = try await catchUp(conversation, from: cursor, on: reconnected)
            let after = session.cpuSnapshot()
            await reconnected.closeAndWait()
            guard received == messages else { throw BenchFailure("round \(round + 1): the device caught up \(received) messages, expected \(messages)") }
            counters.delivered.add(received, ordering: .relaxed)
            results.append(Round(
                connectToAll: before.seconds(until: after), syncToAll: MonotonicClock.seconds(from: welcomed, to: after.time),
                pages: pages, serverCPU: before.serverSeconds(until: after)))
        }
        await sending.closeAndWait()

        let median = results.sorted { $0.connectToAll < $1.connectToAll }[results.count / 2]
        var report = BenchReport(scenario: "sync")
        report.setting("missed messages", messages)
        report.setting("page size", page)
        report.setting("rounds", rounds)
        report.setting("server", session.serverDescription)
        report.figure("connect_to_all_ms", median.connectToAll * 1e3, "connect to all received, median (ms)", decimals: 1)
        report.figure("sync_to_all_ms", median.syncToAll * 1e3, "sync request to all received, median (ms)", decimals: 1)
        report.figure("messages_per_second", Double(messages) / median.connectToAll, "messages caught up per second")
        report.figure("pages", Double(median.pages), "fetch pages")
        if let serverCPU = median.serverCPU {
            report.figure("server_cpu_us_per_message", serverCPU * 1e6 / Double(messages), "server CPU per caught-up message (µs)", decimals: 2)
        }
        for (index, round) in results.enumerated() {
            report.figure("round\(index + 1)_connect_to_all_ms", round.connectToAll * 1e3, "round \(index + 1): connect to all (ms)", decimals: 1)
        }
        return report
    }

    /// The sync algorithm for one conversation: sync with the cursor, then fetch forward
    /// until the cursor reaches the `last_seq` that sync reported. Checks that the
    /// sequences arrive gapless and in order; returns how many arrived and in how many pages.
    private func catchUp(_ conversation: String, from cursor: Int64, on connection: BenchConnection) async throws -> (received: Int, pages: Int) {
        guard let last = try await lastSequence(of: conversation, on: connection, cursors: [conversation: cursor]) else { return (0, 0) }
        var position = cursor
        var pages = 0
        while position < last {
            let reply = try await connection.call("fetch", id: "f\(pages)", expecting: "messages") { [position, page] writer in
                writer.field("conversation", conversation)
                writer.field("after", position)
                writer.field("limit", page)
            }
            pages += 1
            let sequences = reply.withUnsafeReadableBytes { FrameScanner(bytes: $0).integers("seq") }
            for sequence in sequences {
                guard sequence == position + 1 else { throw BenchFailure("fetch after \(position) returned seq \(sequence)") }
                position = sequence
            }
            if sequences.isEmpty { throw BenchFailure("fetch after \(position) returned nothing, but sync reported last_seq \(last)") }
        }
        return (Int(position - cursor), pages)
    }

    /// The `last_seq` that `sync` reports for the conversation, nil when it is not listed.
    private func lastSequence(of conversation: String, on connection: BenchConnection, cursors: [String: Int64]) async throws -> Int64? {
        let reply = try await connection.call("sync", id: "sync", expecting: "sync_result") { writer in
            writer.beginObject("cursors")
            for (name, value) in cursors { writer.field(name, value) }
            writer.endObject()
        }
        let conversations = try JSONParser.parse(reply.readableBytesView)["conversations"]?.arrayValue ?? []
        return conversations.first { $0["conversation"]?.stringValue == conversation }?["last_seq"]?.int64Value
    }
}
