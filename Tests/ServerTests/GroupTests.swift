// Groups: the 100-member limit, fan-out to every device once, roles, and history
// bounded by membership.
import Foundation
import ParleyClient
import ParleyCore
import ParleyJSON
import ParleyServer
import PluginHost
import Synchronization
import Testing

@Suite("Groups", .serialized, .timeLimit(.minutes(3)))
struct GroupTests {
    private func create(_ session: ChatSession, _ name: String, members: [String]) async throws -> String {
        let reply = try await session.request("group_create") { writer in
            writer.field("name", name)
            writer.beginArray("members")
            for member in members { writer.element(member) }
            writer.endArray()
        }
        return reply["conversation"]!.stringValue!
    }

    private func change(_ session: ChatSession, _ type: String, _ conversation: String, _ fields: @escaping (inout JSONWriter) -> Void = { _ in }) async throws -> JSONValue {
        try await session.request(type) { writer in
            writer.field("conversation", conversation)
            fields(&writer)
        }
    }

    private func code(_ body: () async throws -> Void) async -> String {
        do {
            try await body()
            return "ok"
        } catch let error as ParleyError {
            return error.code
        } catch {
            return "\(error)"
        }
    }

    @Test func aHundredMembersWithTwoDevicesEachGetOneMessageExactlyOnceAndThe101stIsRefused() async throws {
        let server = try await TestServer.start(["chat.rate_limit_per_second=100000"])
        let names = (0..<100).map { "member\($0)" }
        // Each account costs Argon2id hashes on two server threads: a few requests at a time
        // keep every request well inside its timeout, however loaded the machine is.
        let logins = try await withThrowingTaskGroup(of: (Int, [LoginInfo]).self) { group in
            var all = [[LoginInfo]](repeating: [], count: names.count)
            for (index, name) in names.enumerated() {
                if index >= 4, let (done, logins) = try await group.next() { all[done] = logins }
                group.addTask { (index, try await server.user(name, devices: ["phone", "laptop"])) }
            }
            for try await (index, logins) in group { all[index] = logins }
            return all
        }
        _ = try await server.user("one-too-many")
        var sessions: [ChatSession] = []
        for login in logins.flatMap({ $0 }) { sessions.append(try await server.connect(login)) }
        let inboxes = sessions.map { Inbox($0) }
        let owner = sessions[0]
        let conversation = try await create(owner, "everyone", members: Array(names.dropFirst()))
        let info = try await change(owner, "group_info", conversation)
        #expect(info["members"]?.arrayValue?.count == 100)

        let refused = await code { _ = try await self.change(owner, "group_add", conversation) { $0.beginArray("members"); $0.element("one-too-many"); $0.endArray() } }
        #expect(refused == "group_full", "the 101st member is refused")
        #expect(try await change(owner, "group_info", conversation)["members"]?.arrayValue?.count == 100, "and nothing changed")

        let ack = try await owner.send(conversation: conversation, body: "hello, all of you")
        let sequence = ack["seq"]!.int64Value!
        for (index, inbox) in inboxes.enumerated() {
            let received = await inbox.waitForMessages(index == 0 ? 0 : 2, seconds: 10)
            let copies = received.filter { $0["seq"]?.int64Value == sequence }
            #expect(copies.count == (index == 0 ? 0 : 1), "device \(index) got the message \(copies.count) times")
        }
        try await Task.sleep(for: .milliseconds(300))
        for (index, inbox) in inboxes.enumerated() where index > 0 {
            #expect(await inbox.messages.filter { $0["seq"]?.int64Value == sequence }.count == 1, "no duplicate on device \(index)")
        }
        for session in sessions { await session.close() }
        await server.stop()
    }

