// Every kind of bad input gets a clear error with a stable code, changes nothing,
// and leaves the connection and the server working.
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import ParleyClient
import ParleyJSON
import ParleyServer
import Testing

@Suite("Bad input", .serialized, .timeLimit(.minutes(3)))
struct BadInputTests {
    /// Sends raw text and returns the error frame that comes back (as a ChatEvent).
    private func errorFor(_ raw: String, on session: ChatSession, _ inbox: Inbox) async throws -> ParleyError? {
        try await session.sendRaw(raw)
        guard case .error(let error) = await inbox.waitForOther() else { return nil }
        return error
    }

    private func expectAlive(_ session: ChatSession) async throws {
        let pong = try await session.request("ping")
        #expect(pong["type"]?.stringValue == "pong", "the connection still answers")
    }

    @Test func malformedAndInvalidFramesGetErrorsAndTheConnectionSurvives() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice")
        _ = try await server.user("bob")
        let session = try await server.connect(alice[0])
        let inbox = Inbox(session)
        let conversation = try await session.open(with: "bob")

        #expect(try await errorFor("{not json", on: session, inbox)?.code == "malformed_json")
        #expect(try await errorFor("[1,2]", on: session, inbox)?.code == "invalid_request")
        #expect(try await errorFor(#"{"id":"x"}"#, on: session, inbox)?.code == "invalid_request")
        #expect(try await errorFor(#"{"type":"teleport","id":"x"}"#, on: session, inbox)?.code == "unknown_type")
        try await session.sendRawBytes([0x00, 0x01], binary: true)
        guard case .error(let binary) = await inbox.waitForOther() else { throw TestFailure("no reply to a binary frame") }
        #expect(binary.code == "unsupported_frame")
        try await expectAlive(session)

