// The measured part of the direct and group scenarios: senders, receivers, a warm-up,
// a measured span, and a drain until every acknowledged message has arrived.
import Foundation
import NIOCore
import Synchronization

/// Senders and receivers of one run, driven closed-loop or at an offered rate.
final class MessageFlow: @unchecked Sendable {
    private let options: FlowOptions
    private let measurement = MeasurementWindow()
    private let counters = LiveCounters()
    /// Client ids must never repeat: the server remembers them forever.
    private let runID = String(UInt64.random(in: 0...UInt64.max), radix: 36)
    private var senders: [MessageSender] = []
    private var receivers: [MessageReceiver] = []

    init(options: FlowOptions) {
        self.options = options
    }

    /// Counts and times the `message` events arriving on `connection`. Add receivers before
    /// senders on the same connection.
    func addReceiver(_ connection: BenchConnection) async throws {
        let (measurement, counters) = (measurement, counters)
        receivers.append(try await connection.eventLoop.submit { MessageReceiver(connection: connection, measurement: measurement, counters: counters) }.get())
    }

    /// Sends to `conversation` over `connection`, at most `limit` messages.
    func addSender(_ connection: BenchConnection, conversation: String, limit: Int) async throws {
        let (measurement, counters, runID, options) = (measurement, counters, "\(runID)-\(senders.count)", options)
        senders.append(try await connection.eventLoop.submit {
            MessageSender(
                connection: connection, conversation: conversation, runID: runID, window: options.window, limit: limit,
                bodyBytes: options.bodyBytes, measurement: measurement, counters: counters)
        }.get())
    }

    /// Runs the warm-up and the measured span, stops the senders, and waits until every
    /// acknowledged message has reached its `deliveriesPerMessage` receivers (10 s at most).
    func run(_ label: String, in session: BenchSession, deliveriesPerMessage: Int) async throws -> FlowResult {
        let counters = counters
        let progress = ProgressLine(label) { counters.status }
        defer { progress.stop() }
        let pacers = try await start()
        try await Task.sleep(for: .seconds(options.warmup))
        let before = session.cpuSnapshot()
        measurement.open(at: before.time)
        try await Task.sleep(for: .seconds(options.duration))
        let after = session.cpuSnapshot()
        measurement.close(at: after.time)

        for pacer in pacers { pacer.cancel() }
        for sender in senders { try await sender.connection.eventLoop.flatSubmit { sender.stop() }.timeout(after: 30, "waiting for the last acks").get() }
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while counters.delivered.load(ordering: .relaxed) < counters.acked.load(ordering: .relaxed) * deliveriesPerMessage, MonotonicClock.nanoseconds() < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }

        var result = FlowResult(before: before, after: after, deliveriesPerMessage: deliveriesPerMessage)
        for sender in senders {
            let (histogram, total, inWindow, failed, error) = try await sender.connection.eventLoop.submit {
                (sender.ackLatency, sender.acked, sender.ackedInWindow, sender.errors, sender.firstError)
            }.get()
            result.ackLatency.add(histogram)
            result.acked += total
            result.ackedInWindow += inWindow
            result.errors += failed
            result.firstError = result.firstError ?? error
        }
        for receiver in receivers {
            let (histogram, total, inWindow, disordered) = try await receiver.connection.eventLoop.submit {
                (receiver.latency, receiver.delivered, receiver.deliveredInWindow, receiver.outOfOrder)
            }.get()
            result.endToEnd.add(histogram)
            result.delivered += total
            result.deliveredInWindow += inWindow
            result.outOfOrder += disordered
        }
        return result
    }

    /// Starts every sender: closed-loop, or paced by one timer per event loop with the
    /// senders' phases spread evenly.
    private func start() async throws -> [RepeatedTask] {
        guard options.rate > 0 else {
            for sender in senders { sender.connection.eventLoop.execute { sender.startClosedLoop() } }
            return []
        }
        let perSender = options.rate / Double(senders.count)
        let phases = Dictionary(uniqueKeysWithValues: senders.enumerated().map { (ObjectIdentifier($0.element), Double($0.offset) / Double(senders.count)) })
        var pacers: [RepeatedTask] = []
        for loopSenders in Dictionary(grouping: senders, by: { ObjectIdentifier($0.connection.eventLoop) }).values {
            let loop = loopSenders[0].connection.eventLoop
            pacers.append(try await loop.submit {
                for sender in loopSenders { sender.startPaced(perSecond: perSender, phase: phases[ObjectIdentifier(sender)]!) }
                return loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { _ in
                    let now = MonotonicClock.nanoseconds()
                    for sender in loopSenders { sender.pace(now: now) }
                }
            }.get())
        }
        return pacers
    }
}

/// What a `MessageFlow` measured.
struct FlowResult: Sendable {
    var before: CPUSnapshot
    var after: CPUSnapshot
    var deliveriesPerMessage: Int
    var ackLatency = LatencyHistogram()
    var endToEnd = LatencyHistogram()
    var acked = 0
    var ackedInWindow = 0
    var delivered = 0
    var deliveredInWindow = 0
    var errors = 0
    var outOfOrder = 0
    var firstError: String?

    var seconds: Double { before.seconds(until: after) }

    /// Adds the throughput, latency and CPU figures to `report`.
    func describe(in report: inout BenchReport, options: FlowOptions, session: BenchSession) {
        report.setting("window per sender", options.window)
        report.setting("offered load", options.rate > 0 ? "\(Int(options.rate)) msgs/s" : "as fast as acks allow")
        report.setting("measured seconds", String(format: "%.1f", seconds))
        report.setting("body bytes", options.bodyBytes)
        report.setting("server", session.serverDescription)
        report.figure("offered_per_second", options.rate, "offered messages/s")
        report.figure("acked_per_second", Double(ackedInWindow) / seconds, "acknowledged messages/s")
        report.figure("delivered_per_second", Double(deliveredInWindow) / seconds, "delivered messages/s")
        report.latencies("e2e", endToEnd, "end-to-end latency")
        report.latencies("ack", ackLatency, "ack latency")
        if let serverSeconds = before.serverSeconds(until: after) {
            report.figure("server_cpu_us_per_message", serverSeconds * 1e6 / Double(max(deliveredInWindow, 1)), "server CPU per delivered message (µs)", decimals: 2)
            if deliveriesPerMessage > 1 {
                report.figure("server_cpu_us_per_sent_message", serverSeconds * 1e6 / Double(max(ackedInWindow, 1)), "server CPU per sent message (µs)", decimals: 2)
            }
            report.figure("server_cpu_cores", serverSeconds / seconds, "server CPU (cores)", decimals: 2)
        }
        let clientCores = before.clientCores(until: after)
        report.figure("client_cpu_cores", clientCores, "client CPU (cores)", decimals: 2)
        report.figure("messages_acked", Double(acked), "messages acknowledged (whole run)")
        report.figure("messages_delivered", Double(delivered), "messages delivered (whole run)")
        report.figure("errors", Double(errors), "error replies")
        report.figure("out_of_order", Double(outOfOrder), "events out of sequence")
        if let firstError { report.note("first error reply: \(firstError)") }
        if acked * deliveriesPerMessage != delivered {
            report.note("\(acked * deliveriesPerMessage - delivered) deliveries of acknowledged messages did not arrive within 10 s")
        }
        session.noteClientSaturation(clientCores, in: &report)
    }
}
