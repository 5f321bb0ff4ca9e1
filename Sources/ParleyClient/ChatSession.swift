// One device's chat connection: authenticates, correlates each request with its one
// reply by id, and streams events (messages, to-device messages, close).
import Foundation
public import ParleyJSON
import Synchronization

/// An event the server sent without being asked.
public enum ChatEvent: Sendable, Equatable {
    /// A stored message of a conversation (`{"conversation","seq","ts","from",...}`).
    case message(JSONValue)
    case toDevice(JSONValue)
    /// Any other event frame, whole: `presence`, `typing`, `receipt`.
    case other(JSONValue)
    /// An error frame that answers no request of ours (a dropped frame, for example).
    case error(ParleyError)
    case closed(code: Int?, reason: String)
}

public final class ChatSession: Sendable {
    public let events: AsyncStream<ChatEvent>
    /// The welcome frame's user and device.
    public let userID: String
    public let deviceID: String
    /// How long the welcome and each request's reply may take. After it, the wait ends with
    /// a `timeout` error and the outcome is unknown (a `send` may still have been stored:
    /// resend it with the same `client_id`). A reply that comes later arrives as an event.
    public let timeout: Duration
    private let socket: WebSocketClient
    private let pending = PendingReplies()
    private let nextID = Atomic<Int>(1)

    /// Connects to a ws:// or wss:// URL and authenticates with the token, by header
    /// (`headerAuth`) or with a hello frame, waiting at most `timeout` for the answer to the
    /// upgrade and again for the welcome.
    public static func connect(url: String, token: String, headerAuth: Bool = false, trustRoots: String? = nil, timeout: Duration = .seconds(30)) async throws -> ChatSession {
        guard let parsed = URLComponents(string: url), let host = parsed.host, let scheme = parsed.scheme, scheme == "ws" || scheme == "wss" else {
            throw ParleyError(code: "bad_url", message: "\(url) is not a ws:// or wss:// URL")
        }
        let socket = try await WebSocketClient.connect(
            host: host, port: parsed.port ?? (scheme == "wss" ? 443 : 80), path: parsed.path.isEmpty ? "/" : parsed.path, tls: scheme == "wss", trustRoots: trustRoots,
            headers: headerAuth ? [("Authorization", "Bearer \(token)")] : [],
            upgradeTimeout: timeout)
        return try await ChatSession(socket: socket, token: headerAuth ? nil : token, timeout: timeout)
    }

    private init(socket: WebSocketClient, token: String?, timeout: Duration) async throws {
        self.socket = socket
        self.timeout = timeout
        let pending = self.pending
        let (events, continuation) = AsyncStream<ChatEvent>.makeStream()
        self.events = events
        let (welcomes, welcomeContinuation) = AsyncStream<Result<JSONValue, ParleyError>>.makeStream()
        Task {
            for await event in socket.events {
                switch event {
                case .text(let text):
                    guard let frame = try? JSONParser.parse(Array(text.utf8)) else { continue }
                    let type = frame["type"]?.stringValue ?? ""
                    if type == "welcome" {
                        welcomeContinuation.yield(.success(frame))
                        continue
                    }
                    if let id = frame["id"]?.stringValue, let waiter = pending.take(id) {
                        waiter.resume(returning: type == "error" ? .failure(Self.error(frame)) : .success(frame))
                        continue
                    }
                    switch type {
                    case "message": continuation.yield(.message(frame["message"] ?? .null))
                    case "to_device": continuation.yield(.toDevice(frame["message"] ?? .null))
                    case "error":
                        let error = Self.error(frame)
                        welcomeContinuation.yield(.failure(error))
                        continuation.yield(.error(error))
                    default: continuation.yield(.other(frame))
                    }
                case .closed(let code, let reason):
                    let error = ParleyError(code: "closed", message: "connection closed (\(code.map(String.init) ?? "no code")): \(reason)")
                    welcomeContinuation.yield(.failure(error))
                    for waiter in pending.takeAll() {
                        waiter.resume(returning: .failure(error))
                    }
                    continuation.yield(.closed(code: code, reason: reason))
                    continuation.finish()
                }
            }
            welcomeContinuation.finish()
        }
        let timer = Task {
            try await Task.sleep(for: timeout)
            welcomeContinuation.yield(.failure(Self.timedOut("the welcome", after: timeout)))
        }
        defer { timer.cancel() }
        if let token {
            try await socket.send(String(decoding: JSONWriter.frame("hello", id: "hello") { $0.field("token", token) }, as: UTF8.self))
        }
        var iterator = welcomes.makeAsyncIterator()
        guard let welcome = await iterator.next() else { throw ParleyError(code: "closed", message: "connection closed before welcome") }
        let frame: JSONValue
        do {
            frame = try welcome.get()
        } catch {
            await socket.close()
            throw error
        }
        userID = frame["user"]?["id"]?.stringValue ?? ""
        deviceID = frame["device"]?.stringValue ?? ""
    }

