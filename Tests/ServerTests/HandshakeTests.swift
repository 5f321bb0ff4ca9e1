// The chat listener reads the WebSocket opening handshake itself: every answer it can give
// to a request, byte for byte as a client sees it on the socket.
import Foundation
import Glibc
import ParleyClient
import ParleyServer
import Testing

@Suite("Handshake", .serialized, .timeLimit(.minutes(3)))
struct HandshakeTests {
    /// Sends raw bytes to the chat port and returns what comes back until the server closes
    /// or `bytes` have arrived (or 5 seconds pass).
    private func exchange(_ request: String, port: Int, upTo bytes: Int = 1 << 20) throws -> String {
        String(decoding: try exchange(Array(request.utf8), port: port, upTo: bytes), as: UTF8.self)
    }

    private func exchange(_ sent: [UInt8], port: Int, upTo bytes: Int = 1 << 20, waitSeconds: Int = 5, reset: Bool = false) throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        defer { Glibc.close(fd) }
        if reset {
            // Linger 0: the close resets the connection, and the server sees it closed at once.
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        }
        var timeout = timeval(tv_sec: waitSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw TestFailure("connect() failed") }
        var offset = 0
        while offset < sent.count {
            let written = sent[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { break }
            offset += written
        }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.count < bytes {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            received += buffer[0..<count]
        }
        return received
    }

