// Presence, last seen, typing indicators and receipts.
import Foundation
import ParleyClient
import ParleyCore
import ParleyJSON
import ParleyServer
import PluginHost
import Synchronization
import Testing

@Suite("Presence and receipts", .serialized, .timeLimit(.minutes(3)))
struct PresenceTests {
    private func presence(_ session: ChatSession, of usernames: [String]) async throws -> [String: JSONValue] {
        let reply = try await session.request("presence") { writer in
            writer.beginArray("users")
            for name in usernames { writer.element(name) }
            writer.endArray()
        }
        var result: [String: JSONValue] = [:]
        for entry in reply["users"]?.arrayValue ?? [] { result[entry["username"]?.stringValue ?? ""] = entry }
        return result
    }

    private func presenceEvents(_ inbox: Inbox) async -> [JSONValue] {
        await inbox.others.compactMap { event in
            if case .other(let frame) = event, frame["type"]?.stringValue == "presence" { return frame }
            return nil
        }
    }

    @Test func contactsSeeOnlineOfflineAndLastSeenWithoutFlappingAndOthersSeeNothing() async throws {
        let folder = scratchFolder()
        var server = try await TestServer.start(["presence.grace_seconds=3"], dataFolder: folder)
        let alice = try await server.user("alice")
        let bob = try await server.user("bob")
        let carol = try await server.user("carol")
        let dave = try await server.user("dave")
        let aliceSession = try await server.connect(alice[0])
        let aliceInbox = Inbox(aliceSession)
        // A conversation with a message makes alice and bob contacts.
        _ = try await aliceSession.send(conversation: try await aliceSession.open(with: "bob"), body: "hi")
        let daveSession = try await server.connect(dave[0])
        let daveInbox = Inbox(daveSession)
        // Dave shares only a group with bob: he may ask, but is not sent bob's changes.
        _ = try await daveSession.request("group_create") { writer in
            writer.field("name", "club")
            writer.beginArray("members"); writer.element("bob"); writer.endArray()
        }

        var bobSession = try await server.connect(bob[0])
        let onlineBy = ContinuousClock.now + .seconds(30)
        while await presenceEvents(aliceInbox).isEmpty, ContinuousClock.now < onlineBy {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(await presenceEvents(aliceInbox).last?["online"]?.boolValue == true, "alice is told bob came online")
        #expect(try await presence(aliceSession, of: ["bob"])["bob"]?["status"]?.stringValue == "online")

        // A quick reconnect within the grace period is not announced.
        await bobSession.close()
        bobSession = try await server.connect(bob[0])
        try await Task.sleep(for: .milliseconds(3_500))
        #expect(await presenceEvents(aliceInbox).count == 1, "no offline/online flap on a quick reconnect")

        await bobSession.close()
        // Offline comes after the grace period; a loaded machine may take longer still.
        let deadline = ContinuousClock.now + .seconds(30)
        while await presenceEvents(aliceInbox).last?["online"]?.boolValue != false, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        let offline = await presenceEvents(aliceInbox).last
        #expect(offline?["online"]?.boolValue == false && offline?["last_seen"]?.int64Value != nil, "offline after the grace period, with last seen")
        #expect(await presenceEvents(daveInbox).isEmpty, "group members are not sent presence changes")
        let lastSeen = try await presence(aliceSession, of: ["bob"])["bob"]
        #expect(lastSeen?["status"]?.stringValue == "offline" && lastSeen?["last_seen"]?.int64Value == offline?["last_seen"]?.int64Value)
        let club = try await daveSession.request("sync")["conversations"]?.arrayValue?.first?["conversation"]?.stringValue ?? ""
        let group = try await daveSession.request("presence") { $0.field("conversation", club) }
        #expect(group["users"]?.arrayValue?.first?["status"]?.stringValue == "offline", "group members fetch presence on demand")

        // Privacy: carol shares nothing with alice; she gets the answer for an unknown user.
        let carolSession = try await server.connect(carol[0])
        let carolView = try await presence(carolSession, of: ["alice", "nobody-at-all"])
        #expect(carolView["alice"]?["status"]?.stringValue == "unknown")
        #expect(carolView["alice"]?["user"] == nil)
        #expect(carolView["alice"]?["status"] == carolView["nobody-at-all"]?["status"])

        // Last seen survives a restart.
        for session in [aliceSession, daveSession, carolSession] { await session.close() }
        await server.stop()
        server = try await TestServer.start(["presence.grace_seconds=3"], dataFolder: folder)
        let again = try await server.connect(try await server.api.logIn(username: "alice", password: "password of alice", deviceName: "phone"))
        #expect(try await presence(again, of: ["bob"])["bob"]?["last_seen"]?.int64Value == offline?["last_seen"]?.int64Value)
        await again.close()
        await server.stop()
    }

    /// Alice and bob, made contacts by alice's message to bob; no connection left open.
    private func contacts(on server: TestServer) async throws -> (alice: [LoginInfo], bob: [LoginInfo]) {
        let alice = try await server.user("alice")
        let bob = try await server.user("bob")
        let session = try await server.connect(alice[0])
        _ = try await session.send(conversation: try await session.open(with: "bob"), body: "hi")
        await session.close()
        return (alice, bob)
    }

    /// The protocol says: connect, ask for presence once, then follow the events. So a user
    /// must watch their contacts from the moment the welcome arrives. Alice's contacts take a
    /// while to read (20,000 more direct conversations, written straight into storage); bob
    /// comes online the moment her welcome arrives, while they would still be read.
    @Test func aContactComingOnlineRightAfterTheWelcomeIsAnnounced() async throws {
        let server = try await TestServer.start(["presence.grace_seconds=0"])
        let (alice, bob) = try await contacts(on: server)

        let storage = server.node.runtime.storage
        let existing = try await storage.scan(table: StorageLayout.userConversations, partition: Array(alice[0].userID.utf8), StorageScan(limit: 1))
        let summary = try #require(existing.first).value
        for start in stride(from: 0, to: 20_000, by: 2_000) {
            let rows = (start..<start + 2_000).map { index in
                let other = "u_contact\(index)"
                let conversation = ConversationID.direct(alice[0].userID, other).rawValue
                return StorageWrite.put(StorageLayout.key(StorageLayout.userConversations, alice[0].userID, Array(conversation.utf8)), value: summary)
            }
            _ = try await storage.apply(rows)
        }
        // With no grace period alice is offline at once (and bob has not connected yet).
        let tracker = server.node.chat.presence
        let offlineBy = ContinuousClock.now + .seconds(10)
        while tracker.isOnline(alice[0].userID), ContinuousClock.now < offlineBy {
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(!tracker.isOnline(alice[0].userID) && !tracker.isOnline(bob[0].userID))

        let aliceSession = try await server.connect(alice[0])
        let aliceInbox = Inbox(aliceSession)
        let bobSession = try await server.connect(bob[0])
        let deadline = ContinuousClock.now + .seconds(5)
        while await presenceEvents(aliceInbox).isEmpty, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(await presenceEvents(aliceInbox).first?["username"]?.stringValue == "bob", "alice is told bob came online")
        await bobSession.close()
        await aliceSession.close()
        await server.stop()
    }

    /// The events a tracker sent: (recipient user id, subject username, online).
    private final class SentEvents: Sendable {
        private let events = Mutex<[(String, String, Bool)]>([])
        func add(_ frame: [UInt8], to user: String) {
            guard let event = try? JSONParser.parse(frame) else { return }
            events.withLock { $0.append((user, event["username"]?.stringValue ?? "", event["online"]?.boolValue ?? false)) }
        }
        func contains(_ user: String, told username: String, online: Bool) -> Bool {
            events.withLock { $0.contains { $0 == (user, username, online) } }
        }
    }

    /// A tracker of its own on the server's storage, with no grace period.
    private func tracker(on server: TestServer) -> (PresenceTracker, SentEvents) {
        let events = SentEvents()
        let tracker = PresenceTracker(storage: server.node.runtime.storage, grace: .zero, logger: TestServer.logger) { user, frame in
            events.add(frame, to: user)
        }
        return (tracker, events)
    }

    /// Alice's laptop begins to sign in while her phone is online, so her contacts are not
    /// read; the phone closes and, with no grace period, she goes offline before the laptop
    /// registers. The laptop must not come online watching nothing: it reads her contacts
    /// first, and then bob's arrival reaches her.
    @Test func aSignInThatOutlivesTheLastConnectionReadsTheContactsBeforeRegistering() async throws {
        let server = try await TestServer.start()
        let (alice, bob) = try await contacts(on: server)
        let storage = server.node.runtime.storage
        let (tracker, events) = tracker(on: server)
        let aliceID = alice[0].userID, bobID = bob[0].userID

        let phone = try await storage.run { tracker.beginSignInHere(aliceID) }
        #expect(tracker.connected(phone) == .cameOnline)
        var laptop = try await storage.run { tracker.beginSignInHere(aliceID) }
        tracker.disconnected(aliceID, username: "alice")
        let offlineBy = ContinuousClock.now + .seconds(10)
        while tracker.isOnline(aliceID), ContinuousClock.now < offlineBy {
            try await Task.sleep(for: .milliseconds(5))
        }
        try #require(!tracker.isOnline(aliceID))
        #expect(tracker.connected(laptop) == .needsContacts, "her contacts were never read: nothing is registered")
        #expect(!tracker.isOnline(aliceID))
        laptop = try await storage.run { [laptop] in
            var signIn = laptop
            tracker.readContactsHere(&signIn)
            return signIn
        }
        #expect(tracker.connected(laptop) == .cameOnline)

        let bobSignIn = try await storage.run { tracker.beginSignInHere(bobID) }
        #expect(tracker.connected(bobSignIn) == .cameOnline)
        tracker.cameOnline(bobID, username: "bob")
        #expect(events.contains(aliceID, told: "bob", online: true), "alice is told bob came online")
        await server.stop()
    }

    /// Carol's first message to alice lands while alice signs in, after her contacts were
    /// read: the sign-in adds carol when it registers, so carol's arrival reaches alice.
    @Test func aContactMadeWhileSigningInIsWatched() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice")
        let carol = try await server.user("carol")
        let storage = server.node.runtime.storage
        let (tracker, events) = tracker(on: server)
        let aliceID = alice[0].userID, carolID = carol[0].userID

        let signIn = try await storage.run { tracker.beginSignInHere(aliceID) }
        tracker.contactsMet(carolID, aliceID)
        #expect(tracker.connected(signIn) == .cameOnline)
        let carolSignIn = try await storage.run { tracker.beginSignInHere(carolID) }
        #expect(tracker.connected(carolSignIn) == .cameOnline)
        tracker.cameOnline(carolID, username: "carol")
        #expect(events.contains(aliceID, told: "carol", online: true), "alice is told carol came online")

        // A sign-in that registers nothing keeps nothing it met.
        let refused = try await storage.run { tracker.beginSignInHere(carolID) }
        tracker.abandon(refused)
        #expect(tracker.connected(try await storage.run { tracker.beginSignInHere(carolID) }) == .joined)
        await server.stop()
    }

    @Test func readReceiptsMoveUnreadCountsOnTheReadersOtherDevicesAndReachThePeer() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice", devices: ["phone", "laptop"])
        let bob = try await server.user("bob")
        let bobSession = try await server.connect(bob[0])
        let bobInbox = Inbox(bobSession)
        let phone = try await server.connect(alice[0])
        let laptop = try await server.connect(alice[1])
        let laptopInbox = Inbox(laptop)
        let conversation = try await bobSession.open(with: "alice")
        for index in 1...5 { _ = try await bobSession.send(conversation: conversation, body: "m\(index)") }
        #expect(try await laptop.request("sync")["conversations"]?.arrayValue?.first?["unread"]?.int64Value == 5)

        // Typing is relayed, never stored.
        _ = try await phone.request("typing") { $0.field("conversation", conversation); $0.field("typing", true) }
        try await Task.sleep(for: .milliseconds(200))
        let typing = await bobInbox.others.compactMap { event -> JSONValue? in
            if case .other(let frame) = event, frame["type"]?.stringValue == "typing" { return frame }
            return nil
        }
        #expect(typing.first?["typing"]?.boolValue == true && typing.first?["expires_in_ms"]?.int64Value == 8000)
        #expect(try await bobSession.fetch(conversation: conversation, after: 0).messages.count == 5, "typing is not stored")

        let ack = try await phone.request("receipt") { writer in
            writer.field("conversation", conversation)
            writer.field("kind", "read")
            writer.field("seq", 3)
        }
        #expect(ack["seq"]?.int64Value == 3)
        try await Task.sleep(for: .milliseconds(200))
        let onLaptop = await laptopInbox.others.contains { event in
            if case .other(let frame) = event { return frame["type"]?.stringValue == "receipt" && frame["seq"]?.int64Value == 3 }
            return false
        }
        #expect(onLaptop, "the reader's other device is told")
        #expect(try await laptop.request("sync")["conversations"]?.arrayValue?.first?["unread"]?.int64Value == 2, "unread moved on the other device")
        let toBob = await bobInbox.others.contains { event in
            if case .other(let frame) = event { return frame["type"]?.stringValue == "receipt" && frame["user"]?.stringValue == alice[0].userID }
            return false
        }
        #expect(toBob, "the other party is notified")
        _ = try await phone.request("receipt") { writer in
            writer.field("conversation", conversation)
            writer.field("kind", "read")
            writer.field("seq", 1)
        }
        do {
            _ = try await phone.request("receipt") { writer in
                writer.field("conversation", conversation)
                writer.field("kind", "read")
                writer.field("seq", 6)
            }
            Issue.record("a read receipt beyond the last message (5) was accepted")
        } catch let error as ParleyError {
            #expect(error.code == "invalid_request" && error.message.contains("(5)"))
        }
        let receipts = try await bobSession.request("receipts") { $0.field("conversation", conversation) }
        #expect(receipts["members"]?.arrayValue?.first { $0["user"]?.stringValue == alice[0].userID }?["read_seq"]?.int64Value == 3, "a read cursor never moves back")
        for session in [bobSession, phone, laptop] { await session.close() }
        await server.stop()
    }
}
