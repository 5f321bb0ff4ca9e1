// Groups of up to 100 members: create, rename, add, remove, leave, roles, delete.
// Every change is an event message in the group's own sequence, stored in the same
// atomic batch as the membership rows it changes.
import ParleyJSON
public import PluginHost

public struct GroupService: Sendable {
    /// The content type of membership events in a group's sequence.
    public static let eventContentType = "application/vnd.parley.event+json"
    public static let nameLength = 1...64

    private let storage: StorageBackend
    private let messages: MessageLog
    private let accounts: AccountService
    public let maxMembers: Int

    public init(storage: StorageBackend, messages: MessageLog, accounts: AccountService, maxMembers: Int) {
        self.storage = storage
        self.messages = messages
        self.accounts = accounts
        self.maxMembers = maxMembers
    }

    /// Reads a group's record and member rows; a direct conversation's users must exist.
    public func loadMembers(_ conversation: ConversationID) async throws -> ConversationMembers {
        guard conversation.kind == .group else {
            for participant in conversation.participants where try await accounts.profile(id: participant) == nil {
                throw ChatError.notFound("conversation \(conversation)")
            }
            return ConversationMembers(exists: true, members: Dictionary(uniqueKeysWithValues: conversation.participants.map { ($0, .init(role: .member, fromSequence: 1)) }))
        }
        guard let record = try await storage.get(StorageLayout.key(StorageLayout.groups, conversation.rawValue)), let value = try? JSONParser.parse(record) else {
            return ConversationMembers(exists: false)
        }
        var members: [String: ConversationMembers.Member] = [:]
        let rows = try await storage.scan(table: StorageLayout.groupMembers, partition: Array(conversation.rawValue.utf8), StorageScan())
        for row in rows {
            guard let member = try? JSONParser.parse(row.value), let role = member["role"]?.stringValue.flatMap(GroupRole.init(rawValue:)),
                let from = member["from"]?.int64Value
            else { continue }
            members[String(decoding: row.sortKey, as: UTF8.self)] = .init(role: role, fromSequence: from, untilSequence: member["until"]?.int64Value)
        }
        // A deleted group keeps its former members, who may still read its history.
        return ConversationMembers(exists: value["deleted"]?.boolValue != true, name: value["name"]?.stringValue ?? "", members: members)
    }

    // MARK: Changes

    /// Creates a group owned by the session's user. With a `clientID`, the creation is
    /// idempotent: the same user's same client id always names the same group (its id is
    /// derived from both), so a resend is answered with the first creation's ack, marked
    /// duplicate, and creates nothing.
    public func create(_ session: Session, name: String, members usernames: [String], clientID: String? = nil) async throws(ChatError) -> (SendAck, StoredMessage?) {
        let conversation: ConversationID
        var eventID: String?
        if let clientID {
            guard !clientID.isEmpty, clientID.utf8.count <= messages.limits.maxClientIDBytes else {
                throw ChatError.invalid("client_id must have 1 to \(messages.limits.maxClientIDBytes) bytes")
            }
            conversation = .group("gr_" + Array(Sodium.hash(Array("\(session.userID)\u{0}\(clientID)".utf8)).prefix(10)).hex)
            // The created event's own client id, derived too, so it never takes the place of a
            // message the client sends to the group with the same client id.
            let derived = "created-" + Array(Sodium.hash(Array(clientID.utf8)).prefix(16)).hex
            eventID = derived
            // A resend after the first is stored: answered before anything else is looked at.
            if let ack = try await messages.storedAck(conversation, sender: session.userID, clientID: derived) { return (ack, nil) }
        } else {
            conversation = .group("gr_" + Sodium.randomBytes(10).hex)
        }
        try Self.checkName(name)
        let invited = try await resolve(usernames).filter { $0.id != session.userID }
        let limit = maxMembers
        let request = Self.eventRequest(session, conversation, clientID: eventID) { members, sequence throws(ChatError) in
            // Any trace of the group (even deleted) means it was created before.
            guard !members.exists, members.members.isEmpty else { throw Self.createdBefore }
            guard invited.count + 1 <= limit else { throw Self.full(limit) }
            members = ConversationMembers(exists: true, name: name, members: [session.userID: .init(role: .owner, fromSequence: sequence)])
            for user in invited { members.members[user.id] = .init(role: .member, fromSequence: sequence) }
            var writes = [Self.groupRecord(conversation, name: name, deleted: false)]
            writes += members.members.map { Self.memberRow(conversation, $0.key, $0.value) }
            return MembershipEvent(writes: writes, body: Self.event("created", by: session) { writer in
                writer.field("name", name)
                Self.users(&writer, "members", [(session.userID, session.username, GroupRole.owner)] + invited.map { ($0.id, $0.username, GroupRole.member) })
            })
        }
        do {
            return try await messages.send(request)
        } catch where error.code == Self.createdBefore.code {
            // A resend that came while the first was being stored: that one is stored now.
            if let eventID, let ack = try await messages.storedAck(conversation, sender: session.userID, clientID: eventID) { return (ack, nil) }
            throw ChatError("conflict", "the group exists already", httpStatus: 409)
        }
    }

