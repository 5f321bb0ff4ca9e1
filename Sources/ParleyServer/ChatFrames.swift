// Frames the chat listener sends that have a shape of their own: errors, acks, message
// events (built once and shared by every recipient). Other replies are JSONWriter.frame.
package import NIOCore
import ParleyJSON
package import ParleyCore
import ParleyWebSocket

package enum ChatFrames {
    static func error(id: String?, _ error: ChatError) -> [UInt8] {
        JSONWriter.frame("error", id: id) { errorFields(&$0, code: error.code, message: error.message) }
    }

    /// An error's stable code and its message: in an `error` frame, and as the whole body of
    /// an HTTP error answer (the API's and the refused handshake's).
    static func errorFields(_ writer: inout JSONWriter, code: String, message: String) {
        writer.field("code", code)
        writer.field("message", message)
    }

    package static func ack(id: String?, _ ack: SendAck) -> [UInt8] {
        JSONWriter.frame("ack", id: id) { writer in
            writer.field("conversation", ack.conversation)
            writer.field("seq", ack.sequence)
            writer.field("ts", ack.timestamp)
            writer.field("client_id", ack.clientID)
            writer.field("duplicate", ack.duplicate)
        }
    }

    /// `{"type":"message","message":RECORD}`: the stored record spliced in unchanged.
    package static func messageEvent(_ record: [UInt8]) -> FramePayload { .event("message", record) }

    static func toDeviceEvent(_ record: [UInt8]) -> FramePayload { .event("to_device", record) }

    static func user(_ writer: inout JSONWriter, _ key: String, _ profile: UserProfile) {
        writer.beginObject(key)
        writer.field("id", profile.id)
        writer.field("username", profile.username)
        writer.field("display_name", profile.displayName)
        writer.endObject()
    }
}

/// A text frame's payload on its way to connections. Bytes built for one connection and a
/// stored record spliced into an event are written straight into the connection's pending
/// buffer, with no buffer of their own on the way; a fan-out to several connections builds
/// one buffer that they all share (`buffer`).
package enum FramePayload: Sendable {
    case bytes([UInt8])
    case buffer(ByteBuffer)
    /// `{"type":"TYPE","message":RECORD}`, the record spliced in unchanged.
    case event(StaticString, [UInt8])

    package var count: Int {
        switch self {
        case .bytes(let bytes): bytes.count
        case .buffer(let buffer): buffer.readableBytes
        case .event(let type, let record): Self.eventOverhead + type.utf8CodeUnitCount + record.count
        }
    }

    /// `{"type":"` `","message":` `}`
    private static let eventOverhead = 9 + 12 + 1

    /// The payload in a buffer of its own.
    package var buffer: ByteBuffer {
        if case .buffer(let buffer) = self { return buffer }
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        write(to: &buffer)
        return buffer
    }

    /// Appends a whole unmasked frame (a server's) with this payload.
    package func appendFrame(opcode: UInt8, to buffer: inout ByteBuffer) {
        WebSocketFrames.appendHeader(opcode: opcode, length: count, masked: false, to: &buffer)
        write(to: &buffer)
    }

    private func write(to buffer: inout ByteBuffer) {
        switch self {
        case .bytes(let bytes):
            buffer.writeBytes(bytes)
        case .buffer(let payload):
            buffer.writeImmutableBuffer(payload)
        case .event(let type, let record):
            buffer.writeStaticString("{\"type\":\"")
            buffer.writeStaticString(type)
            buffer.writeStaticString("\",\"message\":")
            buffer.writeBytes(record)
            buffer.writeInteger(UInt8(ascii: "}"))
        }
    }
}
