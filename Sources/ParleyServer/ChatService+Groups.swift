// Request frames for groups, presence, typing indicators and receipts.
import NIOCore
import ParleyCore
import ParleyJSON

extension ChatService {
    /// Handles the request types of this file; false for a type it does not know.
    func dispatchGroupsAndPresence(_ type: String, _ fields: [String: JSONValue], id: String?, session: Session, _ connection: ChatConnection) throws(ChatError) -> Bool {
        switch type {
        case "group_create":
            let name = try Self.string(fields, "name")
            let members = try Self.strings(fields, "members")
            let clientID = try Self.optionalString(fields, "client_id")
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.create(session, name: name, members: members, clientID: clientID) }
        case "group_add":
            let conversation = try Self.conversation(fields)
            let members = try Self.strings(fields, "members")
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.add(session, conversation, members: members) }
        case "group_remove":
            let conversation = try Self.conversation(fields)
            let member = try Self.string(fields, "member")
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.remove(session, conversation, member: member) }
        case "group_leave":
            let conversation = try Self.conversation(fields)
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.leave(session, conversation) }
        case "group_rename":
            let conversation = try Self.conversation(fields)
            let name = try Self.string(fields, "name")
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.rename(session, conversation, name: name) }
        case "group_set_role":
            let conversation = try Self.conversation(fields)
            let member = try Self.string(fields, "member")
            guard let role = GroupRole(rawValue: try Self.string(fields, "role")) else { throw .invalid("role must be member, admin or owner") }
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.setRole(session, conversation, member: member, role: role) }
        case "group_delete":
            let conversation = try Self.conversation(fields)
            groupChange(connection, id: id) { () throws(ChatError) in try await self.groups.delete(session, conversation) }
        case "group_info":
            let conversation = try Self.conversation(fields)
            guard conversation.kind == .group else { throw .invalid("\(conversation) is not a group") }
            run(connection, id: id) { () throws(ChatError) in
                let members = try await self.currentMembers(of: conversation, for: session)
                var profiles: [(UserProfile, GroupRole)] = []
                for member in members.current {
                    if let profile = try await self.accounts.profile(id: member) { profiles.append((profile, members.members[member]!.role)) }
                }
                return JSONWriter.frame("group", id: id) { writer in
                    writer.field("conversation", conversation.rawValue)
                    writer.field("name", members.name)
                    writer.beginArray("members")
                    for (profile, role) in profiles {
                        writer.beginObject()
                        writer.field("id", profile.id)
                        writer.field("username", profile.username)
                        writer.field("display_name", profile.displayName)
                        writer.field("role", role.rawValue)
                        writer.endObject()
                    }
                    writer.endArray()
                }
            }
        case "presence":
            try presenceQuery(fields, id: id, session: session, connection)
        case "typing":
            let conversation = try Self.conversation(fields)
            guard let typing = fields["typing"]?.boolValue else { throw .invalid("'typing' must be true or false") }
            run(connection, id: id) { () throws(ChatError) in
                let recipients = try await self.currentMembers(of: conversation, for: session).current
                let event = FramePayload.bytes(JSONWriter.frame("typing", id: nil) { writer in
                    writer.field("conversation", conversation.rawValue)
                    writer.field("user", session.userID)
                    writer.field("username", session.username)
                    writer.field("typing", typing)
                    writer.field("expires_in_ms", Self.typingExpiry)
                })
                self.fanOut(event, to: recipients, except: connection)
                return JSONWriter.frame("ok", id: id)
            }
        case "receipt":
            let conversation = try Self.conversation(fields)
            guard let kind = ReceiptKind(rawValue: try Self.string(fields, "kind")) else { throw .invalid("kind must be delivered or read") }
            guard let sequence = try Self.optionalInteger(fields, "seq") else { throw .invalid("missing 'seq'") }
            run(connection, id: id) { () throws(ChatError) in
                let members = try await self.readableMembers(of: conversation, for: session)
                // A cursor past what the user can have received would mark later messages
                // read before they arrive; the cursor never moves back, so it is refused.
                let readable = min(try await self.messages.lastSequence(of: conversation, expected: sequence), members.readableRange(for: session.userID)?.upperBound ?? 0)
                guard sequence <= readable else {
                    throw .invalid("'seq' \(sequence) is beyond the last message you can have received in \(conversation) (\(readable))")
                }
                let (cursor, moved) = try await self.receipts.advance(conversation, userID: session.userID, kind: kind, to: sequence)
                let event = FramePayload.bytes(JSONWriter.frame("receipt", id: nil) { writer in
                    writer.field("conversation", conversation.rawValue)
                    writer.field("user", session.userID)
                    writer.field("username", session.username)
                    writer.field("kind", kind.rawValue)
                    writer.field("seq", cursor)
                })
                // The reader's other devices always learn it (unread counts stay in step);
                // the other side of a direct conversation is told; group members ask with `receipts`.
                var notify = moved ? [session.userID] : []
                if moved, conversation.kind == .direct { notify += members.current.filter { $0 != session.userID } }
                self.fanOut(event, to: notify, except: connection)
                return JSONWriter.frame("receipt_ack", id: id) { writer in
                    writer.field("conversation", conversation.rawValue)
                    writer.field("kind", kind.rawValue)
                    writer.field("seq", cursor)
                }
            }
        case "receipts":
            let conversation = try Self.conversation(fields)
            run(connection, id: id) { () throws(ChatError) in
                let members = try await self.currentMembers(of: conversation, for: session)
                let cursors = try await self.receipts.all(conversation)
                return JSONWriter.frame("receipts", id: id) { writer in
                    writer.field("conversation", conversation.rawValue)
                    writer.beginArray("members")
                    for user in members.current {
                        writer.beginObject()
                        writer.field("user", user)
                        writer.field("delivered_seq", cursors[user]?.delivered ?? 0)
                        writer.field("read_seq", cursors[user]?.read ?? 0)
                        writer.endObject()
                    }
                    writer.endArray()
                }
            }
        default:
            return false
        }
        return true
    }

    /// Runs a group change, replies with its sequence and delivers the event message.
    private func groupChange(_ connection: ChatConnection, id: String?, _ change: @escaping @Sendable () async throws(ChatError) -> (SendAck, StoredMessage?)) {
        run(connection, id: id) { () throws(ChatError) in
            let (ack, stored) = try await change()
            if let stored { self.deliver(stored, except: connection) }
            return JSONWriter.frame("group_updated", id: id) { writer in
                writer.field("conversation", ack.conversation)
                writer.field("seq", ack.sequence)
                writer.field("ts", ack.timestamp)
                if ack.duplicate { writer.field("duplicate", true) }
            }
        }
    }

    /// The members of a conversation the user belongs to now; anyone else is refused.
    func currentMembers(of conversation: ConversationID, for session: Session) async throws(ChatError) -> ConversationMembers {
        let members = try await messages.members(of: conversation)
        guard members.exists else { throw .notFound("conversation \(conversation)") }
        guard members.isCurrent(session.userID) else { throw .forbidden("you are not a member of \(conversation)") }
        return members
    }

    /// The members of a conversation the user belongs or belonged to.
    private func readableMembers(of conversation: ConversationID, for session: Session) async throws(ChatError) -> ConversationMembers {
        let members = try await messages.members(of: conversation)
        guard members.readableRange(for: session.userID) != nil else {
            throw members.exists ? .forbidden("you are not a member of \(conversation)") : .notFound("conversation \(conversation)")
        }
        return members
    }

    /// `presence` with `users` (usernames) or `conversation` (a group: all its members).
    /// Only people who share a conversation with the asker are shown; anyone else is
    /// answered exactly like an unknown username.
    private func presenceQuery(_ fields: [String: JSONValue], id: String?, session: Session, _ connection: ChatConnection) throws(ChatError) {
        let usernames = fields["users"] == nil ? nil : try Self.strings(fields, "users")
        let group = fields["conversation"] == nil ? nil : try Self.conversation(fields)
        guard (usernames == nil) != (group == nil) else { throw .invalid("give either 'users' or 'conversation'") }
        run(connection, id: id) { () throws(ChatError) in
            var entries: [(String, UserProfile?)] = []
            if let group {
                let members = try await self.currentMembers(of: group, for: session)
                for member in members.current where member != session.userID {
                    if let profile = try await self.accounts.profile(id: member) { entries.append((profile.username, profile)) }
                }
            } else {
                for username in usernames ?? [] {
                    var visible: UserProfile?
                    if let profile = try await self.accounts.lookUp(username: username), try await self.sharesConversation(session.userID, profile.id) {
                        visible = profile
                    }
                    entries.append((username, visible))
                }
            }
            var lastSeen: [String: Int64] = [:]
            for (_, profile) in entries {
                if let profile, !self.presence.isOnline(profile.id), let seen = try await self.presence.lastSeen(profile.id) { lastSeen[profile.id] = seen }
            }
            return JSONWriter.frame("presence_result", id: id) { writer in
                writer.beginArray("users")
                for (username, profile) in entries {
                    writer.beginObject()
                    writer.field("username", username)
                    if let profile {
                        let online = self.presence.isOnline(profile.id)
                        writer.field("user", profile.id)
                        writer.field("status", online ? "online" : "offline")
                        if !online, let seen = lastSeen[profile.id] { writer.field("last_seen", seen) }
                    } else {
                        writer.field("status", "unknown")
                    }
                    writer.endObject()
                }
                writer.endArray()
            }
        }
    }

    /// Whether two users share a direct conversation or a group.
    private func sharesConversation(_ first: String, _ second: String) async throws(ChatError) -> Bool {
        if first == second { return true }
        for summary in try await messages.conversations(of: first, heads: false) {
            guard let conversation = ConversationID(summary.conversation) else { continue }
            if conversation.kind == .direct, summary.lastSequence > 0, conversation.includes(second) { return true }
            if conversation.kind == .group {
                let members = try await messages.members(of: conversation)
                if members.isCurrent(first), members.isCurrent(second) { return true }
            }
        }
        return false
    }

    static func strings(_ fields: [String: JSONValue], _ key: String) throws(ChatError) -> [String] {
        guard let array = fields[key]?.arrayValue else { throw .invalid("'\(key)' must be an array of strings") }
        let strings = array.compactMap(\.stringValue)
        guard strings.count == array.count, strings.count <= 200 else { throw .invalid("'\(key)' must be an array of at most 200 strings") }
        return strings
    }
}
