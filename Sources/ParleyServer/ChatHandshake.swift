// The HTTP/1.1 request that opens a chat connection: the WebSocket opening handshake
// (RFC 6455, section 4.2), read and answered by one handler that then puts the chat
// connection's handler in its place.
//
// NIO's generic HTTP server pipeline with its upgrader costs five handlers added and
// removed, a chain of futures and a full HTTP parser for one request per connection;
// profiles of reconnect storms put a third of the server's time there. The chat listener
// serves exactly one kind of request, so it reads that request itself.
import Foundation
import NIOCore
import ParleyJSON
import ParleyWebSocket

final class ChatHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The most bytes a request head may have.
    static let maxHeadBytes = 16_384

    private let service: ChatService
    private let settings: ChatListenerSettings
    private var received: ByteBuffer?
    /// Where to look for the end of the head next time, so bytes are scanned once.
    private var scanFrom = 0
    /// The request has been answered (with 101 or an error); later bytes are not a request.
    private var answered = false
    private var upgraded = false

    init(service: ChatService, settings: ChatListenerSettings) {
        self.service = service
        self.settings = settings
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // A connection that never completes its request is closed like one that never
        // authenticates. The timer is left to fire, not cancelled: cancelling searches NIO's
        // whole timer queue, which under a reconnect storm holds a timer per connection.
        let channel = context.channel
        context.eventLoop.assumeIsolated().scheduleTask(in: settings.authenticationTimeout) { [self] in
            if !upgraded { channel.close(promise: nil) }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        var bytes = unwrapInboundIn(data)
        if received == nil {
            received = bytes
        } else {
            received!.writeBuffer(&bytes)
        }
        let view = received!.readableBytesView
        let end = received!.withUnsafeReadableBytes { HTTPHead.end(in: $0, from: scanFrom) }
        guard (end ?? view.count) <= Self.maxHeadBytes else {
            refuse(context, HandshakeRefusal(status: "431 Request Header Fields Too Large", code: "headers_too_large", message: "the request head is larger than \(Self.maxHeadBytes) bytes"))
            return
        }
        guard let end else {
            scanFrom = max(0, view.count - 3)
            return
        }
        guard let request = HandshakeRequest(head: view.prefix(end)) else {
            refuse(context, HandshakeRefusal(status: "400 Bad Request", code: "bad_request", message: "the request is not valid HTTP/1.1"))
            return
        }
        switch request.check() {
        case .failure(let refusal):
            refuse(context, refusal)
        case .success(let key):
            var rest = received!
            rest.moveReaderIndex(forwardBy: end + 4)
            received = nil
            upgrade(context, key: key, token: request.bearerToken, rest: rest)
        }
    }

    /// Answers 101, puts the chat connection's handler after this one (it is the last),
    /// hands it any bytes that followed the request, and leaves the pipeline.
    private func upgrade(_ context: ChannelHandlerContext, key: String, token: String?, rest: ByteBuffer) {
        answered = true
        upgraded = true
        do {
            var response = context.channel.allocator.buffer(capacity: 160)
            response.writeString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ")
            response.writeString(WebSocketAccept.value(forKey: key))
            response.writeString("\r\n\r\n")
            // With a token in the request the answer waits for the `welcome` (or the error),
            // so both leave in one write; without, the client's `hello` needs the answer now.
            if token == nil { context.writeAndFlush(wrapOutboundOut(response), promise: nil) }
            let handler = ChatConnectionHandler(service: service, settings: settings, headerToken: token, heldAnswer: token == nil ? nil : response)
            try context.pipeline.syncOperations.addHandler(handler)
            if rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }

    /// Answers with a JSON error and ends the connection's output. What the client still
    /// sends is read and dropped until it closes (or the handshake time runs out): closing
    /// with unread input would reset the connection and could lose the answer.
    private func refuse(_ context: ChannelHandlerContext, _ refusal: HandshakeRefusal) {
        answered = true
        received = nil
        let body = JSONWriter.object(capacity: 128) { ChatFrames.errorFields(&$0, code: refusal.code, message: refusal.message) }
        var response = context.channel.allocator.buffer(capacity: 256 + body.count)
        response.writeString("HTTP/1.1 \(refusal.status)\r\n")
        for (name, value) in refusal.headers { response.writeString("\(name): \(value)\r\n") }
        response.writeString("Content-Type: application/json\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n")
        response.writeBytes(body)
        context.writeAndFlush(wrapOutboundOut(response), promise: nil)
        context.close(mode: .output, promise: nil)
    }
}

/// An error answer to a request that is not a chat WebSocket handshake.
struct HandshakeRefusal: Error {
    var status: String
    var code: String
    var message: String
    var headers: [(String, String)] = []
}

/// The parts of a request head the handshake needs. Header names are compared without
/// regard to case; a header given twice counts as two (RFC 9110, section 5.3).
struct HandshakeRequest {
    var method: String
    var target: String
    var version: String
    var headers: [(name: String, value: String)] = []

    /// Reads the head's bytes (without the blank line that ends it). Lines end with CR LF;
    /// the work is done on bytes, since Swift's `String` would treat every character as a
    /// grapheme cluster, which profiles of reconnect storms showed costs more than the rest of
    /// the handshake.
    init?(head: some Collection<UInt8>) {
        let bytes = Array(head)
        var lines: [ArraySlice<UInt8>] = []
        var start = 0, index = 0
        while index + 1 < bytes.count {
            if bytes[index] == Self.cr, bytes[index + 1] == Self.lf {
                lines.append(bytes[start..<index])
                index += 2
                start = index
            } else {
                index += 1
            }
        }
        lines.append(bytes[start...])
        let parts = lines[0].split(separator: Self.space, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard parts.count == 3, !parts[0].isEmpty, parts[1].hasPrefix("/") || parts[1] == "*", parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0" else { return nil }
        method = parts[0]
        target = parts[1]
        version = parts[2]
        for line in lines.dropFirst() {
            // No folded lines (obsolete) and no names with spaces before the colon.
            guard let colon = line.firstIndex(of: Self.colon), colon != line.startIndex, !line[..<colon].contains(Self.space),
                line.first != Self.space, line.first != Self.tab
            else { return nil }
            let name = line[..<colon].map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }
            var value = line[(colon + 1)...]
            while let first = value.first, first == Self.space || first == Self.tab { value = value.dropFirst() }
            while let last = value.last, last == Self.space || last == Self.tab { value = value.dropLast() }
            headers.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
    }

    private static let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n"), space = UInt8(ascii: " "), tab = UInt8(ascii: "\t"), colon = UInt8(ascii: ":")

    /// All values of a header.
    func values(_ name: String) -> [String] { headers.filter { $0.name == name }.map(\.value) }

    /// Whether a comma-separated header lists `token` (case-insensitive).
    func lists(_ name: String, _ token: String) -> Bool {
        values(name).contains { $0.split(separator: ",").contains { $0.trimmingWhitespace().lowercased() == token } }
    }

    var bearerToken: String? {
        guard let value = values("authorization").first else { return nil }
        let parts = value.split(separator: " ", maxSplits: 1)
        return parts.count == 2 && parts[0].lowercased() == "bearer" ? String(parts[1].trimmingWhitespace()) : nil
    }

    /// The client's `Sec-WebSocket-Key` when this is a valid handshake for the chat path,
    /// else the answer to give.
    func check() -> Result<String, HandshakeRefusal> {
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard path.hasPrefix(ChatListener.path) else {
            return .failure(HandshakeRefusal(status: "404 Not Found", code: "not_found", message: "connect a WebSocket to \(ChatListener.path)"))
        }
        guard path == ChatListener.path, method == "GET", lists("upgrade", "websocket"), lists("connection", "upgrade") else {
            return .failure(HandshakeRefusal(status: "426 Upgrade Required", code: "upgrade_required", message: "connect a WebSocket to \(ChatListener.path)", headers: [("Upgrade", "websocket")]))
        }
        guard values("sec-websocket-version") == ["13"] else {
            return .failure(HandshakeRefusal(status: "426 Upgrade Required", code: "unsupported_websocket_version", message: "only WebSocket version 13 is supported", headers: [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]))
        }
        guard version == "HTTP/1.1", values("host").count == 1 else {
            return .failure(HandshakeRefusal(status: "400 Bad Request", code: "bad_handshake", message: "a WebSocket upgrade is an HTTP/1.1 request with one Host header"))
        }
        let keys = values("sec-websocket-key")
        guard keys.count == 1, let key = keys.first, Data(base64Encoded: String(key))?.count == 16 else {
            return .failure(HandshakeRefusal(status: "400 Bad Request", code: "bad_handshake", message: "Sec-WebSocket-Key must be given once, as 16 bytes in base64"))
        }
        return .success(String(key))
    }
}

extension Substring {
    func trimmingWhitespace() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result = result.dropFirst() }
        while let last = result.last, last == " " || last == "\t" { result = result.dropLast() }
        return result
    }
}

