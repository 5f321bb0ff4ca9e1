import Synchronization

/// The receiving side of one conversation in the direct scenario: counts `message`
/// events and records end-to-end latency from the send time at the start of each body.
/// Confined to its connection's event loop.
final class MessageReceiver: @unchecked Sendable {
    let connection: BenchConnection
    private let measurement: MeasurementWindow
    private let counters: LiveCounters
    private var lastSequence: Int64?

    private(set) var delivered = 0
    private(set) var deliveredInWindow = 0
    /// Events whose seq was not above the previous one's. (Gaps are normal in a group:
    /// a member's connection gets no event for its own sends.)
    private(set) var outOfOrder = 0
    private(set) var latency = LatencyHistogram()

    init(connection: BenchConnection, measurement: MeasurementWindow, counters: LiveCounters) {
        self.connection = connection
        self.measurement = measurement
        self.counters = counters
        connection.onFrame = { [unowned self] frame in self.received(frame) }
    }

    private func received(_ frame: FrameScanner) {
        guard frame.string("type", equals: "message"), let (sentAt, _) = frame.integer("body") else { return }
        let now = MonotonicClock.nanoseconds()
        if measurement.contains(now) {
            latency.record(nanoseconds: now &- UInt64(sentAt))
            deliveredInWindow += 1
        }
        if let (sequence, _) = frame.integer("seq") {
            if let lastSequence, sequence <= lastSequence { outOfOrder += 1 }
            lastSequence = sequence
        }
        delivered += 1
        counters.delivered.add(1, ordering: .relaxed)
    }
}
