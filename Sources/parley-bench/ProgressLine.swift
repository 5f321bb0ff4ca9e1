// Progress of a running scenario on stderr, so stdout stays clean for the report.
import Foundation

/// Prints a status line to stderr twice a second until stopped.
final class ProgressLine: Sendable {
    private let task: Task<Void, Never>

    /// `status` is asked for the current line each time.
    init(_ label: String, status: @escaping @Sendable () -> String) {
        let started = MonotonicClock.nanoseconds()
        task = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                if Task.isCancelled { break }
                let elapsed = MonotonicClock.seconds(from: started, to: MonotonicClock.nanoseconds())
                Self.write("[\(label) \(String(format: "%5.1f", elapsed)) s] \(status())")
            }
        }
    }

    func stop() {
        task.cancel()
    }

    static func write(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
