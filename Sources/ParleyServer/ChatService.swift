// What the chat listener does with each request frame, independent of the socket
// code: authentication, sends with ack-after-durable and fan-out, sync and history,
// to-device messages.
public import Logging
import NIOCore
import NIOWebSocket
public import ParleyCore
import ParleyJSON
public import PluginHost
import Prometheus
import Synchronization

public final class ChatService: Sendable {
    let accounts: AccountService
    let messages: MessageLog
    let toDevice: ToDeviceQueue
    let groups: GroupService
    let receipts: ReceiptStore
    package let presence: PresenceTracker
    let storage: StorageBackend
    let registry: ConnectionRegistry
    let metrics: ServerMetrics
    let logger: Logger
    /// How long a typing indicator lasts unless renewed or stopped.
    static let typingExpiry = 8_000

    public init(accounts: AccountService, messages: MessageLog, toDevice: ToDeviceQueue, groups: GroupService, receipts: ReceiptStore, storage: StorageBackend, presenceGrace: Duration, metrics: ServerMetrics, logger: Logger) {
        self.accounts = accounts
        self.messages = messages
        self.groups = groups
        self.receipts = receipts
        self.storage = storage
        messages.loadMembers { [groups] conversation in try await groups.loadMembers(conversation) }
        let registry = ConnectionRegistry()
        self.registry = registry
        presence = PresenceTracker(storage: storage, grace: presenceGrace, logger: logger) { userID, frame in
            for connection in registry.connections(of: userID) { connection.send(frame) }
        }
        self.toDevice = toDevice
        self.metrics = metrics
        self.logger = logger
        accounts.onDeviceRevoked { [toDevice, logger] _, deviceID in
            // Messages waiting for a revoked device can never be fetched.
            Task {
                do {
                    try await toDevice.purge(deviceID: deviceID)
                } catch {
                    logger.warning("cannot delete the to-device messages of revoked device \(deviceID): \(error)")
                }
            }
        }
        accounts.onDeviceRevoked { [registry] userID, deviceID in
            for connection in registry.connections(of: userID) where connection.session.withLock({ $0?.deviceID }) == deviceID {
                connection.close(code: .init(codeNumber: ChatCloseCode.unauthorized), reason: "device revoked")
            }
        }
    }

    /// Online connections, for the metrics and for shutdown.
    public var onlineConnections: Int { registry.count }

    /// Records everyone online as last seen now (before storage closes at shutdown).
    public func recordPresenceAtShutdown() async {
        await presence.recordEveryoneOffline()
    }

    /// Closes every connection with "going away" (1001).
    public func closeAll() {
        for connection in registry.all() { connection.close(code: .goingAway, reason: "server shutting down") }
    }

    // MARK: Frames

    /// Handles one text frame from a connection. Runs on the connection's event loop.
    func handle(_ bytes: ByteBufferView, from connection: ChatConnection) {
        // Most frames are sends, flat objects of strings: read without a dictionary of values.
        if let pairs = JSONParser.flatStringObject(bytes), pairs["type"] == "send" {
            let id = pairs["id"]
            guard id.map({ $0.utf8.count <= 64 }) ?? true else {
                fail(connection, id: nil, ChatError.invalid("'id' must be a string of at most 64 bytes"))
                return
            }
            do throws(ChatError) {
                guard let session = connection.session.withLock({ $0 }) else { throw Self.notAuthenticated }
                try send(id: id, session: session, connection) { key throws(ChatError) in
                    guard let value = pairs[key] else { throw .invalid("missing '\(key)'") }
                    return value
                }
            } catch {
                fail(connection, id: id, error)
            }
            return
        }
        let value: JSONValue
        do {
            value = try JSONParser.parse(bytes)
        } catch {
            fail(connection, id: nil, ChatError("malformed_json", "the frame is not valid JSON: \(error)"))
            return
        }
        guard case .object(let fields) = value else {
            fail(connection, id: nil, ChatError.invalid("a frame is a JSON object"))
            return
        }
        let id: String?
        switch fields["id"] {
        case .none, .some(.null): id = nil
        case .some(.string(let text)) where text.utf8.count <= 64: id = text
        default:
            fail(connection, id: nil, ChatError.invalid("'id' must be a string of at most 64 bytes"))
            return
        }
        guard let type = fields["type"]?.stringValue else {
            fail(connection, id: id, ChatError.invalid("missing 'type'"))
            return
        }
        do {
            try dispatch(type, fields, id: id, connection)
        } catch {
            fail(connection, id: id, error)
        }
    }

