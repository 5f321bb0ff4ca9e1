// The end of an HTTP/1.1 request or response head: the WebSocket opening handshake's, read
// by the chat listener (requests) and by the load generator (answers).
import Glibc

public enum HTTPHead {
    /// The offset of the blank line ("\r\n\r\n") that ends the head in `bytes`, searching
    /// from `start`; nil while it has not arrived. Jumps from one CR to the next (`memchr`),
    /// so a head costs a few calls, not a step per byte.
    public static func end(in bytes: UnsafeRawBufferPointer, from start: Int = 0) -> Int? {
        guard let base = bytes.baseAddress else { return nil }
        var position = max(0, start)
        while position + 4 <= bytes.count {
            guard let found = memchr(base + position, 0x0D, bytes.count - position - 3) else { return nil }
            let offset = base.distance(to: UnsafeRawPointer(found))
            if bytes[offset + 1] == 0x0A, bytes[offset + 2] == 0x0D, bytes[offset + 3] == 0x0A { return offset }
            position = offset + 1
        }
        return nil
    }
}