    @Test func theLimitCanBeLowered() async throws {
        let server = try await TestServer.start(["groups.max_members=3"])
        let alice = try await server.user("alice")
        for name in ["bob", "carol", "dave"] { _ = try await server.user(name) }
        let session = try await server.connect(alice[0])
        #expect(await code { _ = try await self.create(session, "too big", members: ["bob", "carol", "dave"]) } == "group_full")
        let conversation = try await create(session, "small", members: ["bob", "carol"])
        #expect(await code { _ = try await self.change(session, "group_add", conversation) { $0.beginArray("members"); $0.element("dave"); $0.endArray() } } == "group_full")
        await session.close()
        await server.stop()
    }

    /// With a client_id, group_create is idempotent: resends (one racing the first request,
    /// one after it, one after the group was deleted) answer with the first creation and
    /// create nothing; another client id, or another user's same id, is another group.
    @Test func groupCreateWithAClientIDIsIdempotent() async throws {
        let server = try await TestServer.start()
        let owner = try await server.connect(try await server.user("olivia")[0])
        let other = try await server.connect(try await server.user("oscar")[0])
        let bob = try await server.connect(try await server.user("bob")[0])
        let bobInbox = Inbox(bob)
        func create(_ session: ChatSession, _ clientID: String) async throws -> JSONValue {
            try await session.request("group_create") { writer in
                writer.field("name", "lunch")
                writer.field("client_id", clientID)
                writer.beginArray("members")
                writer.element("bob")
                writer.endArray()
            }
        }
        // Four at once: the later ones find the group being created, or created.
        let racing = try await withThrowingTaskGroup(of: JSONValue.self) { group in
            for _ in 0..<4 { group.addTask { try await create(owner, "c1") } }
            return try await group.reduce(into: [JSONValue]()) { $0.append($1) }
        }
        let first = try #require(racing.first { $0["duplicate"] == nil }, "one of the racing requests created the group")
        let again = try await create(owner, "c1")
        let conversation = try #require(first["conversation"]?.stringValue)
        for reply in racing + [again] {
            #expect(reply["conversation"]?.stringValue == conversation)
            #expect(reply["seq"] == first["seq"] && reply["ts"] == first["ts"])
        }
        #expect(racing.filter { $0["duplicate"]?.boolValue == true }.count == 3, "the other three were answered as duplicates")
        #expect(again["duplicate"]?.boolValue == true)
        try await Task.sleep(for: .milliseconds(300))
        #expect(await bobInbox.messages.filter { $0["conversation"]?.stringValue == conversation }.count == 1, "the member was told of one creation")
        let history = try await owner.fetch(conversation: conversation, after: 0)
        #expect(history.messages.count == 1, "one created event is stored")
        let message = try await owner.request("send") { writer in
            writer.field("conversation", conversation)
            writer.field("client_id", "c1")
            writer.field("content_type", "text/plain")
            writer.field("body", "first message")
        }
        #expect(message["duplicate"]?.boolValue == false && message["seq"]?.int64Value == 2, "a send may reuse the group_create's client_id")

        let otherID = try await create(owner, "c2")["conversation"]?.stringValue
        let otherUsers = try await create(other, "c1")["conversation"]?.stringValue
        #expect(Set([conversation, otherID, otherUsers]).count == 3)

        _ = try await change(owner, "group_delete", conversation)
        let afterDeletion = try await create(owner, "c1")
        #expect(afterDeletion["conversation"]?.stringValue == conversation && afterDeletion["duplicate"]?.boolValue == true, "a resend does not bring a deleted group back")
        #expect(await code { _ = try await create(owner, "") } == "invalid_request")
        for session in [owner, other, bob] { await session.close() }
        await server.stop()
    }