    private static let createdBefore = ChatError("group_created_before", "the group was created before", httpStatus: 409)

    public func add(_ session: Session, _ conversation: ConversationID, members usernames: [String]) async throws(ChatError) -> (SendAck, StoredMessage?) {
        let users = try await resolve(usernames)
        let limit = maxMembers
        return try await change(session, conversation) { members, sequence throws(ChatError) in
            try Self.require(.admin, session, members, "add members")
            let new = users.filter { !members.isCurrent($0.id) }
            guard !new.isEmpty else { throw ChatError.invalid("they are members already") }
            guard members.current.count + new.count <= limit else { throw Self.full(limit) }
            for user in new { members.members[user.id] = .init(role: .member, fromSequence: sequence) }
            return MembershipEvent(writes: new.map { Self.memberRow(conversation, $0.id, members.members[$0.id]!) }, body: Self.event("members_added", by: session) { writer in
                Self.users(&writer, "members", new.map { ($0.id, $0.username, GroupRole.member) })
            })
        }
    }

    public func remove(_ session: Session, _ conversation: ConversationID, member username: String) async throws(ChatError) -> (SendAck, StoredMessage?) {
        let user = try await resolve([username])[0]
        return try await change(session, conversation) { members, sequence throws(ChatError) in
            try Self.require(.admin, session, members, "remove members")
            guard user.id != session.userID else { throw ChatError.invalid("use group_leave to leave") }
            guard let target = members.members[user.id], target.untilSequence == nil else { throw ChatError.notFound("member \(username)") }
            guard target.role < members.members[session.userID]!.role else { throw ChatError.forbidden("only a higher role can remove the \(target.role.rawValue) \(username)") }
            members.members[user.id]!.untilSequence = sequence
            return MembershipEvent(writes: [Self.memberRow(conversation, user.id, members.members[user.id]!)], body: Self.event("member_removed", by: session) { writer in
                Self.users(&writer, "members", [(user.id, user.username, target.role)])
            }, alsoNotify: [user.id])
        }
    }

    public func leave(_ session: Session, _ conversation: ConversationID) async throws(ChatError) -> (SendAck, StoredMessage?) {
        try await change(session, conversation) { members, sequence throws(ChatError) in
            try Self.require(.member, session, members, "leave")
            let me = members.members[session.userID]!
            let owners = members.current.filter { members.members[$0]?.role == .owner }
            if me.role == .owner, owners.count == 1, members.current.count > 1 {
                throw ChatError("owner_must_hand_over", "you are the last owner: make another member owner first", httpStatus: 409)
            }
            members.members[session.userID]!.untilSequence = sequence
            var writes = [Self.memberRow(conversation, session.userID, members.members[session.userID]!)]
            if members.current.isEmpty {
                members.exists = false
                writes.append(Self.groupRecord(conversation, name: members.name, deleted: true))
            }
            return MembershipEvent(writes: writes, body: Self.event("member_left", by: session) { _ in }, alsoNotify: [session.userID])
        }
    }

    public func rename(_ session: Session, _ conversation: ConversationID, name: String) async throws(ChatError) -> (SendAck, StoredMessage?) {
        try Self.checkName(name)
        return try await change(session, conversation) { members, _ throws(ChatError) in
            try Self.require(.admin, session, members, "rename the group")
            members.name = name
            return MembershipEvent(writes: [Self.groupRecord(conversation, name: name, deleted: false)], body: Self.event("renamed", by: session) { $0.field("name", name) })
        }
    }

    /// Sets a member's role. Making someone owner hands ownership over: the giver becomes an admin.
    public func setRole(_ session: Session, _ conversation: ConversationID, member username: String, role: GroupRole) async throws(ChatError) -> (SendAck, StoredMessage?) {
        let user = try await resolve([username])[0]
        return try await change(session, conversation) { members, _ throws(ChatError) in
            try Self.require(.owner, session, members, "change roles")
            guard user.id != session.userID else { throw ChatError.invalid("hand ownership to another member instead") }
            guard members.isCurrent(user.id) else { throw ChatError.notFound("member \(username)") }
            members.members[user.id]!.role = role
            var changed = [(user.id, user.username, role)]
            if role == .owner {
                members.members[session.userID]!.role = .admin
                changed.append((session.userID, session.username, .admin))
            }
            return MembershipEvent(writes: changed.map { Self.memberRow(conversation, $0.0, members.members[$0.0]!) }, body: Self.event("roles_changed", by: session) { writer in
                Self.users(&writer, "members", changed)
            })
        }
    }