    func fail(_ connection: ChatConnection, id: String?, _ error: ChatError) {
        metrics.errors.increment()
        connection.send(ChatFrames.error(id: id, error))
    }

    private func dispatch(_ type: String, _ fields: [String: JSONValue], id: String?, _ connection: ChatConnection) throws(ChatError) {
        if type == "hello" {
            guard let token = fields["token"]?.stringValue else { throw .invalid("hello needs 'token'") }
            authenticate(connection, token: token, id: id)
            return
        }
        if type == "ping" {
            connection.send(JSONWriter.frame("pong", id: id) { $0.field("server_time", currentTimeMillis()) })
            return
        }
        guard let session = connection.session.withLock({ $0 }) else { throw Self.notAuthenticated }
        switch type {
        case "send":
            try send(id: id, session: session, connection) { key throws(ChatError) in try Self.string(fields, key) }
        case "open":
            let username = try Self.string(fields, "with")
            run(connection, id: id) { () throws(ChatError) in
                guard let peer = try await self.accounts.lookUp(username: username) else { throw .notFound("user \(username)") }
                let conversation = ConversationID.direct(session.userID, peer.id)
                return JSONWriter.frame("conversation", id: id) { writer in
                    writer.field("conversation", conversation.rawValue)
                    ChatFrames.user(&writer, "peer", peer)
                }
            }
        case "sync":
            var cursors: [String: Int64] = [:]
            if let given = fields["cursors"], given != .null {
                guard let object = given.objectValue, object.count <= 100_000 else { throw .invalid("'cursors' must be an object of conversation: sequence") }
                for (conversation, value) in object {
                    guard let sequence = value.int64Value, sequence >= 0 else { throw .invalid("cursor of \(conversation) must be a whole number >= 0") }
                    cursors[conversation] = sequence
                }
            }
            answer(connection, id: id) { [cursors] () throws(ChatError) in
                let changed = try self.messages.changesHere(session, cursors: cursors)
                var read: [String: Int64] = [:]
                for summary in changed {
                    if let conversation = ConversationID(summary.conversation) {
                        read[summary.conversation] = try self.receipts.cursorHere(conversation, userID: session.userID, kind: .read)
                    }
                }
                return JSONWriter.frame("sync_result", id: id) { writer in
                    writer.beginArray("conversations")
                    for summary in changed {
                        let readSequence = read[summary.conversation] ?? 0
                        writer.beginObject()
                        writer.field("conversation", summary.conversation)
                        writer.field("last_seq", summary.lastSequence)
                        writer.field("last_ts", summary.lastTimestamp)
                        writer.field("read_seq", readSequence)
                        writer.field("unread", max(0, summary.lastSequence - readSequence))
                        writer.endObject()
                    }
                    writer.endArray()
                }
            }
        case "fetch":
            let conversation = try Self.conversation(fields)
            let after = try Self.optionalInteger(fields, "after")
            let before = try Self.optionalInteger(fields, "before")
            let limit = Int(try Self.optionalInteger(fields, "limit") ?? 100)
            run(connection, id: id) { () throws(ChatError) in
                let page = try await self.messages.history(session, conversation: conversation, after: after, before: before, limit: limit)
                return JSONWriter.frame("messages", id: id) { writer in
                    writer.field("conversation", conversation.rawValue)
                    writer.beginArray("messages")
                    for message in page { writer.rawElement(message.record) }
                    writer.endArray()
                    writer.field("more", page.count == limit)
                }
            }
        case "send_to_device":
            let username = try Self.string(fields, "to")
            let device = try Self.string(fields, "device")
            let contentType = try Self.string(fields, "content_type")
            let body = try Self.string(fields, "body")
            run(connection, id: id) { () throws(ChatError) in
                guard let target = try await self.accounts.lookUp(username: username),
                    try await self.accounts.deviceExists(userID: target.id, deviceID: device)
                else { throw .notFound("device \(device) of user \(username)") }
                let message = try await self.toDevice.send(from: session, targetUser: target.id, targetDevice: device, contentType: contentType, body: body)
                let event = ChatFrames.toDeviceEvent(message.record)
                for peer in self.registry.connections(of: target.id) where peer.session.withLock({ $0?.deviceID }) == device {
                    peer.send(event)
                }
                return JSONWriter.frame("to_device_ack", id: id) { $0.field("message_id", message.id) }
            }
        case "fetch_to_device":
            let limit = Int(try Self.optionalInteger(fields, "limit") ?? 100)
            guard (1...ToDeviceQueue.maxPending).contains(limit) else { throw .invalid("limit must be 1 to \(ToDeviceQueue.maxPending)") }
            run(connection, id: id) { () throws(ChatError) in
                let pending = try await self.toDevice.pending(for: session, limit: limit)
                return JSONWriter.frame("to_device_messages", id: id) { writer in
                    writer.beginArray("messages")
                    for message in pending { writer.rawElement(message.record) }
                    writer.endArray()
                }
            }
        case "ack_to_device":
            guard let ids = fields["ids"]?.arrayValue?.compactMap(\.stringValue), ids.count == fields["ids"]?.arrayValue?.count else {
                throw .invalid("'ids' must be an array of message ids")
            }
            run(connection, id: id) { () throws(ChatError) in
                try await self.toDevice.acknowledge(session, ids: ids)
                return JSONWriter.frame("ok", id: id)
            }
        default:
            guard try dispatchGroupsAndPresence(type, fields, id: id, session: session, connection) else {
                throw ChatError("unknown_type", "unknown frame type '\(type)'")
            }
        }
    }