    @Test func rolesMembershipEventsAndHistoryFollowMembership() async throws {
        let server = try await TestServer.start()
        let owner = try await server.connect(try await server.user("olivia")[0])
        let admin = try await server.connect(try await server.user("adam")[0])
        let member = try await server.connect(try await server.user("mia")[0])
        let outsider = try await server.connect(try await server.user("oscar")[0])
        _ = try await server.user("nina")
        let memberInbox = Inbox(member)
        let conversation = try await create(owner, "team", members: ["adam", "mia"])
        _ = try await change(owner, "group_set_role", conversation) { $0.field("member", "adam"); $0.field("role", "admin") }

        // Outsiders can do nothing and learn nothing.
        #expect(await code { _ = try await outsider.send(conversation: conversation, body: "let me in") } == "forbidden")
        #expect(await code { _ = try await outsider.fetch(conversation: conversation, after: 0) } == "forbidden")
        #expect(await code { _ = try await self.change(outsider, "group_info", conversation) } == "forbidden")
        #expect(await code { _ = try await outsider.request("presence") { $0.field("conversation", conversation) } } == "forbidden")
        #expect(await code { _ = try await self.change(outsider, "receipts", conversation) } == "forbidden")
        #expect(await code { _ = try await self.change(outsider, "group_leave", conversation) } == "forbidden")
        #expect(await code { _ = try await outsider.send(conversation: "g:gr_doesnotexist", body: "x") } == "not_found")

        // Members cannot manage; admins can; the owner's rights are the owner's.
        #expect(await code { _ = try await self.change(member, "group_add", conversation) { $0.beginArray("members"); $0.element("nina"); $0.endArray() } } == "forbidden")
        #expect(await code { _ = try await self.change(member, "group_rename", conversation) { $0.field("name", "mine") } } == "forbidden")
        #expect(await code { _ = try await self.change(admin, "group_remove", conversation) { $0.field("member", "olivia") } } == "forbidden")
        #expect(await code { _ = try await self.change(admin, "group_set_role", conversation) { $0.field("member", "mia"); $0.field("role", "admin") } } == "forbidden")
        #expect(await code { _ = try await self.change(admin, "group_delete", conversation) } == "forbidden")
        #expect(await code { _ = try await self.change(owner, "group_leave", conversation) } == "owner_must_hand_over")

        let before = try await owner.send(conversation: conversation, body: "before nina")
        _ = try await change(admin, "group_add", conversation) { $0.beginArray("members"); $0.element("nina"); $0.endArray() }
        let nina = try await server.connect(try await server.api.logIn(username: "nina", password: "password of nina", deviceName: "phone"))
        let ninaView = try await nina.fetch(conversation: conversation, after: 0)
        #expect(!ninaView.messages.contains { $0["seq"] == before["seq"] }, "a new member does not see history from before joining")
        #expect(ninaView.messages.first?["body"]?.stringValue?.contains("members_added") == true, "their history starts with their own joining")

        _ = try await change(admin, "group_remove", conversation) { $0.field("member", "mia") }
        let after = try await owner.send(conversation: conversation, body: "after mia left")
        let miaView = try await member.fetch(conversation: conversation, after: 0)
        #expect(miaView.messages.contains { $0["seq"] == before["seq"] }, "a removed member keeps the history they saw")
        #expect(!miaView.messages.contains { $0["seq"] == after["seq"] }, "but cannot read what came after removal")
        #expect(await code { _ = try await member.send(conversation: conversation, body: "still here?") } == "forbidden")
        try await Task.sleep(for: .milliseconds(300))
        let miaLive = await memberInbox.messages.compactMap { $0["seq"]?.int64Value }
        #expect(!miaLive.contains(after["seq"]!.int64Value!), "a removed member receives nothing after removal")
        #expect(miaLive.contains { $0 > before["seq"]!.int64Value! }, "but is told of the removal itself")
        let lastReadable = miaView.messages.compactMap { $0["seq"]?.int64Value }.max()!
        for (seq, expected) in [(after["seq"]!.int64Value!, "invalid_request"), (lastReadable, "ok")] {
            let outcome = await code {
                _ = try await member.request("receipt") { writer in
                    writer.field("conversation", conversation)
                    writer.field("kind", "read")
                    writer.field("seq", seq)
                }
            }
            #expect(outcome == expected, "a removed member's read receipt for seq \(seq)")
        }

        // Every membership change is an event in the group's sequence, in order.
        let history = try await owner.fetch(conversation: conversation, after: 0)
        let events = history.messages.filter { $0["content_type"]?.stringValue == "application/vnd.parley.event+json" }
            .compactMap { try? JSONParser.parse(Array(($0["body"]?.stringValue ?? "").utf8))["event"]?.stringValue }
        #expect(events == ["created", "roles_changed", "members_added", "member_removed"])
        let sequences = history.messages.compactMap { $0["seq"]?.int64Value }
        #expect(sequences == Array(1...Int64(sequences.count)), "one gapless sequence for messages and events")

        // Handing over ownership lets the old owner leave.
        _ = try await change(owner, "group_set_role", conversation) { $0.field("member", "adam"); $0.field("role", "owner") }
        _ = try await change(owner, "group_leave", conversation)
        let remaining = try await change(admin, "group_info", conversation)["members"]?.arrayValue ?? []
        #expect(remaining.compactMap { $0["username"]?.stringValue }.sorted() == ["adam", "nina"])
        #expect(remaining.first { $0["username"]?.stringValue == "adam" }?["role"]?.stringValue == "owner")
        for session in [owner, admin, member, outsider, nina] { await session.close() }
        await server.stop()
    }

