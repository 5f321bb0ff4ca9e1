// Sequencing, durable storage, idempotent resends, history and sync of conversation messages.
import ParleyJSON
public import PluginHost
import Synchronization

/// A message a device asks to send.
public struct SendRequest: Sendable {
    public var sender: Session
    public var conversation: ConversationID
    public var clientID: String
    public var contentType: String
    public var body: String

    public init(sender: Session, conversation: ConversationID, clientID: String, contentType: String, body: String) {
        self.sender = sender
        self.conversation = conversation
        self.clientID = clientID
        self.contentType = contentType
        self.body = body
    }
}

/// What the sender learns once its message is durable.
public struct SendAck: Sendable, Equatable {
    public var conversation: String
    public var sequence: Int64
    public var timestamp: Int64
    public var clientID: String
    /// True when this was a resend of a message already stored: nothing new was stored.
    public var duplicate: Bool
}

/// A stored message: its JSON record, shared as is by every delivery and history page.
public struct StoredMessage: Sendable {
    public var conversation: ConversationID
    public var sequence: Int64
    public var record: [UInt8]
}

/// A conversation with messages a device may not have seen.
public struct ConversationSummary: Sendable, Equatable {
    public var conversation: String
    public var lastSequence: Int64
    public var lastTimestamp: Int64
}

/// Assigns each conversation's messages a gapless, strictly increasing sequence and
/// stores them before acknowledging. Sends to one conversation are written in the order
/// they were submitted, many per storage batch; conversations proceed independently.
/// `submit` is synchronous, so a connection that submits in arrival order keeps its order.
public final class MessageLog: Sendable {
    public typealias Completion = @Sendable (Result<(SendAck, StoredMessage?), ChatError>) -> Void

    public struct Limits: Sendable {
        public var maxBodyBytes = 65_536
        public var maxClientIDBytes = 64
        public var maxContentTypeBytes = 128
        public var maxMessagesPerBatch = 256
        public init() {}
    }

    private struct Pending {
        var request: SendRequest
        var completion: Completion

        func resume(returning result: Result<(SendAck, StoredMessage?), ChatError>) { completion(result) }
    }

    private struct State {
        var lastSequence: Int64?
        var queue: [Pending] = []
        var writing = false
    }

    public let limits: Limits
    private let storage: StorageBackend
    private let states = Mutex<[ConversationID: State]>([:])
    private let participantCheck = Mutex<(@Sendable (ConversationID) async throws -> Void)?>(nil)

    /// Installs a check run once per conversation before its first write in this process
    /// (the server checks that every participant exists). A thrown `ChatError` fails the sends.
    public func checkParticipants(_ check: @escaping @Sendable (ConversationID) async throws -> Void) {
        participantCheck.withLock { $0 = check }
    }

    public init(storage: StorageBackend, limits: Limits = Limits()) {
        self.storage = storage
        self.limits = limits
    }

    /// Checks a send's fields against the limits; throws the error the client sees.
    public func validate(_ request: SendRequest) throws(ChatError) {
        guard request.conversation.includes(request.sender.userID) else { throw .forbidden("you are not in conversation \(request.conversation)") }
        guard !request.clientID.isEmpty, request.clientID.utf8.count <= limits.maxClientIDBytes else {
            throw .invalid("client_id must have 1 to \(limits.maxClientIDBytes) bytes")
        }
        guard !request.contentType.isEmpty, request.contentType.utf8.count <= limits.maxContentTypeBytes else {
            throw .invalid("content_type must have 1 to \(limits.maxContentTypeBytes) bytes")
        }
        guard request.body.utf8.count <= limits.maxBodyBytes else { throw .tooLarge("body exceeds \(limits.maxBodyBytes) bytes") }
    }

