// Connection-level behaviour: heartbeats and dead connections, slow consumers,
// to-device messages, TLS, metrics.
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import ParleyClient
import ParleyJSON
import NIOCore
import NIOPosix
import ParleyServer
import PluginHost
import Synchronization
import Testing

/// Which of several jobs have run.
private final class RanJobs: Sendable {
    private let ran = Mutex<Set<Int>>([])
    func mark(_ index: Int) { ran.withLock { _ = $0.insert(index) } }
    var all: Set<Int> { ran.withLock { $0 } }
}

/// A listener on loopback that answers one WebSocket upgrade (or, with `answersUpgrade`
/// false, not even that) and then says nothing, like a server that hangs.
private final class SilentWebSocketServer: @unchecked Sendable {
    private let listener: Int32
    private(set) var port = 0
    private let accepted = Mutex<[Int32]>([])

    init(answersUpgrade: Bool = true) throws {
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw -> Bool in
                bind(listener, raw, length) == 0 && listen(listener, 4) == 0 && getsockname(listener, raw, &length) == 0
            }
        }
        guard bound else { throw TestFailure("cannot listen on loopback") }
        port = Int(UInt16(bigEndian: address.sin_port))
        let listening = listener
        Thread.detachNewThread { [self] in
            let connection = accept(listening, nil, nil)
            guard connection >= 0 else { return }
            accepted.withLock { $0.append(connection) }
            guard answersUpgrade else { return }
            var request = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !String(decoding: request, as: UTF8.self).contains("\r\n\r\n") {
                let count = recv(connection, &buffer, buffer.count, 0)
                guard count > 0 else { return }
                request += buffer[0..<count]
            }
            let key = String(decoding: request, as: UTF8.self).split(separator: "\r\n")
                .first { $0.lowercased().hasPrefix("sec-websocket-key:") }?.split(separator: ":", maxSplits: 1).last?
                .trimmingCharacters(in: .whitespaces) ?? ""
            let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Accept: \(WebSocketAccept.value(forKey: key))\r\n\r\n"
            _ = answer.utf8CString.withUnsafeBufferPointer { send(connection, $0.baseAddress, $0.count - 1, 0) }
        }
    }

    var url: String { "ws://127.0.0.1:\(port)/v1/ws" }

    func stop() {
        close(listener)
        for connection in accepted.withLock({ $0 }) { close(connection) }
    }
}

@Suite("Connections", .serialized, .timeLimit(.minutes(3)))
struct ConnectionTests {
    @Test func silentConnectionsAreClosedAndReceiveOnlyClientsThatPongStay() async throws {
        let server = try await TestServer.start(["chat.ping_interval_seconds=1", "chat.idle_timeout_seconds=2"])
        let alice = try await server.user("alice", devices: ["phone", "laptop"])
        let dead = try await WebSocketClient.connect(host: "127.0.0.1", port: server.node.chatPort!, path: "/v1/ws", headers: [("Authorization", "Bearer \(alice[0].token)")], answerPings: false)
        let listener = try await server.connect(alice[1])
        let inbox = Inbox(listener)
        var closeCode: Int?
        for await event in dead.events {
            if case .closed(let code, _) = event {
                closeCode = code
                break
            }
        }
        #expect(closeCode == 4009, "a client that answers nothing is closed as dead")
        try await Task.sleep(for: .seconds(1))
        #expect(await inbox.others.isEmpty, "the client that answers pings is still connected")
        #expect(try await listener.request("ping")["type"]?.stringValue == "pong")
        await listener.close()
        await server.stop()
    }

