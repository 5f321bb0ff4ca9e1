// Time for latencies: CLOCK_MONOTONIC is one clock for the whole machine, so times
// taken in worker processes and in the parent can be compared.
import Glibc

/// Nanoseconds on the machine-wide monotonic clock.
enum MonotonicClock {
    static func nanoseconds() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }

    static func seconds(from start: UInt64, to end: UInt64) -> Double {
        Double(end &- start) / 1e9
    }
}