    /// Stores the message and returns its ack, with the stored message to deliver
    /// (nil for a duplicate resend, which delivers nothing).
    public func send(_ request: SendRequest) async throws(ChatError) -> (SendAck, StoredMessage?) {
        let result = await withCheckedContinuation { continuation in
            submit(request) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Queues a send; `completion` runs once, on any thread, after the message is
    /// durable (or failed). Invalid requests complete at once with their error.
    public func submit(_ request: SendRequest, completion: @escaping Completion) {
        do {
            try validate(request)
        } catch {
            completion(.failure(error))
            return
        }
        let conversation = request.conversation
        let startDrain = states.withLock { states in
            states[conversation, default: State()].queue.append(Pending(request: request, completion: completion))
            guard states[conversation]?.writing == false else { return false }
            states[conversation]?.writing = true
            return true
        }
        if startDrain { Task { await self.drain(conversation) } }
    }

    private enum Next {
        case load
        case write([Pending], after: Int64)
        case done
    }

    private func drain(_ conversation: ConversationID) async {
        while true {
            let next: Next = states.withLock { states in
                guard let state = states[conversation], !state.queue.isEmpty else {
                    states[conversation]?.writing = false
                    if states.count > 100_000 { states[conversation] = nil }
                    return .done
                }
                guard let last = state.lastSequence else { return .load }
                let take = min(state.queue.count, limits.maxMessagesPerBatch)
                let batch = Array(state.queue.prefix(take))
                states[conversation]!.queue.removeFirst(take)
                return .write(batch, after: last)
            }
            switch next {
            case .done:
                return
            case .load:
                do throws(ChatError) {
                    if let check = participantCheck.withLock({ $0 }) {
                        do {
                            try await check(conversation)
                        } catch let error as ChatError {
                            throw error
                        } catch {
                            throw ChatError.storage("cannot check the conversation's participants")
                        }
                    }
                    let last = try await loadLastSequence(conversation)
                    states.withLock { $0[conversation]?.lastSequence = last }
                } catch {
                    let queue = states.withLock { states in
                        defer { states[conversation]?.queue.removeAll() }
                        return states[conversation]?.queue ?? []
                    }
                    for pending in queue { pending.resume(returning: .failure(error)) }
                }
            case .write(let batch, let last):
                await write(batch, to: conversation, after: last)
            }
        }
    }

    private func loadLastSequence(_ conversation: ConversationID) async throws(ChatError) -> Int64 {
        do {
            let rows = try await storage.scan(table: StorageLayout.messages, partition: Array(conversation.rawValue.utf8), StorageScan(reverse: true, limit: 1))
            return rows.first.flatMap { StorageLayout.sequence(fromKey: $0.sortKey) } ?? 0
        } catch {
            throw AccountService.storageError(error)
        }
    }

    private static func clientKey(_ request: SendRequest) -> StorageKey {
        StorageLayout.key(StorageLayout.clientIDs, request.conversation.rawValue, Array(request.sender.userID.utf8) + [0] + Array(request.clientID.utf8))
    }

    /// Writes one batch; on a client-id conflict (a resend of a stored message) answers
    /// that send as a duplicate and writes the rest again.
    private func write(_ batch: [Pending], to conversation: ConversationID, after last: Int64) async {
        var remaining = batch
        while !remaining.isEmpty {
            let timestamp = currentTimeMillis()
            var writes: [StorageWrite] = []
            var firstOfClientID: [StorageKey: Int] = [:]
            var acks: [(SendAck, StoredMessage?)] = []
            var sequence = last
            var writeOwner: [Int: Int] = [:]
            var messageWrites = Set<Int>()
            for (index, pending) in remaining.enumerated() {
                let clientKey = Self.clientKey(pending.request)
                if let first = firstOfClientID[clientKey] {
                    var ack = acks[first].0
                    ack.duplicate = true
                    acks.append((ack, nil))
                    continue
                }
                firstOfClientID[clientKey] = index
                sequence += 1
                let record = Self.record(pending.request, sequence: sequence, timestamp: timestamp)
                writeOwner[writes.count] = index
                writes.append(.putIfAbsent(clientKey, value: StorageLayout.sequenceKey(sequence) + StorageLayout.sequenceKey(timestamp)))
                // Put-if-absent: if another node wrote this sequence, reload and retry instead of overwriting.
                messageWrites.insert(writes.count)
                writes.append(.putIfAbsent(StorageLayout.key(StorageLayout.messages, conversation.rawValue, StorageLayout.sequenceKey(sequence)), value: record))
                acks.append((
                    SendAck(conversation: conversation.rawValue, sequence: sequence, timestamp: timestamp, clientID: pending.request.clientID, duplicate: false),
                    StoredMessage(conversation: conversation, sequence: sequence, record: record)
                ))
            }
            var summary = JSONWriter(capacity: 96)
            summary.beginObject()
            summary.field("last_seq", sequence)
            summary.field("last_ts", timestamp)
            summary.endObject()
            for participant in conversation.participants {
                writes.append(.put(StorageLayout.key(StorageLayout.userConversations, participant, Array(conversation.rawValue.utf8)), value: summary.bytes))
            }
            do {
                try await storage.apply(writes)
                states.withLock { $0[conversation]?.lastSequence = sequence }
                for (pending, ack) in zip(remaining, acks) { pending.resume(returning: .success(ack)) }
                return
            } catch {
                if error.status == .conflict, case .plugin(_, _, _, let index?) = error, let owner = writeOwner[index] {
                    let duplicate = remaining.remove(at: owner)
                    duplicate.resume(returning: await originalAck(of: duplicate.request))
                    continue
                }
                if error.status == .conflict, case .plugin(_, _, _, let index?) = error, messageWrites.contains(index) {
                    let retry = remaining
                    states.withLock { states in
                        states[conversation]?.lastSequence = nil
                        states[conversation]?.queue.insert(contentsOf: retry, at: 0)
                    }
                    return
                }
                let chatError = AccountService.storageError(error)
                for pending in remaining { pending.resume(returning: .failure(chatError)) }
                return
            }
        }
    }

    private func originalAck(of request: SendRequest) async -> Result<(SendAck, StoredMessage?), ChatError> {
        do {
            guard let value = try await storage.get(Self.clientKey(request)), value.count == 16,
                let sequence = StorageLayout.sequence(fromKey: Array(value[0..<8])), let timestamp = StorageLayout.sequence(fromKey: Array(value[8..<16]))
            else { return .failure(.storage("a stored client id has no sequence")) }
            return .success((SendAck(conversation: request.conversation.rawValue, sequence: sequence, timestamp: timestamp, clientID: request.clientID, duplicate: true), nil))
        } catch {
            return .failure(AccountService.storageError(error))
        }
    }

    private static func record(_ request: SendRequest, sequence: Int64, timestamp: Int64) -> [UInt8] {
        var writer = JSONWriter(capacity: 160 + request.body.utf8.count)
        writer.beginObject()
        writer.field("conversation", request.conversation.rawValue)
        writer.field("seq", sequence)
        writer.field("ts", timestamp)
        writer.field("from", request.sender.userID)
        writer.field("from_device", request.sender.deviceID)
        writer.field("sender", request.sender.username)
        writer.field("client_id", request.clientID)
        writer.field("content_type", request.contentType)
        writer.field("body", request.body)
        writer.endObject()
        return writer.bytes
    }

    /// Messages of a conversation in ascending order: after `after` (forward paging) or,
    /// when `before` is given, the newest ones before it (backward paging).
    public func history(_ session: Session, conversation: ConversationID, after: Int64?, before: Int64?, limit: Int) async throws(ChatError) -> [StoredMessage] {
        guard conversation.includes(session.userID) else { throw .forbidden("you are not in conversation \(conversation)") }
        guard (1...1000).contains(limit) else { throw .invalid("limit must be 1 to 1000") }
        let range: StorageScan
        if let before {
            range = StorageScan(lower: after.map { .exclusive(StorageLayout.sequenceKey($0)) } ?? .none, upper: .exclusive(StorageLayout.sequenceKey(before)), reverse: true, limit: limit)
        } else {
            range = StorageScan(lower: .exclusive(StorageLayout.sequenceKey(after ?? 0)), limit: limit)
        }
        do {
            let rows = try await storage.scan(table: StorageLayout.messages, partition: Array(conversation.rawValue.utf8), range)
            let messages = rows.compactMap { row in StorageLayout.sequence(fromKey: row.sortKey).map { StoredMessage(conversation: conversation, sequence: $0, record: row.value) } }
            return before == nil ? messages : messages.reversed()
        } catch {
            throw AccountService.storageError(error)
        }
    }

    /// The user's conversations whose last sequence is above the device's cursor for them
    /// (absent cursors count as 0), in one answer.
    public func changes(_ session: Session, cursors: [String: Int64]) async throws(ChatError) -> [ConversationSummary] {
        var changed: [ConversationSummary] = []
        var lower = StorageBound.none
        do {
            while true {
                let rows = try await storage.scan(table: StorageLayout.userConversations, partition: Array(session.userID.utf8), StorageScan(lower: lower, limit: StorageLimits.maxScanRows))
                for row in rows {
                    let conversation = String(decoding: row.sortKey, as: UTF8.self)
                    guard let value = try? JSONParser.parse(row.value), let last = value["last_seq"]?.int64Value else { continue }
                    if last > cursors[conversation, default: 0] {
                        changed.append(ConversationSummary(conversation: conversation, lastSequence: last, lastTimestamp: value["last_ts"]?.int64Value ?? 0))
                    }
                }
                guard rows.count == StorageLimits.maxScanRows, let last = rows.last else { break }
                lower = .exclusive(last.sortKey)
            }
        } catch {
            throw AccountService.storageError(error)
        }
        return changed
    }
}
