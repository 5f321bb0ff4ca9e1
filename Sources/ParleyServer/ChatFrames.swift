// Frames the chat listener sends that have a shape of their own: errors, acks, message
// events (built once and shared by every recipient). Other replies are JSONWriter.frame.
package import NIOCore
import ParleyJSON
package import ParleyCore

package enum ChatFrames {
    static func error(id: String?, _ error: ChatError) -> [UInt8] {
        JSONWriter.frame("error", id: id) { writer in
            writer.field("code", error.code)
            writer.field("message", error.message)
        }
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

    /// `{"type":"message","message":RECORD}`: the stored record spliced in unchanged,
    /// built once into the buffer every recipient's connection shares.
    package static func messageEvent(_ record: [UInt8]) -> ByteBuffer { event("message", record) }

    static func toDeviceEvent(_ record: [UInt8]) -> ByteBuffer { event("to_device", record) }

    private static func event(_ type: StaticString, _ record: [UInt8]) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: record.count + 40)
        buffer.writeStaticString("{\"type\":\"")
        buffer.writeStaticString(type)
        buffer.writeStaticString("\",\"message\":")
        buffer.writeBytes(record)
        buffer.writeInteger(UInt8(ascii: "}"))
        return buffer
    }

    static func user(_ writer: inout JSONWriter, _ key: String, _ profile: UserProfile) {
        writer.beginObject(key)
        writer.field("id", profile.id)
        writer.field("username", profile.username)
        writer.field("display_name", profile.displayName)
        writer.endObject()
    }
}
