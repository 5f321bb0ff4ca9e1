// Reads WebSocket frames (RFC 6455, section 5) from the bytes of one connection: the
// server's reader of client frames (masked, unmasked here in place) and the load
// generator's reader of server frames (unmasked). Each payload is handed on as a slice of
// the bytes read, with no frame objects (the first unmask of a read copies the read buffer
// once, since NIO still holds it during the read); fragmented messages are reassembled up to
// a size limit.
public import NIOCore

public struct WebSocketReader {
    public enum Event {
        /// A whole text message.
        case text(ByteBuffer)
        case binary
        case ping(ByteBuffer)
        case pong
        /// A close frame, with its status code when it has one.
        case close(UInt16?)
    }

    public enum Failure: Error {
        /// Not a valid frame sequence (close code 1002), with the reason.
        case protocolError(String)
        /// A message over the limit (close code 1009).
        case tooLarge
    }

    public let maxMessageBytes: Int
    /// Frames must be masked (a server reading a client) or must not be (a client reading a server).
    public let masked: Bool
    /// Bytes read and not yet consumed.
    private var buffer: ByteBuffer?
    /// The fragments so far of a message sent in several frames, and its opcode.
    private var fragments: ByteBuffer?
    private var fragmentsAreText = false

    public init(maxMessageBytes: Int, masked: Bool = true) {
        self.maxMessageBytes = maxMessageBytes
        self.masked = masked
    }

    public mutating func append(_ bytes: inout ByteBuffer) {
        if buffer == nil || buffer!.readableBytes == 0 {
            buffer = bytes
        } else {
            // Keep only the unread part of a frame, so a client that always leaves one pending
            // cannot make the buffer grow.
            buffer!.discardReadBytes()
            buffer!.writeBuffer(&bytes)
        }
    }

    /// The next event, or nil when more bytes are needed.
    public mutating func next() throws(Failure) -> Event? {
        while true {
            guard buffer != nil, let frame = try nextFrame() else {
                if buffer?.readableBytes == 0 { buffer = nil }
                return nil
            }
            switch frame.opcode {
            case 0x0:
                guard fragments != nil else { throw .protocolError("a continuation frame without a message to continue") }
                guard fragments!.readableBytes + frame.payload.readableBytes <= maxMessageBytes else { throw .tooLarge }
                fragments!.writeImmutableBuffer(frame.payload)
                guard frame.fin else { continue }
                let message = fragments!
                fragments = nil
                return fragmentsAreText ? .text(message) : .binary
            case 0x1, 0x2:
                guard fragments == nil else { throw .protocolError("a new message began before the last one ended") }
                if frame.fin { return frame.opcode == 0x1 ? .text(frame.payload) : .binary }
                // Copied out, so the read buffer stays unshared and can be unmasked in place.
                var first = ByteBufferAllocator().buffer(capacity: frame.payload.readableBytes)
                first.writeImmutableBuffer(frame.payload)
                fragments = first
                fragmentsAreText = frame.opcode == 0x1
            case 0x8:
                guard frame.payload.readableBytes != 1 else { throw .protocolError("a close frame's code has two bytes") }
                guard let code = frame.payload.getInteger(at: frame.payload.readerIndex, as: UInt16.self) else { return .close(nil) }
                // RFC 6455, section 7.4: codes a peer may send.
                guard (1000...1003).contains(code) || (1007...1011).contains(code) || (3000...4999).contains(code) else {
                    throw .protocolError("close code \(code) may not be sent")
                }
                return .close(code)
            case 0x9:
                return .ping(frame.payload)
            default:
                return .pong
            }
        }
    }

    private struct Frame {
        var fin: Bool
        var opcode: UInt8
        var payload: ByteBuffer
    }

