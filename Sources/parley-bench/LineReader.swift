// Lines from a pipe, read on a thread of their own so no event loop or task blocks.
import Foundation

/// Reads a file handle line by line until it ends.
enum LineReader {
    /// Calls `line` for each line (without its newline), then `ended` once at end of file.
    static func start(_ handle: FileHandle, line: @escaping @Sendable (String) -> Void, ended: @escaping @Sendable () -> Void) {
        let thread = Thread {
            var pending: [UInt8] = []
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                pending.append(contentsOf: data)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    line(String(decoding: pending[..<newline], as: UTF8.self))
                    pending.removeSubrange(...newline)
                }
            }
            ended()
        }
        thread.start()
    }
}