        await #expect(throws: ParleyError.self) { try await session.request("send") { $0.field("conversation", conversation) } }
        do {
            _ = try await session.request("send") { writer in
                writer.field("conversation", conversation)
                writer.field("client_id", 42)
                writer.field("content_type", "text/plain")
                writer.field("body", "x")
            }
            Issue.record("a numeric client_id was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "invalid_request" && error.message.contains("client_id"))
        }
        do {
            _ = try await session.send(conversation: conversation, body: String(repeating: "x", count: 70_000))
            Issue.record("an oversize body was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "too_large")
        }
        do {
            _ = try await session.send(conversation: conversation, body: #"{"event":"members_added"}"#, contentType: "application/vnd.parley.event+json")
            Issue.record("a client forged a membership event")
        } catch let error as ParleyError {
            #expect(error.code == "invalid_request", "the event content type is reserved for the server")
        }
        do {
            _ = try await session.send(conversation: "d:u_nobody:u_zzzz", body: "hi")
            Issue.record("a send to someone else's conversation was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "forbidden", "sending into a conversation of other users")
        }
        do {
            _ = try await session.send(conversation: "group:whatever", body: "hi")
            Issue.record("a malformed conversation id was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "not_found")
        }
        do {
            _ = try await session.send(conversation: "d:\(alice[0].userID):u_zzzzzzzz", body: "hi")
            Issue.record("a conversation with a user that does not exist was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "not_found")
        }
        do {
            _ = try await session.open(with: "nobody-here")
            Issue.record("opening a conversation with an unknown user worked")
        } catch let error as ParleyError {
            #expect(error.code == "not_found")
        }
        try await expectAlive(session)
        #expect(try await session.sync(cursors: [:]).isEmpty, "nothing was stored by any refused request")
        await session.close()
        await server.stop()
    }

    @Test func oversizeFrameClosesWith1009() async throws {
        let server = try await TestServer.start(["chat.max_frame_bytes=4096"])
        let alice = try await server.user("alice")
        let session = try await server.connect(alice[0])
        let inbox = Inbox(session)
        try await session.sendRaw(#"{"type":"ping","pad":""# + String(repeating: "x", count: 10_000) + #""}"#)
        guard case .closed(let code, _) = await inbox.waitForOther() else { throw TestFailure("the connection did not close") }
        #expect(code == 1009)
        await server.stop()
    }

    @Test func invalidAndRevokedTokensAreRefused() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice", devices: ["phone", "laptop"])
        do {
            _ = try await ChatSession.connect(url: server.node.chatURL, token: String(repeating: "A", count: 43))
            Issue.record("an invalid token was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "unauthorized")
        }
        let laptop = try await server.connect(alice[1])
        let inbox = Inbox(laptop)
        _ = try await server.api.call("DELETE", "/v1/devices/\(alice[1].deviceID)", token: alice[0].token)
        guard case .closed(let code, _) = await inbox.waitForOther() else { throw TestFailure("the revoked device stayed connected") }
        #expect(code == 4001, "a revoked device is closed at once with 4001")
        do {
            _ = try await server.connect(alice[1])
            Issue.record("a revoked token connected")
        } catch let error as ParleyError {
            #expect(error.code == "unauthorized")
        }
        do {
            _ = try await server.api.call("GET", "/v1/me", token: alice[1].token)
            Issue.record("a revoked token worked over HTTP")
        } catch let error as ParleyError {
            #expect(error.status == 401 && error.code == "unauthorized")
        }
        #expect(try await server.api.call("GET", "/v1/me", token: alice[0].token)["user"]?["username"]?.stringValue == "alice")
        await server.stop()
    }

    @Test func framesBeforeHelloAreRefused() async throws {
        let server = try await TestServer.start()
        let socket = try await WebSocketClient.connect(host: "127.0.0.1", port: server.node.chatPort!, path: "/v1/ws")
        try await socket.send(#"{"type":"sync","id":"1"}"#)
        var iterator = socket.events.makeAsyncIterator()
        guard case .text(let text) = await iterator.next(), let reply = try? JSONParser.parse(Array(text.utf8)) else { throw TestFailure("no reply") }
        #expect(reply["code"]?.stringValue == "unauthorized" && reply["id"]?.stringValue == "1")
        await socket.close()
        await server.stop()
    }

    @Test func rateLimitDropsFramesWithAnErrorAndKeepsTheConnection() async throws {
        let server = try await TestServer.start(["chat.rate_limit_per_second=5"])
        let alice = try await server.user("alice")
        let session = try await server.connect(alice[0])
        let results = await withTaskGroup(of: String.self) { group in
            for _ in 0..<40 {
                group.addTask {
                    do {
                        _ = try await session.request("ping")
                        return "ok"
                    } catch let error as ParleyError {
                        return error.code
                    } catch {
                        return "other"
                    }
                }
            }
            var codes: [String] = []
            for await code in group { codes.append(code) }
            return codes
        }
        #expect(results.contains("rate_limited"), "some frames were refused")
        #expect(results.contains("ok"), "and some were answered")
        #expect(Set(results).isSubset(of: ["ok", "rate_limited"]), "every request got exactly one reply")
        try await Task.sleep(for: .seconds(1))
        try await expectAlive(session)
        await session.close()
        await server.stop()
    }

    @Test func storageFailureMeansNoAckAndNothingHalfWritten() async throws {
        // LMDB with a 1 MiB map fills up after a few large messages.
        let server = try await TestServer.start(["storage.plugin=storage-lmdb", "plugin.storage-lmdb.map_size_mb=1"])
        let alice = try await server.user("alice")
        _ = try await server.user("bob")
        let session = try await server.connect(alice[0])
        let conversation = try await session.open(with: "bob")
        var acked: [Int64] = []
        var failure: ParleyError?
        for index in 0..<60 {
            do {
                let ack = try await session.send(conversation: conversation, body: String(repeating: "\(index % 10)", count: 60_000))
                acked.append(ack["seq"]!.int64Value!)
            } catch let error as ParleyError {
                failure = error
                break
            }
        }
        #expect(failure?.code == "storage_failed", "a full store is reported as a storage failure")
        #expect(!acked.isEmpty)
        let page = try await session.fetch(conversation: conversation, after: 0, limit: 1000)
        #expect(page.messages.compactMap { $0["seq"]?.int64Value } == acked, "exactly the acknowledged messages are stored, gapless")
        try await expectAlive(session)
        await session.close()
        await server.stop()
    }

    @Test func httpErrorsCarryStableCodes() async throws {
        let server = try await TestServer.start()
        let api = server.api
        func code(_ method: String, _ path: String, token: String? = nil, body: [String: String]? = nil) async -> (Int, String) {
            do {
                _ = try await api.call(method, path, token: token, body: body)
                return (200, "ok")
            } catch let error as ParleyError {
                return (error.status, error.code)
            } catch {
                return (0, "\(error)")
            }
        }
        #expect(await code("POST", "/v1/signup", body: ["username": "a", "password": "long enough"]) == (400, "invalid_username"))
        #expect(await code("POST", "/v1/signup", body: ["username": "-alice", "password": "long enough"]) == (400, "invalid_username"))
        #expect(await code("POST", "/v1/signup", body: ["username": "alice", "password": "short"]) == (400, "weak_password"))
        #expect(await code("POST", "/v1/signup", body: ["username": "alice"]) == (400, "invalid_request"))
        #expect(await code("POST", "/v1/signup", body: ["username": "Alice", "password": "long enough"]) == (200, "ok"))
        #expect(await code("POST", "/v1/signup", body: ["username": "alice", "password": "long enough"]) == (409, "username_taken"), "usernames are unique regardless of case")
        #expect(await code("POST", "/v1/login", body: ["username": "alice", "password": "wrong password"]) == (401, "invalid_credentials"))
        #expect(await code("POST", "/v1/login", body: ["username": "nobody", "password": "wrong password"]) == (401, "invalid_credentials"), "unknown users look like wrong passwords")
        #expect(await code("GET", "/v1/me") == (401, "unauthorized"))
        #expect(await code("GET", "/v1/me", token: "not a token") == (401, "unauthorized"))
        let login = try await api.logIn(username: "ALICE", password: "long enough", deviceName: "phone")
        #expect(await code("GET", "/v1/users/nobody", token: login.token) == (404, "not_found"))
        #expect(await code("DELETE", "/v1/devices/dv_unknown", token: login.token) == (404, "not_found"))

        var request = URLRequest(url: URL(string: "\(api.baseURL)/v1/signup")!)
        request.httpMethod = "POST"
        request.httpBody = Data("{\"username\":".utf8)
        let (data, response) = try await URLSession.shared.data(for: request)
        #expect((response as? HTTPURLResponse)?.statusCode == 400)
        #expect((try? JSONParser.parse(Array(data)))?["code"]?.stringValue == "malformed_json")
        await server.stop()
    }
}