    @Test func aClientThatStopsReadingIsClosedAsASlowConsumer() async throws {
        let server = try await TestServer.start(["chat.outbox_frames=20", "chat.rate_limit_per_second=100000"])
        let alice = try await server.user("alice")
        let bob = try await server.user("bob")
        let sender = try await server.connect(alice[0])
        let conversation = try await sender.open(with: "bob")
        let slow = try await WebSocketClient.connect(host: "127.0.0.1", port: server.node.chatPort!, path: "/v1/ws", headers: [("Authorization", "Bearer \(bob[0].token)")])
        try await Task.sleep(for: .milliseconds(200))
        try await slow.setReading(false)
        let body = String(repeating: "z", count: 60_000)
        // Sent without waiting for each ack, so the sends take well under the server's 5 s
        // close grace even on a loaded machine; the last one is awaited, and since a
        // conversation's messages are stored and delivered in order, all were handed out by then.
        for index in 0..<199 {
            let frame = JSONWriter.frame("send", id: "slow-\(index)") { writer in
                writer.field("conversation", conversation)
                writer.field("client_id", "slow-\(index)")
                writer.field("content_type", "text/plain")
                writer.field("body", body)
            }
            try await sender.sendRaw(String(decoding: frame, as: UTF8.self))
        }
        _ = try await sender.send(conversation: conversation, body: body, clientID: "slow-199")
        try await slow.setReading(true)
        var closeCode: Int?
        var received = 0
        for await event in slow.events {
            switch event {
            case .text: received += 1
            case .closed(let code, _): closeCode = code
            }
            if closeCode != nil { break }
        }
        #expect(closeCode == 4008, "closed as a slow consumer after \(received) frames")
        #expect(received < 200, "the server stopped queueing for the slow client")
        #expect(try await sender.request("ping")["type"]?.stringValue == "pong", "the sender is unaffected")
        await sender.close()
        await server.stop()
    }

    @Test func toDeviceMessagesArriveLiveOrWaitUntilFetchedAndAcknowledged() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice")
        let bob = try await server.user("bob", devices: ["phone", "tablet"])
        let aliceSession = try await server.connect(alice[0])
        let bobPhone = try await server.connect(bob[0])
        let phoneInbox = Inbox(bobPhone)
        let reply = try await aliceSession.request("send_to_device") { writer in
            writer.field("to", "bob")
            writer.field("device", bob[0].deviceID)
            writer.field("content_type", "application/x-key-exchange")
            writer.field("body", "prekey bundle")
        }
        #expect(reply["message_id"]?.stringValue?.count == 32)
        guard case .toDevice(let live) = await phoneInbox.waitForOther() else { throw TestFailure("no live to-device message") }
        #expect(live["body"]?.stringValue == "prekey bundle" && live["from_device"]?.stringValue == alice[0].deviceID)

        _ = try await aliceSession.request("send_to_device") { writer in
            writer.field("to", "bob")
            writer.field("device", bob[1].deviceID)
            writer.field("content_type", "application/x-key-exchange")
            writer.field("body", "for the tablet")
        }
        let tablet = try await server.connect(bob[1])
        let pending = try await tablet.request("fetch_to_device")
        let messages = pending["messages"]?.arrayValue ?? []
        #expect(messages.count == 1 && messages[0]["body"]?.stringValue == "for the tablet")
        _ = try await tablet.request("ack_to_device") { writer in
            writer.beginArray("ids")
            for message in messages { writer.element(message["id"]?.stringValue ?? "") }
            writer.endArray()
        }
        #expect(try await tablet.request("fetch_to_device")["messages"]?.arrayValue?.isEmpty == true, "acknowledged messages are gone")
        do {
            _ = try await aliceSession.request("send_to_device") { writer in
                writer.field("to", "bob")
                writer.field("device", "dv_not_his")
                writer.field("content_type", "text/plain")
                writer.field("body", "x")
            }
            Issue.record("a to-device message to an unknown device was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "not_found")
        }
        for session in [aliceSession, bobPhone, tablet] { await session.close() }
        await server.stop()
    }