    /// Takes one whole frame off the buffer, unmasked; nil when it has not all arrived.
    private mutating func nextFrame() throws(Failure) -> Frame? {
        let start = buffer!.readerIndex
        let available = buffer!.readableBytes
        guard available >= 2, let first = buffer!.getInteger(at: start, as: UInt8.self), let second = buffer!.getInteger(at: start + 1, as: UInt8.self) else { return nil }
        let fin = first & 0x80 != 0
        let opcode = first & 0x0F
        guard first & 0x70 == 0 else { throw .protocolError("reserved bits are set; no extension was negotiated") }
        guard second & 0x80 != 0 || !masked else { throw .protocolError("frames from a client must be masked") }
        guard second & 0x80 == 0 || masked else { throw .protocolError("frames from a server must not be masked") }
        var header = 2
        var length = UInt64(second & 0x7F)
        if length == 126 {
            guard available >= 4, let extended = buffer!.getInteger(at: start + 2, as: UInt16.self) else { return nil }
            length = UInt64(extended)
            header = 4
        } else if length == 127 {
            guard available >= 10, let extended = buffer!.getInteger(at: start + 2, as: UInt64.self) else { return nil }
            length = extended
            header = 10
        }
        switch opcode {
        case 0x8, 0x9, 0xA:
            guard fin, length <= 125 else { throw .protocolError("a control frame must be whole and at most 125 bytes") }
        case 0x0, 0x1, 0x2:
            guard length <= UInt64(maxMessageBytes) else { throw .tooLarge }
        default:
            throw .protocolError("unknown opcode \(opcode)")
        }
        let count = Int(length)
        let keyBytes = masked ? 4 : 0
        guard available >= header + keyBytes + count else { return nil }
        let payloadAt = start + header + keyBytes
        if masked {
            buffer!.withUnsafeMutableReadableBytes { bytes in
                let payload = UnsafeMutableRawBufferPointer(rebasing: bytes[(header + 4)..<(header + 4 + count)])
                WebSocketFrames.mask(payload, key: (bytes[header], bytes[header + 1], bytes[header + 2], bytes[header + 3]))
            }
        }
        let payload = buffer!.getSlice(at: payloadAt, length: count)!
        buffer!.moveReaderIndex(to: payloadAt + count)
        return Frame(fin: fin, opcode: opcode, payload: payload)
    }
}

/// Writing frames, and the mask both sides apply.
public enum WebSocketFrames {
    public static let text: UInt8 = 0x1
    public static let close: UInt8 = 0x8
    public static let ping: UInt8 = 0x9
    public static let pong: UInt8 = 0xA

    /// Appends one whole frame: FIN and the opcode, the payload length (RFC 6455, section
    /// 5.2), and the payload, masked with `key` when one is given (a client's frames).
    public static func append(opcode: UInt8, _ payload: ByteBuffer, to buffer: inout ByteBuffer, key: (UInt8, UInt8, UInt8, UInt8)? = nil) {
        let length = payload.readableBytes
        appendHeader(opcode: opcode, length: length, masked: key != nil, to: &buffer)
        guard let key else {
            buffer.writeImmutableBuffer(payload)
            return
        }
        buffer.writeBytes([key.0, key.1, key.2, key.3])
        let start = buffer.writerIndex - buffer.readerIndex
        buffer.writeImmutableBuffer(payload)
        buffer.withUnsafeMutableReadableBytes { bytes in
            mask(UnsafeMutableRawBufferPointer(rebasing: bytes[start..<(start + length)]), key: key)
        }
    }

    /// Appends a frame's header: FIN and the opcode, then the payload length in the shortest
    /// form, with the mask bit when a masking key follows. The payload comes next, `length` bytes.
    public static func appendHeader(opcode: UInt8, length: Int, masked: Bool, to buffer: inout ByteBuffer) {
        let maskBit: UInt8 = masked ? 0x80 : 0
        buffer.writeInteger(0x80 | opcode)
        if length < 126 {
            buffer.writeInteger(maskBit | UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(maskBit | 126)
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(maskBit | 127)
            buffer.writeInteger(UInt64(length))
        }
    }

    /// XORs the payload with the repeating 4-byte key, eight bytes at a time (masking and
    /// unmasking are the same operation).
    public static func mask(_ payload: UnsafeMutableRawBufferPointer, key mask: (UInt8, UInt8, UInt8, UInt8)) {
        let key = [mask.0, mask.1, mask.2, mask.3]
        var word: UInt64 = 0
        withUnsafeMutableBytes(of: &word) { bytes in
            for index in 0..<8 { bytes[index] = key[index % 4] }
        }
        var index = 0
        while index + 8 <= payload.count {
            let value = payload.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            payload.storeBytes(of: value ^ word, toByteOffset: index, as: UInt64.self)
            index += 8
        }
        while index < payload.count {
            payload[index] ^= key[index % 4]
            index += 1
        }
    }
}