    /// A user's stored row for a conversation (`user_conversations`), as JSON.
    private func row(_ server: TestServer, _ user: LoginInfo, _ conversation: String) async throws -> JSONValue? {
        let value = try await server.node.runtime.storage.get(StorageLayout.key(StorageLayout.userConversations, user.userID, Array(conversation.utf8)))
        return try value.map { try JSONParser.parse($0) }
    }

    @Test func syncReadsTheGroupHeadAndMemberRowsAreWrittenOnlyOnMembershipChanges() async throws {
        let folder = scratchFolder()
        var server = try await TestServer.start(dataFolder: folder)
        let ann = try await server.user("ann")[0], ben = try await server.user("ben")[0], cat = try await server.user("cat")[0]
        var owner = try await server.connect(ann)
        let conversation = try await create(owner, "heads", members: ["ben", "cat"])
        for index in 1...5 { _ = try await owner.send(conversation: conversation, body: "message \(index)") }
        let benRow = try await row(server, ben, conversation)
        #expect(benRow?["last_seq"]?.int64Value == 1 && benRow?["live"] == .bool(true), "a member's row is written when they join, not with every message")

        func lastSequence(_ login: LoginInfo) async throws -> Int64? {
            let session = try await server.connect(login)
            defer { Task { await session.close() } }
            return try await session.sync(cursors: [:]).first { $0.conversation == conversation }?.lastSequence
        }
        #expect(try await lastSequence(ben) == 6, "sync gives the group's last sequence from its head")

        _ = try await change(owner, "group_remove", conversation) { $0.field("member", "cat") }
        _ = try await owner.send(conversation: conversation, body: "after cat")
        #expect(try await lastSequence(ben) == 8)
        #expect(try await lastSequence(cat) == 7, "a removed member's sync stops at their removal")
        #expect(try await row(server, cat, conversation)?["live"] == nil)

        // After a restart the first batch writes the current members' rows once more (a
        // data folder from before conversation heads has rows without `live`).
        await owner.close()
        await server.stop()
        server = try await TestServer.start(dataFolder: folder)
        owner = try await server.connect(ann)
        _ = try await owner.send(conversation: conversation, body: "after the restart")
        #expect(try await row(server, ben, conversation)?["last_seq"]?.int64Value == 9)
        _ = try await owner.send(conversation: conversation, body: "and one more")
        #expect(try await row(server, ben, conversation)?["last_seq"]?.int64Value == 9, "then only the head changes")
        #expect(try await lastSequence(ben) == 10)
        #expect(try await lastSequence(cat) == 7)

        _ = try await change(owner, "group_add", conversation) { $0.beginArray("members"); $0.element("cat"); $0.endArray() }
        _ = try await owner.send(conversation: conversation, body: "welcome back")
        #expect(try await lastSequence(cat) == 12, "a member added again follows the head again")
        await owner.close()
        await server.stop()
    }

