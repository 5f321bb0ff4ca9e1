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

    package init(conversation: String, sequence: Int64, timestamp: Int64, clientID: String, duplicate: Bool) {
        self.conversation = conversation
        self.sequence = sequence
        self.timestamp = timestamp
        self.clientID = clientID
        self.duplicate = duplicate
    }
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

    /// A class, so that queues and batches move one reference instead of every field.
    private final class Pending: Sendable {
        let request: SendRequest
        let completion: Completion

        init(request: SendRequest, completion: @escaping Completion) {
            self.request = request
            self.completion = completion
        }

        func resume(returning result: Result<(SendAck, StoredMessage?), ChatError>) { completion(result) }
    }

    private struct Conversation {
        var lastSequence: Int64?
        var members: ConversationMembers?
        var queue: [Pending] = []
        /// Its last sequence and members are being read.
        var loading = false
        /// A batch of it is in storage; the next waits, since its sequences follow.
        var writing = false
        /// It is in `State.ready`.
        var listed = false
        /// For a group: its current members' `user_conversations` rows have been written
        /// (live) since it was loaded, so batches without membership changes write only its head.
        var indexed = false
    }

    private struct State {
        var conversations: [ConversationID: Conversation] = [:]
        /// Loaded conversations with sends queued and no batch in storage, in arrival order.
        var ready: [ConversationID] = []
        /// A job that turns every ready conversation into a storage batch is queued on
        /// the plugin workers.
        var jobQueued = false
    }

    /// A batch of one conversation on its way to storage.
    private struct Batch {
        var conversation: ConversationID
        var pending: [Pending]
        var after: Int64
        var members: ConversationMembers
        var indexed: Bool
    }

    public let limits: Limits
    private let storage: StorageBackend
    private let state = Mutex(State())
    // The installed closure is kept inside a struct. A bare optional closure in a Mutex,
    // read with `withLock { $0 }`, is written back wrapped in reabstraction thunks each
    // time (Swift 6.3): after n reads a call walks n thunks, and a long-running server that
    // loads many conversations would slow down quadratically and finally overflow its stack.
    private struct MembersLoader {
        let load: @Sendable (ConversationID) async throws -> ConversationMembers
    }

    private let membersLoader = Mutex<MembersLoader?>(nil)

    /// Installs how a conversation's members are read, once per conversation before its
    /// first write or read in this process (the server checks direct conversations' users
    /// exist and reads groups' stored members). A thrown `ChatError` fails the requests.
    public func loadMembers(with loader: @escaping @Sendable (ConversationID) async throws -> ConversationMembers) {
        membersLoader.withLock { $0 = MembersLoader(load: loader) }
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
    ///
    /// The path to storage has no task and no wait: `submit` queues the send under a
    /// lock, one job on the plugin workers turns the queues of every ready conversation
    /// into one batch each, and each batch's completion runs on the thread that
    /// finishes it (for storage-sqlite, its writer thread, after the group commit).
    public func submit(_ request: consuming SendRequest, completion: @escaping Completion) {
        do {
            try validate(request)
        } catch {
            completion(.failure(error))
            return
        }
        let conversation = request.conversation
        let pending = Pending(request: request, completion: completion)
        let (load, startJob) = state.withLock { state in
            // One access to the entry, in place: hashing a conversation id is a noticeable
            // part of a send, and a copy of the entry would copy its queue on the next append.
            let next = Self.queue(pending, in: &state.conversations[conversation, default: Conversation()])
            return (next.load, next.ready && Self.list(conversation, &state))
        }
        if load { startLoad(conversation) }
        if startJob { queueJob() }
    }

    private static func queue(_ pending: Pending, in entry: inout Conversation) -> (load: Bool, ready: Bool) {
        entry.queue.append(pending)
        return next(&entry)
    }

    /// What the conversation needs now: loading, when nothing is known of it yet (it is
    /// marked loading), or a place in `State.ready`, when it can take a batch now (it is
    /// marked listed, and the caller must `list` it).
    private static func next(_ entry: inout Conversation) -> (load: Bool, ready: Bool) {
        var load = false
        if !entry.loading, entry.lastSequence == nil || entry.members == nil {
            entry.loading = true
            load = true
        }
        guard !entry.queue.isEmpty, !entry.writing, !entry.listed, entry.lastSequence != nil, entry.members != nil else { return (load, false) }
        entry.listed = true
        return (load, true)
    }

    /// Lists a conversation `next` found ready; true when the caller must queue the job.
    private static func list(_ conversation: ConversationID, _ state: inout State) -> Bool {
        state.ready.append(conversation)
        guard !state.jobQueued else { return false }
        state.jobQueued = true
        return true
    }

    private func queueJob() {
        do {
            try storage.onWorker { self.runJob() }
        } catch {
            // The workers are full or stopping: fail what waits instead of keeping it forever.
            let failed = state.withLock { state in
                state.jobQueued = false
                var failed: [Pending] = []
                for conversation in state.ready {
                    failed += state.conversations[conversation]?.queue ?? []
                    state.conversations[conversation]?.queue.removeAll()
                    state.conversations[conversation]?.listed = false
                }
                state.ready.removeAll()
                return failed
            }
            let chatError = AccountService.storageError(error)
            for pending in failed { pending.resume(returning: .failure(chatError)) }
        }
    }

    /// On a plugin worker: one batch per ready conversation, each started here.
    private func runJob() {
        let batches: [Batch] = state.withLock { state in
            state.jobQueued = false
            let ready = state.ready
            state.ready.removeAll(keepingCapacity: true)
            return ready.compactMap { conversation in
                guard let index = state.conversations.index(forKey: conversation) else { return nil }
                return Self.takeBatch(of: conversation, &state.conversations.values[index], limit: limits.maxMessagesPerBatch)
            }
        }
        for batch in batches { write(batch) }
    }

    /// Takes the head of the conversation's queue as a batch and marks it writing, in place.
    private static func takeBatch(of conversation: ConversationID, _ entry: inout Conversation, limit: Int) -> Batch? {
        entry.listed = false
        guard let last = entry.lastSequence, let members = entry.members, !entry.queue.isEmpty else { return nil }
        let take = min(entry.queue.count, limit)
        let pending = Array(entry.queue.prefix(take))
        entry.queue.removeFirst(take)
        entry.writing = true
        return Batch(conversation: conversation, pending: pending, after: last, members: members, indexed: entry.indexed)
    }

    private func startLoad(_ conversation: ConversationID) {
        Task {
            do throws(ChatError) {
                let members = try await loadMembers(conversation)
                let last = try await loadLastSequence(conversation)
                let startJob = state.withLock { state in
                    guard let index = state.conversations.index(forKey: conversation) else { return false }
                    let ready = Self.loaded(last, members, in: &state.conversations.values[index])
                    return ready && Self.list(conversation, &state)
                }
                if startJob { queueJob() }
            } catch {
                let queue = state.withLock { state in
                    state.conversations[conversation]?.loading = false
                    defer { state.conversations[conversation]?.queue.removeAll() }
                    return state.conversations[conversation]?.queue ?? []
                }
                for pending in queue { pending.resume(returning: .failure(error)) }
            }
        }
    }

    private static func loaded(_ last: Int64, _ members: ConversationMembers, in entry: inout Conversation) -> Bool {
        entry.lastSequence = last
        entry.members = members
        entry.loading = false
        return next(&entry).ready
    }

    private func loadMembers(_ conversation: ConversationID) async throws(ChatError) -> ConversationMembers {
        guard let loader = membersLoader.withLock({ $0 }) else {
            return ConversationMembers(exists: true, members: Dictionary(uniqueKeysWithValues: conversation.participants.map { ($0, .init(role: .member, fromSequence: 1)) }))
        }
        do {
            return try await loader.load(conversation)
        } catch let error as ChatError {
            throw error
        } catch {
            throw ChatError.storage("cannot read the members of \(conversation)")
        }
    }

    /// The conversation's members: cached when it has been written to, else loaded.
    public func members(of conversation: ConversationID) async throws(ChatError) -> ConversationMembers {
        if let cached = state.withLock({ $0.conversations[conversation]?.members }) { return cached }
        return try await loadMembers(conversation)
    }

    /// The sequence of the conversation's last stored message (0 when it has none). The log's
    /// own value when it reaches `expected`, else read from storage: the log moves its value
    /// before it answers a batch, but another node may have stored more.
    public func lastSequence(of conversation: ConversationID, expected: Int64 = 0) async throws(ChatError) -> Int64 {
        if let cached = cachedLastSequence(of: conversation), cached >= expected { return cached }
        return try await loadLastSequence(conversation)
    }

    /// The log's own last sequence of the conversation, if it has the conversation loaded.
    package func cachedLastSequence(of conversation: ConversationID) -> Int64? {
        state.withLock { $0.conversations[conversation]?.lastSequence }
    }

    private func loadLastSequence(_ conversation: ConversationID) async throws(ChatError) -> Int64 {
        do {
            let rows = try await storage.scan(table: StorageLayout.messages, partition: Array(conversation.rawValue.utf8), StorageScan(reverse: true, limit: 1))
            return rows.first.flatMap { StorageLayout.sequence(fromKey: $0.sortKey) } ?? 0
        } catch {
            throw AccountService.storageError(error)
        }
    }

    /// A client id's sort key within its conversation: the sender's user id, a zero byte, the client id.
    private static func clientSortKey(_ request: borrowing SendRequest) -> StorageBytes {
        clientSortKey(request.sender.userID, request.clientID)
    }

    private static func clientSortKey(_ userID: String, _ clientID: String) -> StorageBytes {
        .joined(userID, clientID)
    }

    /// A sender's client id, to find resends within one batch. Hashed by the client id
    /// alone: it tells sends apart on its own nearly always, and hashing is per send.
    private struct ClientRef: Hashable {
        var userID: String
        var clientID: String

        func hash(into hasher: inout Hasher) { hasher.combine(clientID) }

        /// Byte equality, as storage keys client ids: String's `==` would take two
        /// normalizations of one text for the same id within a batch and not across batches.
        /// (Byte-equal strings are equal strings, so the hash stays consistent.)
        static func == (lhs: ClientRef, rhs: ClientRef) -> Bool {
            lhs.clientID == rhs.clientID && lhs.userID == rhs.userID
                && lhs.clientID.utf8.elementsEqual(rhs.clientID.utf8) && lhs.userID.utf8.elementsEqual(rhs.userID.utf8)
        }
    }

    /// What one batch writes, and what its sends are answered with once it is durable.
    private struct BatchWrites {
        var writes: StorageBatch
        let conversation: ConversationID
        let timestamp: Int64
        /// The sends in the batch (failed ones are answered at once and left out), with their answers.
        var included: [Pending] = []
        var answers: [Answer] = []
        /// Each stored send's client-id write and the send's index in `included`; its
        /// message write is the next one. Searched only when a batch fails on a condition.
        var clientIDWrites: [(write: Int, owner: Int)] = []
        var lastSequence: Int64
        var members: ConversationMembers
    }

    /// What a stored send is answered with, made into its ack and message when it is answered:
    /// plain fields, where a (SendAck, StoredMessage?) per send was copied and destroyed
    /// through generic code.
    private struct Answer {
        var sequence: Int64
        /// Nil for a resend of an earlier send of the same batch: a duplicate, delivered once.
        var record: [UInt8]?
        var recipients: [String]
    }

    /// Sequences a batch's sends and builds its writes: per send the client-id row and
    /// the message row (both put-if-absent) and any membership rows; per batch each
    /// sender's read cursor and each recipient's conversation summary.
    private func build(_ batch: Batch) -> BatchWrites {
        let conversation = batch.conversation
        let timestamp = currentTimeMillis()
        var result = BatchWrites(
            writes: StorageBatch(capacity: batch.pending.count * 2 + 4), conversation: conversation, timestamp: timestamp,
            lastSequence: batch.after, members: batch.members)
        result.included.reserveCapacity(batch.pending.count)
        result.answers.reserveCapacity(batch.pending.count)
        result.clientIDWrites.reserveCapacity(batch.pending.count)
        let partition = StorageBytes.utf8(conversation.rawValue)
        var firstOfClientID: [ClientRef: Int] = [:]
        firstOfClientID.reserveCapacity(batch.pending.count)
        var senders: [String: Int64] = [:]
        /// The sender of the latest sends and its last sequence, put in `senders` when another
        /// sender's send comes: a direct conversation's batch is mostly one sender's.
        var senderRun: (userID: String, sequence: Int64)?
        // The current members change only with membership events: computed once until then.
        var current = result.members.current
        var summaryUsers = Set(current)
        var membershipChanged = false
        /// The sequence of the event that ended each user's membership in this batch: their
        /// row stops there, since they cannot read further.
        var membershipEnded: [String: Int64] = [:]
        for pending in batch.pending {
            // Fields are read through `pending`: a copy of the whole request retains each of its strings.
            let ref = ClientRef(userID: pending.request.sender.userID, clientID: pending.request.clientID)
            if let first = firstOfClientID[ref] {
                result.included.append(pending)
                result.answers.append(Answer(sequence: result.answers[first].sequence, record: nil, recipients: []))
                continue
            }
            var body = pending.request.body
            var alsoNotify: [String] = []
            var eventWrites: [StorageWrite] = []
            if let change = pending.request.membershipChange {
                var changed = result.members
                do {
                    let event = try change(&changed, result.lastSequence + 1)
                    body = event.body
                    alsoNotify = event.alsoNotify
                    eventWrites = event.writes
                    result.members = changed
                    let remaining = Set(changed.current)
                    for user in current where !remaining.contains(user) { membershipEnded[user] = result.lastSequence + 1 }
                    current = changed.current
                    membershipChanged = true
                    summaryUsers.formUnion(current)
                    summaryUsers.formUnion(alsoNotify)
                } catch {
                    pending.resume(returning: .failure(error))
                    continue
                }
            } else if !result.members.exists {
                pending.resume(returning: .failure(.notFound("conversation \(conversation)")))
                continue
            } else if !result.members.isCurrent(pending.request.sender.userID) {
                pending.resume(returning: .failure(.forbidden("you are not a member of \(conversation)")))
                continue
            }
            firstOfClientID[ref] = result.included.count
            result.lastSequence += 1
            let sequence = result.lastSequence
            let record = Self.record(pending, body: body, sequence: sequence, timestamp: timestamp)
            result.clientIDWrites.append((result.writes.count, result.included.count))
            result.writes.add(.putIfAbsent, table: StorageLayout.clientIDs, partition: partition, sort: Self.clientSortKey(pending.request), value: .sequences(sequence, timestamp))
            // Put-if-absent: if another node wrote this sequence, reload and retry instead of overwriting.
            result.writes.add(.putIfAbsent, table: StorageLayout.messages, partition: partition, sort: .sequence(sequence), value: .bytes(record))
            for write in eventWrites { result.writes.add(write) }
            if let run = senderRun, run.userID != pending.request.sender.userID { senders[run.userID] = run.sequence }
            senderRun = (pending.request.sender.userID, sequence)
            let recipients = alsoNotify.isEmpty ? current : current + alsoNotify
            result.included.append(pending)
            result.answers.append(Answer(sequence: sequence, record: record, recipients: recipients))
        }
        if let run = senderRun { senders[run.userID] = run.sequence }
        guard result.lastSequence > batch.after else { return result }
        // Senders have read what they send: their read cursor moves to their last message.
        for (sender, sequence) in senders.sorted(by: { $0.key < $1.key }) {
            result.writes.add(.put, table: StorageLayout.readCursors, partition: partition, sort: ReceiptStore.sortKey(sender, .read), value: .sequence(sequence))
        }
        let summary = Self.summaryValue(result.lastSequence, timestamp, live: false)
        guard conversation.kind == .group else {
            for user in summaryUsers.sorted() {
                result.writes.add(.put, table: StorageLayout.userConversations, partition: .utf8(user), sort: partition, value: .bytes(summary))
            }
            return result
        }
        // A group: one head row per batch; its members' rows only when they change.
        result.writes.add(.put, table: StorageLayout.conversationHeads, partition: partition, sort: .bytes([]), value: .bytes(summary))
        if membershipChanged || !batch.indexed {
            let live = Self.summaryValue(result.lastSequence, timestamp, live: true)
            let currentSet = Set(current)
            for user in summaryUsers.sorted() {
                let value: [UInt8]
                if currentSet.contains(user) {
                    value = live
                } else if let ended = membershipEnded[user] {
                    value = Self.summaryValue(ended, timestamp, live: false)
                } else {
                    value = summary
                }
                result.writes.add(.put, table: StorageLayout.userConversations, partition: .utf8(user), sort: partition, value: .bytes(value))
            }
        }
        return result
    }

    /// A `user_conversations` or `conversation_heads` value.
    private static func summaryValue(_ sequence: Int64, _ timestamp: Int64, live: Bool) -> [UInt8] {
        JSONWriter.object(capacity: 64) { writer in
            writer.field("last_seq", sequence)
            writer.field("last_ts", timestamp)
            if live { writer.field("live", true) }
        }
    }

    /// Answers each stored send with its ack and the message to deliver.
    private static func answer(_ built: BatchWrites) {
        for index in built.included.indices {
            let pending = built.included[index], answer = built.answers[index]
            let ack = SendAck(
                conversation: built.conversation.rawValue, sequence: answer.sequence, timestamp: built.timestamp,
                clientID: pending.request.clientID, duplicate: answer.record == nil)
            let message = answer.record.map { StoredMessage(conversation: built.conversation, sequence: answer.sequence, record: $0, recipients: answer.recipients) }
            pending.resume(returning: .success((ack, message)))
        }
    }

    /// Writes one batch, started on a plugin worker. On a client-id conflict (a resend
    /// of a message stored earlier) that send is answered as a duplicate and the rest
    /// go back to the head of the queue; on a message conflict (another node wrote the
    /// sequence) the conversation is reloaded first.
    private func write(_ batch: Batch) {
        let built = build(batch)
        guard built.lastSequence > batch.after else {
            // Nothing to store: every send failed, or only duplicates of each other remained.
            Self.answer(built)
            finishWrite(batch.conversation, storedUpTo: nil, members: nil, requeue: [])
            return
        }
        storage.applyHere(built.writes) { [self] result in
            switch result {
            case .success:
                // The log's last sequence moves before anyone is answered, so a recipient's
                // receipt for these messages always finds them stored; `writing` still holds
                // the next batch back until `finishWrite`.
                state.withLock { $0.conversations[batch.conversation]?.lastSequence = built.lastSequence }
                // Answer (and so deliver) this batch before the next one can start: a plugin that
                // completes on the worker thread would otherwise let another worker store and
                // deliver the next sequences while these are still being handed out.
                Self.answer(built)
                finishWrite(batch.conversation, storedUpTo: built.lastSequence, members: built.members, requeue: [])
            case .failure(let error):
                if error.status == .conflict, case .plugin(_, _, _, let index?) = error, let owner = built.clientIDWrites.first(where: { $0.write == index })?.owner {
                    var remaining = built.included
                    let duplicate = remaining.remove(at: owner)
                    finishWrite(batch.conversation, storedUpTo: nil, members: nil, requeue: remaining)
                    Task { duplicate.resume(returning: await originalAck(of: duplicate.request)) }
                } else if error.status == .conflict, case .plugin(_, _, _, let index?) = error, built.clientIDWrites.contains(where: { $0.write + 1 == index }) {
                    finishWrite(batch.conversation, storedUpTo: nil, members: nil, requeue: built.included, reload: true)
                } else {
                    finishWrite(batch.conversation, storedUpTo: nil, members: nil, requeue: [])
                    let chatError = AccountService.storageError(error)
                    for pending in built.included { pending.resume(returning: .failure(chatError)) }
                }
            }
        }
    }

    /// Ends a conversation's batch: records what was stored, puts sends to retry back at
    /// the head of its queue, and lists it again (or reloads it) when sends wait.
    private func finishWrite(_ conversation: ConversationID, storedUpTo sequence: Int64?, members: ConversationMembers?, requeue: [Pending], reload: Bool = false) {
        let (load, startJob) = state.withLock { state -> (Bool, Bool) in
            guard let index = state.conversations.index(forKey: conversation) else { return (false, false) }
            let next = Self.finish(&state.conversations.values[index], storedUpTo: sequence, members: members, requeue: requeue, reload: reload, evictable: state.conversations.count > 100_000)
            guard let next else {
                state.conversations.remove(at: index)
                return (false, false)
            }
            return (next.load, next.ready && Self.list(conversation, &state))
        }
        if load { startLoad(conversation) }
        if startJob { queueJob() }
    }

    /// `finishWrite` on the entry, in place; nil when it should be dropped (nothing waits
    /// for it and the map of conversations is full).
    private static func finish(_ entry: inout Conversation, storedUpTo sequence: Int64?, members: ConversationMembers?, requeue: [Pending], reload: Bool, evictable: Bool) -> (load: Bool, ready: Bool)? {
        entry.writing = false
        if let sequence {
            // A stored batch wrote a group's member rows if they were not written yet.
            entry.lastSequence = sequence
            entry.indexed = true
        }
        if let members { entry.members = members }
        if reload {
            entry.lastSequence = nil
            entry.members = nil
            entry.indexed = false
        }
        if !requeue.isEmpty { entry.queue.insert(contentsOf: requeue, at: 0) }
        if entry.queue.isEmpty, !entry.loading, evictable { return nil }
        return next(&entry)
    }

    private func originalAck(of request: SendRequest) async -> Result<(SendAck, StoredMessage?), ChatError> {
        do throws(ChatError) {
            guard let ack = try await storedAck(request.conversation, sender: request.sender.userID, clientID: request.clientID) else {
                return .failure(.storage("a stored client id has no sequence"))
            }
            return .success((ack, nil))
        } catch {
            return .failure(error)
        }
    }

    /// The ack of the send the sender stored earlier with this client id in the conversation,
    /// marked duplicate; nil when there is none.
    public func storedAck(_ conversation: ConversationID, sender userID: String, clientID: String) async throws(ChatError) -> SendAck? {
        let value: [UInt8]?
        do {
            value = try await storage.get(StorageLayout.key(StorageLayout.clientIDs, conversation.rawValue, Self.clientSortKey(userID, clientID).bytes))
        } catch {
            throw AccountService.storageError(error)
        }
        guard let value, value.count == 16,
            let sequence = StorageLayout.sequence(fromKey: Array(value[0..<8])), let timestamp = StorageLayout.sequence(fromKey: Array(value[8..<16]))
        else { return nil }
        return SendAck(conversation: conversation.rawValue, sequence: sequence, timestamp: timestamp, clientID: clientID, duplicate: true)
    }

    /// Takes the pending send, not its request: passing `pending.request` copied the whole request.
    private static func record(_ pending: Pending, body: String, sequence: Int64, timestamp: Int64) -> [UInt8] {
        // Keys, punctuation and numbers take about 130 bytes; sized whole, the record never regrows.
        let strings = pending.request.conversation.rawValue.utf8.count + pending.request.sender.userID.utf8.count + pending.request.sender.deviceID.utf8.count
            + pending.request.sender.username.utf8.count + pending.request.clientID.utf8.count + pending.request.contentType.utf8.count + body.utf8.count
        return JSONWriter.object(capacity: 160 + strings) { writer in
            writer.field("conversation", pending.request.conversation.rawValue)
            writer.field("seq", sequence)
            writer.field("ts", timestamp)
            writer.field("from", pending.request.sender.userID)
            writer.field("from_device", pending.request.sender.deviceID)
            writer.field("sender", pending.request.sender.username)
            writer.field("client_id", pending.request.clientID)
            writer.field("content_type", pending.request.contentType)
            writer.field("body", body)
        }
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
    /// (absent cursors count as 0), in one answer. On the current thread, which must be a
    /// plugin worker.
    public func changesHere(_ session: Session, cursors: [String: Int64]) throws(ChatError) -> [ConversationSummary] {
        try conversationsHere(of: session.userID).filter { $0.lastSequence > cursors[$0.conversation, default: 0] }
    }

    /// Every conversation the user has taken part in, with its last sequence: for a group
    /// they are in, the group's head. With `heads` false, such groups are listed with the
    /// sequence of their last membership change instead, without reading their heads.
    public func conversations(of userID: String, heads: Bool = true) async throws(ChatError) -> [ConversationSummary] {
        try await storage.reading { () throws(ChatError) in try self.conversationsHere(of: userID, heads: heads) }
    }

    /// `conversations(of:heads:)` on the current thread, which must be a plugin worker.
    public func conversationsHere(of userID: String, heads: Bool = true) throws(ChatError) -> [ConversationSummary] {
        var summaries: [ConversationSummary] = []
        var live: [Int] = []
        var lower = StorageBound.none
        do {
            while true {
                let rows = try storage.scanHere(table: StorageLayout.userConversations, partition: Array(userID.utf8), StorageScan(lower: lower, limit: StorageLimits.maxScanRows))
                for row in rows {
                    guard let summary = Self.parseSummary(String(decoding: row.sortKey, as: UTF8.self), row.value) else { continue }
                    if summary.live { live.append(summaries.count) }
                    summaries.append(summary.summary)
                }
                guard rows.count == StorageLimits.maxScanRows, let last = rows.last else { break }
                lower = .exclusive(last.sortKey)
            }
            guard heads else { return summaries }
            for index in live {
                let conversation = summaries[index].conversation
                guard let value = try storage.getHere(StorageLayout.key(StorageLayout.conversationHeads, conversation)),
                    let head = Self.parseSummary(conversation, value)?.summary, head.lastSequence > summaries[index].lastSequence
                else { continue }
                summaries[index] = head
            }
        } catch {
            throw AccountService.storageError(error)
        }
        return summaries
    }

    /// Reads a `user_conversations` or `conversation_heads` value.
    private static func parseSummary(_ conversation: String, _ value: [UInt8]) -> (summary: ConversationSummary, live: Bool)? {
        guard let fields = try? JSONParser.parse(value), let last = fields["last_seq"]?.int64Value else { return nil }
        return (ConversationSummary(conversation: conversation, lastSequence: last, lastTimestamp: fields["last_ts"]?.int64Value ?? 0), fields["live"] == .bool(true))
    }
}