    private static func timedOut(_ what: String, after timeout: Duration) -> ParleyError {
        ParleyError(code: "timeout", message: "no \(what) within \(timeout); the outcome is unknown")
    }

    private static func error(_ frame: JSONValue) -> ParleyError {
        ParleyError(code: frame["code"]?.stringValue ?? "error", message: frame["message"]?.stringValue ?? "")
    }

    /// Sends a request frame of `type` with the fields written by `fields`, and waits at most
    /// `timeout` for its reply; an error reply, or none in time (`timeout`), throws `ParleyError`.
    public func request(_ type: String, _ fields: (inout JSONWriter) -> Void = { _ in }) async throws -> JSONValue {
        let id = "r\(nextID.wrappingAdd(1, ordering: .relaxed).oldValue)"
        let text = String(decoding: JSONWriter.frame(type, id: id, fields), as: UTF8.self)
        let (pending, timeout) = (pending, timeout)
        var timer: Task<Void, any Error>?
        defer { timer?.cancel() }
        let result: Result<JSONValue, ParleyError> = await withCheckedContinuation { continuation in
            pending.add(id, continuation)
            timer = Task {
                try await Task.sleep(for: timeout)
                pending.take(id)?.resume(returning: .failure(Self.timedOut("reply to \(type)", after: timeout)))
            }
            Task {
                do {
                    try await socket.send(text)
                } catch {
                    if let waiter = pending.take(id) {
                        waiter.resume(returning: .failure(ParleyError(code: "closed", message: "cannot send: \(error)")))
                    }
                }
            }
        }
        return try result.get()
    }

    /// Opens (or finds) the direct conversation with a user; returns its id.
    public func open(with username: String) async throws -> String {
        let reply = try await request("open") { $0.field("with", username) }
        guard let conversation = reply["conversation"]?.stringValue else { throw ParleyError(code: "bad_reply", message: "no conversation in reply") }
        return conversation
    }

    /// Sends a message and returns the ack (`conversation`, `seq`, `ts`, `client_id`, `duplicate`).
    public func send(conversation: String, body: String, contentType: String = "text/plain", clientID: String? = nil) async throws -> JSONValue {
        let clientID = clientID ?? UUID().uuidString
        return try await request("send") { writer in
            writer.field("conversation", conversation)
            writer.field("client_id", clientID)
            writer.field("content_type", contentType)
            writer.field("body", body)
        }
    }

    /// Conversations with messages past the given cursors.
    public func sync(cursors: [String: Int64]) async throws -> [(conversation: String, lastSequence: Int64)] {
        let reply = try await request("sync") { writer in
            writer.beginObject("cursors")
            for (conversation, cursor) in cursors.sorted(by: { $0.key < $1.key }) { writer.field(conversation, cursor) }
            writer.endObject()
        }
        return (reply["conversations"]?.arrayValue ?? []).compactMap { item in
            guard let conversation = item["conversation"]?.stringValue, let last = item["last_seq"]?.int64Value else { return nil }
            return (conversation, last)
        }
    }

    /// One page of messages after a sequence, oldest first, and whether more follow.
    public func fetch(conversation: String, after: Int64, limit: Int = 500) async throws -> (messages: [JSONValue], more: Bool) {
        let reply = try await request("fetch") { writer in
            writer.field("conversation", conversation)
            writer.field("after", after)
            writer.field("limit", limit)
        }
        return (reply["messages"]?.arrayValue ?? [], reply["more"]?.boolValue ?? false)
    }

    /// Sends raw text (tests use it for malformed frames).
    public func sendRaw(_ text: String) async throws {
        try await socket.send(text)
    }

    public func sendRawBytes(_ bytes: [UInt8], binary: Bool) async throws {
        try await socket.sendRaw(bytes, binary: binary)
    }

    public func close() async {
        await socket.close()
    }
}

/// Requests waiting for their reply, by id.
private final class PendingReplies: Sendable {
    typealias Waiter = CheckedContinuation<Result<JSONValue, ParleyError>, Never>
    private let waiters = Mutex<[String: Waiter]>([:])

    func add(_ id: String, _ waiter: Waiter) { waiters.withLock { $0[id] = waiter } }
    func take(_ id: String) -> Waiter? { waiters.withLock { $0.removeValue(forKey: id) } }
    func takeAll() -> [Waiter] { waiters.withLock { state in defer { state.removeAll() }; return Array(state.values) } }
}
