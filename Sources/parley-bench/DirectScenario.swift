// direct: sender and receiver pairs, one conversation each, messages flowing one way.
import ArgumentParser
import Foundation
import NIOCore
import Synchronization

/// P pairs of accounts; each sender keeps a bounded window of unacknowledged sends to
/// its receiver. Reports delivered messages per second, end-to-end and ack latency,
/// and the server's CPU time per delivered message.
struct DirectScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "direct", abstract: "1:1 messages between sender/receiver pairs: throughput, latency, server CPU per message.")

    @OptionGroup var options: BenchOptions

    @Option(help: "Sender/receiver pairs, each one conversation.")
    var pairs = 50

    @Option(help: "Unacknowledged sends each sender may have.")
    var window = 32

    @Option(help: "Total messages per second to offer; 0 sends as fast as acks allow.")
    var rate = 0.0

    @Option(help: "Seconds measured, after the warm-up.")
    var duration = 10.0

    @Option(help: "Seconds of sending before measuring starts.")
    var warmup = 1.0

    @Option(name: .customLong("body-bytes"), help: "Bytes in each message body.")
    var bodyBytes = 100

    @Option(name: .customLong("max-messages"), help: "Stop sending after this many messages in all, whatever the duration.")
    var maxMessages = 5_000_000

    func validate() throws {
        guard pairs > 0, window > 0, duration > 0, warmup >= 0, rate >= 0, bodyBytes >= 20, maxMessages >= pairs else {
            throw ValidationError("pairs, window, duration and max-messages must be positive, body-bytes at least 20")
        }
    }

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let accounts = try await session.accounts(pairs * 2)
        let connections = try await session.connect(tokens: accounts.map(\.token))
        let measurement = MeasurementWindow()
        let counters = LiveCounters()
        let runID = String(UInt64.random(in: 0...UInt64.max), radix: 36)
        var senders: [MessageSender] = []
        var receivers: [MessageReceiver] = []
        for pair in 0..<pairs {
            let sending = connections[pair * 2], receiving = connections[pair * 2 + 1]
            let conversation = try await sending.openConversation(with: accounts[pair * 2 + 1].username)
            let limit = maxMessages / pairs
            senders.append(try await sending.eventLoop.submit {
                MessageSender(connection: sending, conversation: conversation, runID: runID, window: window, limit: limit, bodyBytes: bodyBytes, measurement: measurement, counters: counters)
            }.get())
            receivers.append(try await receiving.eventLoop.submit { MessageReceiver(connection: receiving, measurement: measurement, counters: counters) }.get())
        }

        let progress = ProgressLine("direct") { counters.status }
        var pacers: [RepeatedTask] = []
        if rate > 0 {
            let perSender = rate / Double(pairs)
            for loopSenders in Dictionary(grouping: senders, by: { ObjectIdentifier($0.connection.eventLoop) }).values {
                let loop = loopSenders[0].connection.eventLoop
                pacers.append(try await loop.submit {
                    for sender in loopSenders { sender.startPaced(perSecond: perSender) }
                    return loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { _ in
                        let now = MonotonicClock.nanoseconds()
                        for sender in loopSenders { sender.pace(now: now) }
                    }
                }.get())
            }
        } else {
            for sender in senders { sender.connection.eventLoop.execute { sender.startClosedLoop() } }
        }
        try await Task.sleep(for: .seconds(warmup))
        let before = session.cpuSnapshot()
        measurement.open(at: before.time)
        try await Task.sleep(for: .seconds(duration))
        let after = session.cpuSnapshot()
        measurement.close(at: after.time)

        for pacer in pacers { pacer.cancel() }
        for sender in senders { try await sender.connection.eventLoop.flatSubmit { sender.stop() }.timeout(after: 30, "waiting for the last acks").get() }
        // Let the last events arrive: every acknowledged message is delivered to the receiver.
        let drainDeadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while counters.delivered.load(ordering: .relaxed) < counters.acked.load(ordering: .relaxed), MonotonicClock.nanoseconds() < drainDeadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        progress.stop()

        var ackLatency = LatencyHistogram(), endToEnd = LatencyHistogram()
        var acked = 0, ackedInWindow = 0, delivered = 0, deliveredInWindow = 0, errors = 0, outOfOrder = 0
        var firstError: String?
        for sender in senders {
            let (histogram, total, inWindow, failed, error) = try await sender.connection.eventLoop.submit {
                (sender.ackLatency, sender.acked, sender.ackedInWindow, sender.errors, sender.firstError)
            }.get()
            ackLatency.add(histogram)
            acked += total
            ackedInWindow += inWindow
            errors += failed
            firstError = firstError ?? error
        }
        for receiver in receivers {
            let (histogram, total, inWindow, disordered) = try await receiver.connection.eventLoop.submit {
                (receiver.latency, receiver.delivered, receiver.deliveredInWindow, receiver.outOfOrder)
            }.get()
            endToEnd.add(histogram)
            delivered += total
            deliveredInWindow += inWindow
            outOfOrder += disordered
        }
        for connection in connections { await connection.closeAndWait() }

        let seconds = before.seconds(until: after)
        var report = BenchReport(scenario: "direct")
        report.setting("pairs", pairs)
        report.setting("window per sender", window)
        report.setting("offered load", rate > 0 ? "\(Int(rate)) msgs/s" : "as fast as acks allow")
        report.setting("measured seconds", String(format: "%.1f", seconds))
        report.setting("body bytes", bodyBytes)
        report.setting("server", session.serverDescription)
        report.figure("offered_per_second", rate, "offered messages/s")
        report.figure("delivered_per_second", Double(deliveredInWindow) / seconds, "delivered messages/s")
        report.figure("acked_per_second", Double(ackedInWindow) / seconds, "acknowledged messages/s")
        report.latencies("e2e", endToEnd, "end-to-end latency")
        report.latencies("ack", ackLatency, "ack latency")
        if let serverSeconds = before.serverSeconds(until: after) {
            report.figure("server_cpu_us_per_message", serverSeconds * 1e6 / Double(max(deliveredInWindow, 1)), "server CPU per delivered message (µs)", decimals: 2)
            report.figure("server_cpu_cores", serverSeconds / seconds, "server CPU (cores)", decimals: 2)
        }
        let clientCores = before.clientCores(until: after)
        report.figure("client_cpu_cores", clientCores, "client CPU (cores)", decimals: 2)
        report.figure("messages_acked", Double(acked), "messages acknowledged (whole run)")
        report.figure("messages_delivered", Double(delivered), "messages delivered (whole run)")
        report.figure("errors", Double(errors), "error replies")
        report.figure("out_of_order", Double(outOfOrder), "events out of sequence")
        if let firstError { report.note("first error reply: \(firstError)") }
        if acked != delivered { report.note("\(acked - delivered) acknowledged messages were not delivered within 10 s") }
        session.noteClientSaturation(clientCores, in: &report)
        return report
    }
}