    public func delete(_ session: Session, _ conversation: ConversationID) async throws(ChatError) -> (SendAck, StoredMessage?) {
        try await change(session, conversation) { members, sequence throws(ChatError) in
            try Self.require(.owner, session, members, "delete the group")
            let everyone = members.current
            for user in everyone { members.members[user]!.untilSequence = sequence }
            members.exists = false
            let writes = [Self.groupRecord(conversation, name: members.name, deleted: true)] + everyone.map { Self.memberRow(conversation, $0, members.members[$0]!) }
            return MembershipEvent(writes: writes, body: Self.event("deleted", by: session) { _ in }, alsoNotify: everyone)
        }
    }

    private func change(_ session: Session, _ conversation: ConversationID, _ change: @escaping SendRequest.MembershipChange) async throws(ChatError) -> (SendAck, StoredMessage?) {
        guard conversation.kind == .group else { throw ChatError.invalid("\(conversation) is not a group") }
        return try await messages.send(Self.eventRequest(session, conversation, clientID: nil, change))
    }

    /// A membership event to store: with the client's id when it gave one, else a fresh one.
    private static func eventRequest(_ session: Session, _ conversation: ConversationID, clientID: String?, _ change: @escaping SendRequest.MembershipChange) -> SendRequest {
        SendRequest(
            sender: session, conversation: conversation, clientID: clientID ?? "event-" + Sodium.randomBytes(12).hex,
            contentType: eventContentType, body: "", membershipChange: change)
    }

    // MARK: Helpers

    private func resolve(_ usernames: [String]) async throws(ChatError) -> [UserProfile] {
        guard usernames.count <= 200 else { throw ChatError.invalid("at most 200 users per request") }
        var users: [UserProfile] = []
        for username in usernames {
            guard let user = try await accounts.lookUp(username: username) else { throw ChatError.notFound("user \(username)") }
            if !users.contains(where: { $0.id == user.id }) { users.append(user) }
        }
        guard !users.isEmpty || usernames.isEmpty else { throw ChatError.invalid("no users named") }
        return users
    }

    private static func checkName(_ name: String) throws(ChatError) {
        guard nameLength.contains(name.count), !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw ChatError.invalid("a group name has 1 to \(nameLength.upperBound) characters and no control characters")
        }
    }

    private static func full(_ limit: Int) -> ChatError {
        ChatError("group_full", "a group has at most \(limit) members", httpStatus: 409)
    }

    private static func require(_ role: GroupRole, _ session: Session, _ members: ConversationMembers, _ action: String) throws(ChatError) {
        guard members.exists else { throw ChatError.notFound("group") }
        guard let me = members.members[session.userID], me.untilSequence == nil else { throw ChatError.forbidden("you are not a member of this group") }
        guard me.role >= role else { throw ChatError.forbidden("only a group \(role.rawValue) can \(action)") }
    }

    private static func memberRow(_ conversation: ConversationID, _ userID: String, _ member: ConversationMembers.Member) -> StorageWrite {
        let value = JSONWriter.object(capacity: 64) { writer in
            writer.field("role", member.role.rawValue)
            writer.field("from", member.fromSequence)
            if let until = member.untilSequence { writer.field("until", until) }
        }
        return .put(StorageLayout.key(StorageLayout.groupMembers, conversation.rawValue, Array(userID.utf8)), value: value)
    }

    private static func groupRecord(_ conversation: ConversationID, name: String, deleted: Bool) -> StorageWrite {
        let value = JSONWriter.object(capacity: 96) { writer in
            writer.field("name", name)
            writer.field("deleted", deleted)
        }
        return .put(StorageLayout.key(StorageLayout.groups, conversation.rawValue), value: value)
    }

    private static func event(_ kind: String, by session: Session, _ fields: (inout JSONWriter) -> Void) -> String {
        let text = JSONWriter.object(capacity: 128) { writer in
            writer.field("event", kind)
            writer.field("by", session.userID)
            writer.field("by_username", session.username)
            fields(&writer)
        }
        return String(decoding: text, as: UTF8.self)
    }

    private static func users(_ writer: inout JSONWriter, _ key: String, _ users: [(String, String, GroupRole)]) {
        writer.beginArray(key)
        for (id, username, role) in users {
            writer.beginObject()
            writer.field("id", id)
            writer.field("username", username)
            writer.field("role", role.rawValue)
            writer.endObject()
        }
        writer.endArray()
    }
}