    static let notAuthenticated = ChatError("unauthorized", "send 'hello' with your token first", httpStatus: 401)

    /// Submits a `send`; `field` gives a string field of the frame or throws the error for it.
    private func send(id: String?, session: Session, _ connection: ChatConnection, _ field: (String) throws(ChatError) -> String) throws(ChatError) {
        let request = SendRequest(
            sender: session, conversation: try Self.conversation(field("conversation")), clientID: try field("client_id"),
            contentType: try field("content_type"), body: try field("body"))
        guard request.contentType != GroupService.eventContentType else {
            throw .invalid("content type \(GroupService.eventContentType) is reserved for the server's membership events")
        }
        metrics.messagesIn.increment()
        let started = ContinuousClock.now
        messages.submit(request) { [self] result in
            switch result {
            case .success((let ack, let stored)):
                metrics.storageLatency.record(ContinuousClock.now - started)
                metrics.acks.increment()
                connection.send(ChatFrames.ack(id: id, ack))
                if let stored { deliver(stored, except: connection) }
            case .failure(let error):
                fail(connection, id: id, error)
            }
        }
    }

    /// Sends a stored message to every online device of every participant but the
    /// sending connection. The frame is serialized once and its bytes shared.
    func deliver(_ message: StoredMessage, except sender: ChatConnection) {
        let delivered = fanOut(ChatFrames.messageEvent(message.record), to: message.recipients, except: sender)
        metrics.messagesOut.increment(by: Int64(delivered))
        // The first message of a direct conversation makes its users each other's contacts.
        if message.sequence == 1, message.conversation.kind == .direct, message.conversation.participants.count == 2 {
            presence.contactsMet(message.conversation.participants[0], message.conversation.participants[1])
        }
    }

    /// Sends one frame to every open connection of these users but `except`, with one
    /// hand-over per event loop; returns how many connections it went to.
    @discardableResult
    func fanOut(_ frame: FramePayload, to users: [String], except: ChatConnection?) -> Int {
        LoopWriter.send(frame, to: registry.connections(of: users), except: except)
    }

    /// Checks a token and makes the connection its device's (the `hello` frame, or the
    /// `Authorization` header of the upgrade, with `id` nil).
    func authenticate(_ connection: ChatConnection, token: String, id: String?) {
        if connection.session.withLock({ $0 }) != nil {
            fail(connection, id: id, .invalid("this connection is already authenticated"))
            return
        }
        // Refused before any storage work, so a full worker queue cannot turn it into `busy`.
        guard AccountService.isPlausibleToken(token) else {
            refuseToken(connection, id: id)
            return
        }
        // One job on a plugin worker reads the token and the user, registers the connection and
        // queues the welcome: no task, one hand-over there and one back to the event loop.
        onWorker(connection, id: id) { () throws(ChatError) in
            do throws(ChatError) {
                let (session, profile) = try self.accounts.authenticateHere(token: token)
                var signIn = self.presence.beginSignInHere(session.userID)
                let welcome = JSONWriter.frame("welcome", id: id) { writer in
                    ChatFrames.user(&writer, "user", profile)
                    writer.field("device", session.deviceID)
                    writer.field("server_time", currentTimeMillis())
                }
                // Registered under the session lock, and only while the connection is open:
                // `disconnected` marks it closed before it takes the lock, so a connection that
                // closes while its token is checked is never left in the registry. Counted as
                // online under the same lock, so a close that comes meanwhile is always counted
                // after it, and before the welcome is queued (see `PresenceTracker.connected`).
                // The welcome is queued while the registry's lock is held, so no fan-out that finds
                // the connection there can queue a message ahead of it.
                enum Registration { case added(PresenceTracker.Arrival), needsContacts, closed, alreadyAuthenticated }
                func register() -> Registration {
                    connection.session.withLock { current -> Registration in
                        if current != nil { return .alreadyAuthenticated }
                        if connection.closed.load(ordering: .acquiring) { return .closed }
                        let arrival = self.presence.connected(signIn)
                        if arrival == .needsContacts { return .needsContacts }
                        current = session
                        self.registry.add(connection, userID: session.userID) { connection.send(welcome) }
                        self.metrics.connections.increment()
                        return .added(arrival)
                    }
                }
                while true {
                    switch register() {
                    case .added(let arrival):
                        if arrival == .cameOnline { self.presence.cameOnline(session.userID, username: session.username) }
                        return
                    case .needsContacts:
                        // The user went offline after the sign-in began, before their contacts were read.
                        self.presence.readContactsHere(&signIn)
                    case .closed:
                        self.presence.abandon(signIn)
                        return
                    case .alreadyAuthenticated:
                        self.presence.abandon(signIn)
                        throw ChatError.invalid("this connection is already authenticated")
                    }
                }
            } catch {
                if error.code == ChatError.unauthorized.code {
                    self.refuseToken(connection, id: id)
                    return
                }
                throw error
            }
        }
    }

