// Ctrl-C or a SIGTERM in the middle of a run: clean up what the run started, then end.
import Dispatch
import Glibc

/// While it exists, SIGINT and SIGTERM run `cleanUp` and then end the process as the
/// signal would have (exit status 128 + the signal's number).
final class Interruption: @unchecked Sendable {
    private let sources: [any DispatchSourceSignal]

    init(_ cleanUp: @escaping @Sendable () -> Void) {
        sources = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                cleanUp()
                exit(128 + number)
            }
            source.resume()
            return source
        }
    }

    /// The signals' default actions again.
    func end() {
        for source in sources { source.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}