    @Test func tlsServesHTTPSAndWSS() async throws {
        let folder = scratchFolder()
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let certificate = folder.appendingPathComponent("cert.pem").path, key = folder.appendingPathComponent("key.pem").path
        let made = try runProgram("/usr/bin/env", ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", certificate])
        #expect(made.status == 0, "\(made.output)")
        let server = try await TestServer.start(["tls.certificate=\(certificate)", "tls.key=\(key)"])
        #expect(server.node.chatURL.hasPrefix("wss://"))
        let port = server.node.httpPort!
        let signup = try runProgram("/usr/bin/env", ["curl", "-sS", "--cacert", certificate, "-X", "POST", "https://127.0.0.1:\(port)/v1/signup", "-d", #"{"username":"alice","password":"alice password"}"#])
        #expect(signup.output.contains(#""username":"alice""#), "\(signup.output)")
        let login = try runProgram("/usr/bin/env", ["curl", "-sS", "--cacert", certificate, "-X", "POST", "https://127.0.0.1:\(port)/v1/login", "-d", #"{"username":"alice","password":"alice password"}"#])
        let token = try JSONParser.parse(Array(login.output.utf8))["token"]?.stringValue ?? ""
        let session = try await ChatSession.connect(url: server.node.chatURL, token: token, trustRoots: certificate)
        #expect(try await session.request("ping")["type"]?.stringValue == "pong")
        await session.close()
        let plain = try runProgram("/usr/bin/env", ["curl", "-sS", "http://127.0.0.1:\(port)/health"])
        #expect(!plain.output.contains(#""status":"ok""#), "plain HTTP is not served when TLS is on")
        await server.stop()
    }

    @Test func metricsCountConnectionsMessagesAndPluginActivity() async throws {
        let server = ParleydProcess(dataFolder: scratchFolder())
        try server.start()
        let (_, session, conversation) = try await server.aliceTalkingToBob()
        for index in 0..<5 { _ = try await session.send(conversation: conversation, body: "m\(index)") }
        let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(server.httpPort)/metrics")!)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains("parley_connections 1"), "\(text)")
        #expect(text.contains("parley_acks_total 5"))
        #expect(text.contains("parley_messages_in_total 5"))
        #expect(text.contains("parley_storage_commit_seconds_count 5"))
        #expect(text.contains("parley_plugin_storage_sqlite_writes_total"), "plugin metrics are exported too")
        await session.close()
        server.signal(SIGTERM)
    }

    /// Every node of a process shares the event loops. Jobs a loop queues for two nodes'
    /// plugin workers in one pass, each to be woken after the loop's reads, wake both
    /// nodes' workers: before, only the first node's were woken, and a sign-in on the second
    /// waited for unrelated work to come along (a CI run hung on it).
    @Test func aLoopWakesTheWorkersOfEveryNodeItQueuedJobsFor() async throws {
        let first = try await TestServer.start()
        let second = try await TestServer.start()
        let ran = RanJobs()
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let storages = [first.node.runtime.storage, second.node.runtime.storage]
        try await loop.submit {
            let writer = LoopWriter.of(loop)
            for (index, storage) in storages.enumerated() {
                try storage.onWorker({ ran.mark(index) }, wake: false)
                writer.wakeAfterReads(storage)
            }
        }.get()
        let deadline = ContinuousClock.now + .seconds(5)
        while ran.all.count < 2, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(ran.all == [0, 1], "the jobs of both nodes ran")
        await first.stop()
        await second.stop()
    }

    /// A server that answers the upgrade and then says nothing, and one that does not even
    /// answer the upgrade: connecting ends after the session's timeout with a `timeout` error
    /// instead of waiting forever.
    @Test(arguments: [true, false]) func aServerThatSaysNothingTimesOutTheConnect(answersUpgrade: Bool) async throws {
        let server = try SilentWebSocketServer(answersUpgrade: answersUpgrade)
        let started = ContinuousClock.now
        var outcome: ParleyError?
        do {
            _ = try await ChatSession.connect(url: server.url, token: "pt_0123456789abcdef0123456789abcdef", timeout: .seconds(1))
        } catch let error as ParleyError {
            outcome = error
        }
        let waited = ContinuousClock.now - started
        server.stop()
        #expect(outcome?.code == "timeout", "\(String(describing: outcome))")
        #expect(waited >= .seconds(1) && waited < .seconds(10))
    }
}