    private func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }

    private func upgradeRequest(path: String = "/v1/ws", version: String = "13", key: String? = "dGhlIHNhbXBsZSBub25jZQ==", extra: String = "") -> String {
        "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: \(version)\r\n"
            + (key.map { "Sec-WebSocket-Key: \($0)\r\n" } ?? "") + extra + "\r\n"
    }

    @Test func everyRequestGetsItsAnswer() async throws {
        let server = try await TestServer.start()
        let port = server.node.chatPort!

        // RFC 6455, section 1.3: this key's accept value is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=.
        let accepted = try exchange(upgradeRequest(path: "/v1/ws?client=test"), port: port, upTo: 129)
        #expect(accepted.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        #expect(accepted.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))

        let plain = try exchange("GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n", port: port)
        #expect(plain.hasPrefix("HTTP/1.1 426 Upgrade Required\r\n") && plain.contains("\r\nUpgrade: websocket\r\n"))
        #expect(plain.hasSuffix(#"{"code":"upgrade_required","message":"connect a WebSocket to /v1/ws"}"#))

        let elsewhere = try exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", port: port)
        #expect(elsewhere.hasPrefix("HTTP/1.1 404 Not Found\r\n") && elsewhere.contains(#""code":"not_found""#))

        let post = try exchange(upgradeRequest().replacingOccurrences(of: "GET ", with: "POST "), port: port)
        #expect(post.hasPrefix("HTTP/1.1 426 "), "only GET upgrades")

        let oldVersion = try exchange(upgradeRequest(version: "8"), port: port)
        #expect(oldVersion.hasPrefix("HTTP/1.1 426 ") && oldVersion.contains("\r\nSec-WebSocket-Version: 13\r\n") && oldVersion.contains("unsupported_websocket_version"))

        let noKey = try exchange(upgradeRequest(key: nil), port: port)
        #expect(noKey.hasPrefix("HTTP/1.1 400 ") && noKey.contains("bad_handshake"))
        let twoKeys = try exchange(upgradeRequest(extra: "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"), port: port)
        #expect(twoKeys.hasPrefix("HTTP/1.1 400 ") && twoKeys.contains("bad_handshake"))

        let http10 = try exchange(upgradeRequest().replacingOccurrences(of: "HTTP/1.1", with: "HTTP/1.0"), port: port)
        #expect(http10.hasPrefix("HTTP/1.1 400 ") && http10.contains("bad_handshake"), "an upgrade needs HTTP/1.1")
        let noHost = try exchange(upgradeRequest().replacingOccurrences(of: "Host: 127.0.0.1\r\n", with: ""), port: port)
        #expect(noHost.hasPrefix("HTTP/1.1 400 ") && noHost.contains("bad_handshake"), "an upgrade needs a Host header")
        let notBase64 = try exchange(upgradeRequest(key: "!!!!!!!!!!!!!!!!!!!!!!=="), port: port)
        #expect(notBase64.hasPrefix("HTTP/1.1 400 ") && notBase64.contains("bad_handshake"))

        let garbage = try exchange("HELLO\r\n\r\n", port: port)
        #expect(garbage.hasPrefix("HTTP/1.1 400 ") && garbage.contains("bad_request"))

        let huge = try exchange("GET /v1/ws HTTP/1.1\r\nX-Padding: " + String(repeating: "a", count: 20_000) + "\r\n\r\n", port: port)
        #expect(huge.hasPrefix("HTTP/1.1 431 ") && huge.contains("headers_too_large"), "\(huge.prefix(300))")

        // Bytes that follow the request in the same packet are the first WebSocket frame:
        // here a masked ping, answered with a pong (0x8A) right after the 101.
        let pong = try exchange(Array(upgradeRequest().utf8) + [0x89, 0x80, 1, 2, 3, 4], port: port, upTo: 131)
        #expect(String(decoding: pong.prefix(13), as: UTF8.self) == "HTTP/1.1 101 " && pong.suffix(2) == [0x8A, 0x00])
        await server.stop()
    }

    /// Ten seconds to send the request and authenticate: a silent socket is closed, and an
    /// upgraded connection that never says hello is closed with 4002.
    @Test func connectionsThatNeverAuthenticateAreClosed() async throws {
        let server = try await TestServer.start()
        let port = server.node.chatPort!
        let started = ContinuousClock.now
        // Blocking reads of ten seconds run on their own threads, not the tasks' shared pool.
        async let silent = onThread { try exchange([], port: port, waitSeconds: 20) }
        async let upgraded = onThread { try exchange(Array(upgradeRequest().utf8), port: port, waitSeconds: 20) }
        let (silentBytes, upgradedBytes) = try await (silent, upgraded)
        #expect(silentBytes.isEmpty, "a socket that sends nothing gets nothing and is closed")
        // After the 101 response (129 bytes): a close frame, 0x88, whose payload starts with 4002.
        let close = Array(upgradedBytes.dropFirst(129))
        #expect(close.count >= 4 && close[0] == 0x88 && close[2] == 0x0F && close[3] == 0xA2, "close frame \(close.prefix(4))")
        #expect(ContinuousClock.now - started < .seconds(18))
        await server.stop()
    }

    /// A client frame, masked with a fixed key.
    private func frame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = true, rsv: UInt8 = 0) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | rsv | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            bytes.append(maskBit | UInt8(payload.count))
        } else {
            bytes += [maskBit | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        guard masked else { return bytes + payload }
        let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
        return bytes + key + payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
    }

    /// The server's frames after the 101 response: (opcode, payload).
    private func serverFrames(_ bytes: [UInt8]) -> [(UInt8, [UInt8])] {
        var frames: [(UInt8, [UInt8])] = []
        var index = 129
        while index + 2 <= bytes.count {
            var length = Int(bytes[index + 1] & 0x7F), header = 2
            if length == 126, index + 4 <= bytes.count { length = Int(bytes[index + 2]) << 8 | Int(bytes[index + 3]); header = 4 }
            guard index + header + length <= bytes.count else { break }
            frames.append((bytes[index] & 0x0F, Array(bytes[(index + header)..<(index + header + length)])))
            index += header + length
        }
        return frames
    }

    /// The server reads frames itself: fragments with a ping between them, and every kind
    /// of broken frame closes with the code RFC 6455 gives it.
    @Test func framesAreReadAsRFC6455Says() async throws {
        let server = try await TestServer.start(["chat.max_frame_bytes=4096"])
        let port = server.node.chatPort!
        let upgrade = Array(upgradeRequest().utf8)
        let request = Array(#"{"type":"ping","id":"fragmented"}"#.utf8)
        let fragmented = try await onThread {
            try exchange(upgrade + frame(0x1, Array(request[0..<10]), fin: false) + frame(0x9, [7, 7]) + frame(0x0, Array(request[10..<20]), fin: false)
                + frame(0x0, Array(request[20...])) + frame(0x8, [0x03, 0xE8]), port: port, waitSeconds: 5)
        }
        let replies = serverFrames(fragmented)
        #expect(replies.first.map { $0.0 == 0xA && $0.1 == [7, 7] } == true, "the ping between fragments is answered at once")
        #expect(replies.contains { $0.0 == 0x1 && String(decoding: $0.1, as: UTF8.self).contains(#""id":"fragmented""#) }, "the reassembled message is answered")
        #expect(replies.last.map { $0.0 == 0x8 && Array($0.1.prefix(2)) == [0x03, 0xE8] } == true, "a close is answered with the same code")

        func closeCode(_ frames: [UInt8]) async throws -> Int? {
            let bytes = try await onThread { try exchange(upgrade + frames, port: port, waitSeconds: 5) }
            guard let close = serverFrames(bytes).last, close.0 == 0x8, close.1.count >= 2 else { return nil }
            return Int(close.1[0]) << 8 | Int(close.1[1])
        }
        #expect(try await closeCode(frame(0x1, request, masked: false)) == 1002, "unmasked client frame")
        #expect(try await closeCode(frame(0x1, request, rsv: 0x40)) == 1002, "reserved bit without an extension")
        #expect(try await closeCode(frame(0x0, request)) == 1002, "continuation without a message")
        #expect(try await closeCode(frame(0x3, request)) == 1002, "reserved opcode")
        #expect(try await closeCode(frame(0x9, [UInt8](repeating: 1, count: 126))) == 1002, "control frame over 125 bytes")
        #expect(try await closeCode(frame(0x8, [0x03, 0xED])) == 1002, "close code 1005 may not be sent")
        #expect(try await closeCode(frame(0x8, [0x03])) == 1002, "a close payload of one byte")
        #expect(try await closeCode(frame(0x1, [UInt8](repeating: 0x20, count: 5_000))) == 1009, "one frame over the limit")
        #expect(try await closeCode(frame(0x1, [UInt8](repeating: 0x20, count: 3_000), fin: false) + frame(0x0, [UInt8](repeating: 0x20, count: 3_000))) == 1009, "fragments over the limit")
        await server.stop()
    }

    /// With the token in the upgrade request, the 101 answer waits for the token check and
    /// leaves with the `welcome` (or the error) in one write: the first read has both.
    @Test func aHeaderTokenIsAnsweredWithTheWelcomeInOneWrite() async throws {
        let server = try await TestServer.start()
        let port = server.node.chatPort!
        let token = try await server.user("hedda")[0].token
        let first = try await onThread { try exchange(Array(upgradeRequest(extra: "Authorization: Bearer \(token)\r\n").utf8), port: port, upTo: 1) }
        #expect(String(decoding: first.prefix(13), as: UTF8.self) == "HTTP/1.1 101 ")
        let frames = serverFrames(first)
        #expect(frames.count == 1 && frames[0].0 == 0x1 && String(decoding: frames[0].1, as: UTF8.self).contains(#""type":"welcome""#), "\(frames.map { String(decoding: $0.1, as: UTF8.self) })")

        let refused = try await onThread { try exchange(Array(upgradeRequest(extra: "Authorization: Bearer \(String(repeating: "x", count: 43))\r\n").utf8), port: port) }
        let replies = serverFrames(refused)
        #expect(String(decoding: refused.prefix(13), as: UTF8.self) == "HTTP/1.1 101 ")
        #expect(replies.first.map { String(decoding: $0.1, as: UTF8.self).contains(#""code":"unauthorized""#) } == true)
        #expect(replies.last.map { $0.0 == 0x8 && Array($0.1.prefix(2)) == [0x0F, 0xA1] } == true, "then close 4001")
        await server.stop()
    }

    /// Connections that close while their header token is being checked must not stay
    /// registered (they would count as online for good).
    @Test func connectionsClosedDuringAuthenticationAreNotLeftRegistered() async throws {
        let server = try await TestServer.start()
        let port = server.node.chatPort!
        let token = try await server.user("quinn")[0].token
        let request = Array(upgradeRequest(extra: "Authorization: Bearer \(token)\r\n").utf8)
        // Send the upgrade and reset the connection at once, without reading the answer.
        try await onThread {
            for _ in 0..<40 { _ = try exchange(request, port: port, upTo: 0, reset: true) }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while server.node.chat.onlineConnections > 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(server.node.chat.onlineConnections == 0)
        await server.stop()
    }
}
