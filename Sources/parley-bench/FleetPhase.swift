/// What a worker process reports after opening (or closing) its share of connections.
/// Times are `MonotonicClock` nanoseconds, comparable across processes.
struct FleetPhase: Codable, Sendable {
    var opened = 0
    var failed = 0
    var started: UInt64 = 0
    var finished: UInt64 = 0
    /// Connect-to-welcome (and sync reply, when asked) per connection.
    var latency = LatencyHistogram()
    /// CPU seconds the worker used during the phase.
    var clientCPU = 0.0
    var firstError: String?

    /// Adds another worker's phase: counts and histograms add up, the span covers both.
    mutating func add(_ other: FleetPhase) {
        if opened + failed == 0 {
            started = other.started
            finished = other.finished
        } else {
            started = min(started, other.started)
            finished = max(finished, other.finished)
        }
        opened += other.opened
        failed += other.failed
        latency.add(other.latency)
        clientCPU += other.clientCPU
        firstError = firstError ?? other.firstError
    }

    var seconds: Double { MonotonicClock.seconds(from: started, to: finished) }
}
