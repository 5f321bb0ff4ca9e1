// The sending side of one conversation in the direct and sync scenarios.
import NIOCore
import Synchronization

/// Sends messages to one conversation over one connection, keeping at most `window`
/// unacknowledged, and records how long each ack took.
///
/// Each body starts with its send time in monotonic nanoseconds, so the receiver can
/// measure end-to-end latency. Confined to its connection's event loop.
final class MessageSender: @unchecked Sendable {
    let connection: BenchConnection
    private let window: Int
    private let limit: Int
    private let frameStart: ByteBuffer
    private let padding: String
    private let measurement: MeasurementWindow
    private let counters: LiveCounters
    /// Send times by request number, a ring as large as the window.
    private var sendTimes: [UInt64]
    private var inFlight = 0
    private var stopped = false
    private var paceStart: UInt64 = 0
    private var perSecond: Double = 0
    private var phase: Double = 0
    private var allAcked: EventLoopPromise<Void>?

    private(set) var sent = 0
    private(set) var acked = 0
    private(set) var ackedInWindow = 0
    private(set) var errors = 0
    private(set) var firstError: String?
    private(set) var ackLatency = LatencyHistogram()

    /// `runID` keeps client ids unique across runs: the server remembers them forever.
    init(connection: BenchConnection, conversation: String, runID: String, window: Int, limit: Int, bodyBytes: Int, measurement: MeasurementWindow, counters: LiveCounters) {
        self.connection = connection
        self.window = window
        self.limit = limit
        self.measurement = measurement
        self.counters = counters
        frameStart = ByteBuffer(string: #"{"type":"send","conversation":""# + conversation + #"","content_type":"text/plain","client_id":""# + runID + "-")
        padding = String(repeating: "x", count: max(0, bodyBytes - 20))
        var ring = 1
        while ring < window { ring <<= 1 }
        sendTimes = [UInt64](repeating: 0, count: ring)
        // Frames that are not replies to sends go on to whoever handled them before
        // (the receiver of a group member that also sends).
        let others = connection.onFrame
        connection.onFrame = { [unowned self] frame in self.received(frame, others: others) }
    }

    /// Sends as fast as acks come back, keeping the window full.
    func startClosedLoop() {
        fillWindow()
    }

    /// Sends at `perSecond` from now on; call `pace` often (every millisecond). `phase`
    /// (0 to 1) shifts this sender's sends by that share of its interval: senders given
    /// phases spread over 0..<1 send evenly instead of all in the same tick, which would
    /// measure bursts rather than the offered rate.
    func startPaced(perSecond: Double, phase: Double) {
        self.perSecond = perSecond
        self.phase = phase
        paceStart = MonotonicClock.nanoseconds()
    }

    /// Sends what the pace calls for by now, as far as the window allows.
    func pace(now: UInt64) {
        let due = Int(Double(now &- paceStart) * perSecond / 1e9 + phase)
        while sent < due, canSend { sendOne() }
    }

    /// Stops sending; completes once every sent message is acknowledged (or failed).
    func stop() -> EventLoopFuture<Void> {
        stopped = true
        if inFlight == 0 { return connection.eventLoop.makeSucceededVoidFuture() }
        let promise = connection.eventLoop.makePromise(of: Void.self)
        allAcked = promise
        return promise.futureResult
    }

    /// Sends up to the limit and completes when all of them are acknowledged.
    func sendAll() -> EventLoopFuture<Void> {
        let promise = connection.eventLoop.makePromise(of: Void.self)
        allAcked = promise
        fillWindow()
        return promise.futureResult
    }

    private var canSend: Bool { !stopped && inFlight < window && sent < limit }

    private func fillWindow() {
        while canSend { sendOne() }
    }

    private func sendOne() {
        let number = sent
        let now = MonotonicClock.nanoseconds()
        sendTimes[number & (sendTimes.count - 1)] = now
        var frame = frameStart
        frame.writeString(String(number))
        frame.writeString(#"","id":""#)
        frame.writeString(String(number))
        frame.writeString(#"","body":""#)
        frame.writeString(String(now))
        frame.writeString(" ")
        frame.writeString(padding)
        frame.writeString(#""}"#)
        connection.send(frame)
        sent += 1
        inFlight += 1
        counters.sent.add(1, ordering: .relaxed)
    }

    private func received(_ frame: FrameScanner, others: (FrameScanner) -> Void) {
        if frame.string("type", equals: "ack") {
            let now = MonotonicClock.nanoseconds()
            if let (number, _) = frame.integer("id"), measurement.contains(now) {
                ackLatency.record(nanoseconds: now &- sendTimes[Int(number) & (sendTimes.count - 1)])
                ackedInWindow += 1
            }
            acked += 1
            counters.acked.add(1, ordering: .relaxed)
        } else if frame.string("type", equals: "error") {
            errors += 1
            if firstError == nil { firstError = frame.text("message") }
            counters.errors.add(1, ordering: .relaxed)
        } else {
            others(frame)
            return
        }
        inFlight -= 1
        if perSecond == 0 { fillWindow() }
        if inFlight == 0, stopped || sent == limit, let promise = allAcked {
            allAcked = nil
            promise.succeed()
        }
    }
}
