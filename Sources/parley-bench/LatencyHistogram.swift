import Histogram

/// Latencies in microseconds, with three significant digits (HdrHistogram), from 1 µs
/// to a minute. It is Codable so worker processes can hand theirs to the parent.
struct LatencyHistogram: Codable, Sendable {
    private var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)

    init() {
        histogram.autoResize = true
    }

    mutating func record(nanoseconds: UInt64) {
        _ = histogram.record(max(1, nanoseconds / 1_000))
    }

    mutating func add(_ other: LatencyHistogram) {
        histogram.add(other.histogram)
    }

    var count: Int { Int(histogram.totalCount) }

    /// The latency at `percentile` (0 to 100) in milliseconds.
    func milliseconds(atPercentile percentile: Double) -> Double {
        count == 0 ? 0 : Double(histogram.valueAtPercentile(percentile)) / 1_000
    }

    var maxMilliseconds: Double { count == 0 ? 0 : Double(histogram.max) / 1_000 }
}