    /// An unknown, revoked or malformed token: the error, then the connection is closed.
    private func refuseToken(_ connection: ChatConnection, id: String?) {
        fail(connection, id: id, .unauthorized)
        connection.close(code: .init(codeNumber: ChatCloseCode.unauthorized), reason: "invalid or revoked token")
    }

    /// Called when a connection closes.
    func disconnected(_ connection: ChatConnection) {
        connection.closed.store(true, ordering: .releasing)
        let session = connection.session.withLock { current in
            if let current { registry.remove(connection, userID: current.userID) }
            return current
        }
        guard let session else { return }
        metrics.connections.decrement()
        presence.disconnected(session.userID, username: session.username)
    }

    /// Runs an asynchronous request and sends its one reply (or error).
    func run(_ connection: ChatConnection, id: String?, _ body: @escaping @Sendable () async throws(ChatError) -> [UInt8]) {
        Task {
            do throws(ChatError) {
                connection.send(try await body())
            } catch {
                fail(connection, id: id, error)
            }
        }
    }

    /// Runs `body` on a plugin worker, where it may read with the storage's `…Here` calls,
    /// and sends the error it throws, if any: no task, and no hand-over between its reads.
    func onWorker(_ connection: ChatConnection, id: String?, _ body: @escaping @Sendable () throws(ChatError) -> Void) {
        let onLoop = connection.writer.eventLoop.inEventLoop
        do {
            try storage.onWorker({
                do throws(ChatError) {
                    try body()
                } catch {
                    self.fail(connection, id: id, error)
                }
            }, wake: !onLoop)
            if onLoop { connection.writer.wakeAfterReads(storage) }
        } catch {
            fail(connection, id: id, AccountService.storageError(error))
        }
    }

    /// `run` for a request whose reply needs only reads: on a plugin worker, without a task.
    func answer(_ connection: ChatConnection, id: String?, _ body: @escaping @Sendable () throws(ChatError) -> [UInt8]) {
        onWorker(connection, id: id) { () throws(ChatError) in connection.send(try body()) }
    }

    // MARK: Field parsing

    static func string(_ fields: [String: JSONValue], _ key: String) throws(ChatError) -> String {
        guard let value = fields[key] else { throw .invalid("missing '\(key)'") }
        guard let text = value.stringValue else { throw .invalid("'\(key)' must be a string") }
        return text
    }

    static func optionalString(_ fields: [String: JSONValue], _ key: String) throws(ChatError) -> String? {
        guard let value = fields[key], value != .null else { return nil }
        guard let text = value.stringValue else { throw .invalid("'\(key)' must be a string") }
        return text
    }

    static func optionalInteger(_ fields: [String: JSONValue], _ key: String) throws(ChatError) -> Int64? {
        guard let value = fields[key], value != .null else { return nil }
        guard let number = value.int64Value, number >= 0 else { throw .invalid("'\(key)' must be a whole number >= 0") }
        return number
    }

    static func conversation(_ fields: [String: JSONValue]) throws(ChatError) -> ConversationID {
        try conversation(string(fields, "conversation"))
    }

    static func conversation(_ text: String) throws(ChatError) -> ConversationID {
        guard let conversation = ConversationID(text) else { throw .notFound("conversation \(text)") }
        return conversation
    }
}

