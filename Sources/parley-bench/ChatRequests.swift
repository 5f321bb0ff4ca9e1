// The requests the scenarios make outside their hot paths, each awaiting its reply.
import NIOCore
import ParleyJSON

extension BenchConnection {
    /// Sends a request frame built by `fields` (type and id are added) and awaits the reply,
    /// which must have `replyType`.
    func call(_ type: String, id: String, expecting replyType: StaticString, timeout: Double = 30, _ fields: @escaping @Sendable (inout JSONWriter) -> Void = { _ in }) async throws -> ByteBuffer {
        let reply = try await eventLoop.flatSubmit {
            self.request(id: id, String(decoding: JSONWriter.frame(type, id: id, fields), as: UTF8.self))
        }.timeout(after: timeout, "the \(type) request").get()
        let matches = reply.withUnsafeReadableBytes { FrameScanner(bytes: $0).string("type", equals: replyType) }
        guard matches else { throw BenchFailure("\(type) was answered with \(String(buffer: reply))") }
        return reply
    }

    /// The direct conversation with `username`, from the `open` request.
    func openConversation(with username: String) async throws -> String {
        let reply = try await call("open", id: "open-\(username)", expecting: "conversation") { $0.field("with", username) }
        guard let conversation = reply.withUnsafeReadableBytes({ FrameScanner(bytes: $0).text("conversation") }) else {
            throw BenchFailure("open gave no conversation: \(String(buffer: reply))")
        }
        return conversation
    }

    /// Closes the connection and waits until the socket is gone.
    func closeAndWait() async {
        try? await eventLoop.flatSubmit { self.close() }.timeout(after: 10, "closing a connection").get()
    }
}