/// The `Sec-WebSocket-Accept` value: base64 of the SHA-1 of the key and the protocol's GUID.
package enum WebSocketAccept {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    package static func value(forKey key: String) -> String {
        Data(sha1(Array((key + guid).utf8))).base64EncodedString()
    }

    /// SHA-1 (FIPS 180-4). Used only for the handshake, where RFC 6455 requires it; it
    /// protects nothing.
    static func sha1(_ message: [UInt8]) -> [UInt8] {
        var h: (UInt32, UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0)
        var padded = message
        padded.append(0x80)
        while padded.count % 64 != 56 { padded.append(0) }
        let bits = UInt64(message.count) * 8
        for shift in stride(from: 56, through: 0, by: -8) { padded.append(UInt8(truncatingIfNeeded: bits >> UInt64(shift))) }
        var w = [UInt32](repeating: 0, count: 80)
        for block in stride(from: 0, to: padded.count, by: 64) {
            for i in 0..<16 {
                let offset = block + i * 4
                w[i] = UInt32(padded[offset]) << 24 | UInt32(padded[offset + 1]) << 16 | UInt32(padded[offset + 2]) << 8 | UInt32(padded[offset + 3])
            }
            for i in 16..<80 {
                let x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = x << 1 | x >> 31
            }
            var (a, b, c, d, e) = h
            for i in 0..<80 {
                let f: UInt32, k: UInt32
                switch i {
                case 0..<20: (f, k) = ((b & c) | (~b & d), 0x5A82_7999)
                case 20..<40: (f, k) = (b ^ c ^ d, 0x6ED9_EBA1)
                case 40..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62_C1D6)
                }
                let temp = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, b << 30 | b >> 2, a, temp)
            }
            h = (h.0 &+ a, h.1 &+ b, h.2 &+ c, h.3 &+ d, h.4 &+ e)
        }
        return [h.0, h.1, h.2, h.3, h.4].flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> UInt32(24 - $0 * 8)) } }
    }
}