    /// Several members send at once without waiting for acks, so the server's storage
    /// batches hold messages of several senders and each reaches the loop writers as runs of
    /// fan-outs. Every member gets every other member's message once, in sequence order, never
    /// its own, and each ack comes after the events of lower sequences it gets.
    @Test func concurrentSendersGetEveryOtherMessageOnceInOrderAndAcksAfterEarlierEvents() async throws {
        let server = try await TestServer.start(["chat.rate_limit_per_second=100000"])
        let names = ["ann", "ben", "cat", "dan"]
        var connected: [ChatSession] = []
        var ids: [String] = []
        for name in names {
            let login = try await server.user(name)[0]
            connected.append(try await server.connect(login))
            ids.append(login.userID)
        }
        let sessions = connected
        let conversation = try await create(sessions[0], "burst", members: ["ben", "cat", "dan"])
        let inboxes = sessions.map { Inbox($0) }
        let perSender = 40, senders = 3
        await withTaskGroup(of: Void.self) { group in
            for sender in 0..<senders {
                group.addTask {
                    for index in 0..<perSender {
                        let frame = JSONWriter.frame("send", id: "s\(sender)-\(index)") { writer in
                            writer.field("conversation", conversation)
                            writer.field("client_id", "c\(sender)-\(index)")
                            writer.field("content_type", "text/plain")
                            writer.field("body", "burst \(sender) \(index)")
                        }
                        try? await sessions[sender].sendRaw(String(decoding: frame, as: UTF8.self))
                    }
                }
            }
        }
        for (member, inbox) in inboxes.enumerated() {
            let ownSends = member < senders ? perSender : 0
            let expected = senders * perSender - ownSends
            let deadline = ContinuousClock.now + .seconds(20)
            var timeline: [ChatEvent] = []
            while ContinuousClock.now < deadline {
                timeline = await inbox.timeline
                let messages = timeline.filter { if case .message(let m) = $0 { m["body"]?.stringValue?.hasPrefix("burst") == true } else { false } }.count
                let acks = timeline.filter { if case .other(let frame) = $0 { frame["type"]?.stringValue == "ack" } else { false } }.count
                if messages >= expected && acks >= ownSends { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            var seen: [Int64] = []
            var acks = 0
            for event in timeline {
                switch event {
                case .message(let message) where message["body"]?.stringValue?.hasPrefix("burst") == true:
                    #expect(message["from"]?.stringValue != ids[member], "\(names[member]) got its own message")
                    if let sequence = message["seq"]?.int64Value { seen.append(sequence) }
                case .other(let frame) where frame["type"]?.stringValue == "ack":
                    acks += 1
                    let sequence = frame["seq"]?.int64Value ?? 0
                    // Everything of a lower sequence that this member receives came before the ack.
                    let received = Set(seen)
                    let owed = (1..<sequence).filter { !received.contains($0) }.count
                    #expect(owed <= ownSends, "\(names[member]): the ack of \(sequence) came before earlier events")
                default:
                    break
                }
            }
            #expect(seen.count == expected, "\(names[member]) got \(seen.count) of \(expected)")
            #expect(seen == seen.sorted() && Set(seen).count == seen.count, "\(names[member]): in order, each once")
            #expect(acks == ownSends)
        }
        for session in sessions { await session.close() }
        await server.stop()
    }

    /// A batch that removes a member and then stores more messages: the removed member's row
    /// stops at the removal, so their `sync` never reports messages they cannot fetch. Driven
    /// through a MessageLog of its own on the server's storage, with the members' load held
    /// until all three sends are queued, so they are one batch.
    @Test func aMemberRemovedInABatchKeepsTheSequenceOfTheRemoval() async throws {
        let server = try await TestServer.start()
        let (log, released) = heldLog(server, ConversationMembers(exists: true, name: "batch", members: [
            "u_owner": .init(role: .owner, fromSequence: 1), "u_cat": .init(role: .member, fromSequence: 1),
        ]))
        let conversation = ConversationID.group("gr_removalbatch")
        let owner = Session(userID: "u_owner", deviceID: "dv_owner", username: "owner")
        let acks = AckCollector()
        func submit(_ clientID: String, change: SendRequest.MembershipChange? = nil) {
            log.submit(SendRequest(sender: owner, conversation: conversation, clientID: clientID, contentType: "text/plain", body: clientID, membershipChange: change)) { result in
                acks.add(clientID, result)
            }
        }
        submit("before")
        submit("removal") { members, sequence throws(ChatError) in
            members.members["u_cat"]!.untilSequence = sequence
            return MembershipEvent(writes: [], body: "{}", alsoNotify: ["u_cat"])
        }
        submit("after")
        released.yield()
        let results = await acks.wait(for: 3)
        #expect(results["before"] == 1 && results["removal"] == 2 && results["after"] == 3, "one batch, in order: \(results)")
        let cat = try await log.conversations(of: "u_cat")
        #expect(cat.first?.lastSequence == 2, "the removed member's row stops at the removal: \(cat)")
        let ownerView = try await log.conversations(of: "u_owner")
        #expect(ownerView.first?.lastSequence == 3)
        await server.stop()
    }
}

extension GroupTests {
    /// Client ids are bytes, as storage keys them: two ids that differ only in Unicode
    /// normalization are two sends, in one batch too, while a byte-equal resend in the same
    /// batch is answered as a duplicate of the first.
    @Test func clientIDsThatDifferOnlyInNormalizationAreDistinctSendsInABatch() async throws {
        let server = try await TestServer.start()
        let (log, released) = heldLog(server, ConversationMembers(exists: true, name: "ids", members: ["u_owner": .init(role: .owner, fromSequence: 1)]))
        let owner = Session(userID: "u_owner", deviceID: "dv_owner", username: "owner")
        let answers = Mutex<[Int: SendAck]>([:])
        let clientIDs = ["caf\u{E9}", "cafe\u{301}", "caf\u{E9}"]
        for (index, clientID) in clientIDs.enumerated() {
            log.submit(SendRequest(sender: owner, conversation: .group("gr_normalization"), clientID: clientID, contentType: "text/plain", body: "m\(index)")) { result in
                if case .success((let ack, _)) = result { answers.withLock { $0[index] = ack } }
            }
        }
        released.yield()
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, answers.withLock({ $0.count }) < 3 { try await Task.sleep(for: .milliseconds(10)) }
        let acks = answers.withLock { $0 }
        #expect(acks[0]?.sequence == 1 && acks[0]?.duplicate == false, "\(acks)")
        #expect(acks[1]?.sequence == 2 && acks[1]?.duplicate == false, "decomposed is another id: \(acks)")
        #expect(acks[2]?.sequence == 1 && acks[2]?.duplicate == true, "byte-equal resend: \(acks)")
        #expect(Array(acks[1]?.clientID.utf8 ?? "".utf8) == Array("cafe\u{301}".utf8), "the ack names the id as sent")
        await server.stop()
    }
}

/// A MessageLog of its own on the server's storage whose members' load (answering `members`)
/// waits until the continuation yields: sends queued before that are one batch.
private func heldLog(_ server: TestServer, _ members: ConversationMembers) -> (MessageLog, AsyncStream<Void>.Continuation) {
    let log = MessageLog(storage: server.node.runtime.storage)
    let (release, released) = AsyncStream<Void>.makeStream()
    log.loadMembers { _ in
        for await _ in release { break }
        return members
    }
    return (log, released)
}

/// The sequences of acknowledged sends, by client id.
private final class AckCollector: Sendable {
    private let acks = Mutex<[String: Int64]>([:])

    func add(_ clientID: String, _ result: Result<(SendAck, StoredMessage?), ChatError>) {
        acks.withLock { $0[clientID] = (try? result.get().0.sequence) ?? -1 }
    }

    func wait(for count: Int) async -> [String: Int64] {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, acks.withLock({ $0.count }) < count {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return acks.withLock { $0 }
    }
}
