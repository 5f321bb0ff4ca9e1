// Sequencing, durable storage, idempotent resends, history and sync of conversation messages.
import ParleyJSON
public import PluginHost
import Synchronization

/// What a membership change adds to its event message: the storage writes that go into
/// the same atomic batch, the event's body, and users who get the event without being
/// members afterwards (a removed member learns of the removal).
public struct MembershipEvent: Sendable {
    public var writes: [StorageWrite]
    public var body: String
    public var alsoNotify: [String]

    public init(writes: [StorageWrite], body: String, alsoNotify: [String] = []) {
        self.writes = writes
        self.body = body
        self.alsoNotify = alsoNotify
    }
}

/// A message a device asks to send.
public struct SendRequest: Sendable {
    /// Changes the members (checking the sender's rights) for the event about to get
    /// `sequence`; runs in conversation order, so it sees every earlier change. A thrown
    /// error fails this request only and changes nothing.
    public typealias MembershipChange = @Sendable (_ members: inout ConversationMembers, _ sequence: Int64) throws(ChatError) -> MembershipEvent

    public var sender: Session
    public var conversation: ConversationID
    public var clientID: String
    public var contentType: String
    public var body: String
    public var membershipChange: MembershipChange?

    public init(sender: Session, conversation: ConversationID, clientID: String, contentType: String, body: String, membershipChange: MembershipChange? = nil) {
        self.sender = sender
        self.conversation = conversation
        self.clientID = clientID
        self.contentType = contentType
        self.body = body
        self.membershipChange = membershipChange
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
    /// The users whose devices receive it live (empty for history pages).
    public var recipients: [String] = []
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
        var members: ConversationMembers?
        var queue: [Pending] = []
        var writing = false
    }

    public let limits: Limits
    private let storage: StorageBackend
    private let states = Mutex<[ConversationID: State]>([:])
    private let membersLoader = Mutex<(@Sendable (ConversationID) async throws -> ConversationMembers)?>(nil)

    /// Installs how a conversation's members are read, once per conversation before its
    /// first write or read in this process (the server checks direct conversations' users
    /// exist and reads groups' stored members). A thrown `ChatError` fails the requests.
    public func loadMembers(with loader: @escaping @Sendable (ConversationID) async throws -> ConversationMembers) {
        membersLoader.withLock { $0 = loader }
    }

    public init(storage: StorageBackend, limits: Limits = Limits()) {
        self.storage = storage
        self.limits = limits
    }

