// The chat listener reads the WebSocket opening handshake itself: every answer it can give
// to a request, byte for byte as a client sees it on the socket.
import Foundation
import Glibc
import ParleyServer
import Testing

@Suite("Handshake", .serialized)
struct HandshakeTests {
    /// Sends raw bytes to the chat port and returns what comes back until the server closes
    /// or `bytes` have arrived (or 5 seconds pass).
    private func exchange(_ request: String, port: Int, upTo bytes: Int = 1 << 20) throws -> String {
        String(decoding: try exchange(Array(request.utf8), port: port, upTo: bytes), as: UTF8.self)
    }

    private func exchange(_ sent: [UInt8], port: Int, upTo bytes: Int = 1 << 20, waitSeconds: Int = 5) throws -> [UInt8] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        defer { Glibc.close(fd) }
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
}
