import Synchronization

/// The span of a run whose events count: after the warm-up, before the drain.
/// Times are `MonotonicClock` nanoseconds; read from every event loop.
final class MeasurementWindow: Sendable {
    private let start = Atomic<UInt64>(.max)
    private let end = Atomic<UInt64>(.max)

    func open(at time: UInt64) {
        start.store(time, ordering: .relaxed)
    }

    func close(at time: UInt64) {
        end.store(time, ordering: .relaxed)
    }

    func contains(_ time: UInt64) -> Bool {
        time >= start.load(ordering: .relaxed) && time < end.load(ordering: .relaxed)
    }
}

/// Running totals for the progress line, updated from the event loops.
final class LiveCounters: Sendable {
    let sent = Atomic<Int>(0)
    let acked = Atomic<Int>(0)
    let delivered = Atomic<Int>(0)
    let errors = Atomic<Int>(0)

    var status: String {
        "sent \(sent.load(ordering: .relaxed)), acked \(acked.load(ordering: .relaxed)), delivered \(delivered.load(ordering: .relaxed)), errors \(errors.load(ordering: .relaxed))"
    }
}
