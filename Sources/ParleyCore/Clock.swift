// Server time in milliseconds since the Unix epoch, the unit of every timestamp in the protocol.
import Glibc

/// Milliseconds since 1970-01-01T00:00:00Z.
public func currentTimeMillis() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}