    /// Checks a send's fields against the limits; throws the error the client sees.
    public func validate(_ request: SendRequest) throws(ChatError) {
        if request.conversation.kind == .direct, !request.conversation.includes(request.sender.userID) {
            throw .forbidden("you are not in conversation \(request.conversation)")
        }
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
        case write([Pending], after: Int64, members: ConversationMembers)
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
                guard let last = state.lastSequence, let members = state.members else { return .load }
                let take = min(state.queue.count, limits.maxMessagesPerBatch)
                let batch = Array(state.queue.prefix(take))
                states[conversation]!.queue.removeFirst(take)
                return .write(batch, after: last, members: members)
            }
            switch next {
            case .done:
                return
            case .load:
                do throws(ChatError) {
                    let members = try await loadMembers(conversation)
                    let last = try await loadLastSequence(conversation)
                    states.withLock { states in
                        states[conversation]?.lastSequence = last
                        states[conversation]?.members = members
                    }
                } catch {
                    let queue = states.withLock { states in
                        defer { states[conversation]?.queue.removeAll() }
                        return states[conversation]?.queue ?? []
                    }
                    for pending in queue { pending.resume(returning: .failure(error)) }
                }
            case .write(let batch, let last, let members):
                await write(batch, to: conversation, after: last, members: members)
            }
        }
    }

    private func loadMembers(_ conversation: ConversationID) async throws(ChatError) -> ConversationMembers {
        guard let loader = membersLoader.withLock({ $0 }) else {
            return ConversationMembers(exists: true, members: Dictionary(uniqueKeysWithValues: conversation.participants.map { ($0, .init(role: .member, fromSequence: 1)) }))
        }
        do {
            return try await loader(conversation)
        } catch let error as ChatError {
            throw error
        } catch {
            throw ChatError.storage("cannot read the members of \(conversation)")
        }
    }

    /// The conversation's members: cached when it has been written to, else loaded.
    public func members(of conversation: ConversationID) async throws(ChatError) -> ConversationMembers {
        if let cached = states.withLock({ $0[conversation]?.members }) { return cached }
        return try await loadMembers(conversation)
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
    private func write(_ batch: [Pending], to conversation: ConversationID, after last: Int64, members initialMembers: ConversationMembers) async {
        var remaining = batch
        while !remaining.isEmpty {
            let timestamp = currentTimeMillis()
            var members = initialMembers
            var writes: [StorageWrite] = []
            var firstOfClientID: [StorageKey: Int] = [:]
            var included: [Pending] = []
            var acks: [(SendAck, StoredMessage?)] = []
            var sequence = last
            var writeOwner: [Int: Int] = [:]
            var messageWrites = Set<Int>()
            var summaryUsers = Set<String>()
            for pending in remaining {
                let request = pending.request
                let clientKey = Self.clientKey(request)
                if let first = firstOfClientID[clientKey] {
                    var ack = acks[first].0
                    ack.duplicate = true
                    included.append(pending)
                    acks.append((ack, nil))
                    continue
                }
                var body = request.body
                var alsoNotify: [String] = []
                var eventWrites: [StorageWrite] = []
                if let change = request.membershipChange {
                    var changed = members
                    do {
                        let event = try change(&changed, sequence + 1)
                        body = event.body
                        alsoNotify = event.alsoNotify
                        eventWrites = event.writes
                        members = changed
                    } catch {
                        pending.resume(returning: .failure(error))
                        continue
                    }
                } else if !members.exists {
                    pending.resume(returning: .failure(.notFound("conversation \(conversation)")))
                    continue
                } else if !members.isCurrent(request.sender.userID) {
                    pending.resume(returning: .failure(.forbidden("you are not a member of \(conversation)")))
                    continue
                }
                firstOfClientID[clientKey] = included.count
                sequence += 1
                let record = Self.record(request, body: body, sequence: sequence, timestamp: timestamp)
                writeOwner[writes.count] = included.count
                writes.append(.putIfAbsent(clientKey, value: StorageLayout.sequenceKey(sequence) + StorageLayout.sequenceKey(timestamp)))
                // Put-if-absent: if another node wrote this sequence, reload and retry instead of overwriting.
                messageWrites.insert(writes.count)
                writes.append(.putIfAbsent(StorageLayout.key(StorageLayout.messages, conversation.rawValue, StorageLayout.sequenceKey(sequence)), value: record))
                writes += eventWrites
                // Senders have read what they send: their read cursor moves with it.
                writes.append(.put(ReceiptStore.key(conversation, request.sender.userID, .read), value: StorageLayout.sequenceKey(sequence)))
                let recipients = members.current + alsoNotify
                summaryUsers.formUnion(recipients)
                included.append(pending)
                acks.append((
                    SendAck(conversation: conversation.rawValue, sequence: sequence, timestamp: timestamp, clientID: request.clientID, duplicate: false),
                    StoredMessage(conversation: conversation, sequence: sequence, record: record, recipients: recipients)
                ))
            }
            remaining = included
            guard sequence > last else {
                // Only duplicates of each other remained, which cannot happen without a first; or nothing.
                for (pending, ack) in zip(remaining, acks) { pending.resume(returning: .success(ack)) }
                return
            }
            var summary = JSONWriter(capacity: 96)
            summary.beginObject()
            summary.field("last_seq", sequence)
            summary.field("last_ts", timestamp)
            summary.endObject()
            for user in summaryUsers.sorted() {
                writes.append(.put(StorageLayout.key(StorageLayout.userConversations, user, Array(conversation.rawValue.utf8)), value: summary.bytes))
            }
            do {
                try await storage.apply(writes)
                states.withLock { states in
                    states[conversation]?.lastSequence = sequence
                    states[conversation]?.members = members
                }
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
                        states[conversation]?.members = nil
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

    private static func record(_ request: SendRequest, body: String, sequence: Int64, timestamp: Int64) -> [UInt8] {
        var writer = JSONWriter(capacity: 160 + body.utf8.count)
        writer.beginObject()
        writer.field("conversation", request.conversation.rawValue)
        writer.field("seq", sequence)
        writer.field("ts", timestamp)
        writer.field("from", request.sender.userID)
        writer.field("from_device", request.sender.deviceID)
        writer.field("sender", request.sender.username)
        writer.field("client_id", request.clientID)
        writer.field("content_type", request.contentType)
        writer.field("body", body)
        writer.endObject()
        return writer.bytes
    }

    /// Messages of a conversation in ascending order: after `after` (forward paging) or,
    /// when `before` is given, the newest ones before it (backward paging).
    public func history(_ session: Session, conversation: ConversationID, after: Int64?, before: Int64?, limit: Int) async throws(ChatError) -> [StoredMessage] {
        guard (1...1000).contains(limit) else { throw .invalid("limit must be 1 to 1000") }
        // A member reads from the message that added them to the one that removed them.
        let readable: ClosedRange<Int64>
        if conversation.kind == .direct {
            guard conversation.includes(session.userID) else { throw .forbidden("you are not in conversation \(conversation)") }
            readable = 1...Int64.max
        } else {
            let members = try await members(of: conversation)
            guard members.exists || members.members[session.userID] != nil else { throw .notFound("conversation \(conversation)") }
            guard let range = members.readableRange(for: session.userID) else { throw .forbidden("you are not a member of \(conversation)") }
            readable = range
        }
        let lower = max(after ?? 0, readable.lowerBound - 1)
        let upper = min(before ?? Int64.max, readable.upperBound == Int64.max ? Int64.max : readable.upperBound + 1)
        guard lower + 1 < upper else { return [] }
        let range: StorageScan
        if before != nil || upper != Int64.max {
            range = StorageScan(lower: .exclusive(StorageLayout.sequenceKey(lower)), upper: upper == Int64.max ? .none : .exclusive(StorageLayout.sequenceKey(upper)), reverse: before != nil, limit: limit)
        } else {
            range = StorageScan(lower: .exclusive(StorageLayout.sequenceKey(lower)), limit: limit)
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
        try await conversations(of: session.userID).filter { $0.lastSequence > cursors[$0.conversation, default: 0] }
    }

    /// Every conversation the user has taken part in, with its last sequence.
    public func conversations(of userID: String) async throws(ChatError) -> [ConversationSummary] {
        var changed: [ConversationSummary] = []
        var lower = StorageBound.none
        do {
            while true {
                let rows = try await storage.scan(table: StorageLayout.userConversations, partition: Array(userID.utf8), StorageScan(lower: lower, limit: StorageLimits.maxScanRows))
                for row in rows {
                    let conversation = String(decoding: row.sortKey, as: UTF8.self)
                    guard let value = try? JSONParser.parse(row.value), let last = value["last_seq"]?.int64Value else { continue }
                    changed.append(ConversationSummary(conversation: conversation, lastSequence: last, lastTimestamp: value["last_ts"]?.int64Value ?? 0))
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
