// 1:1 messaging through a real server: multi-device delivery, order, paged sync,
// idempotent resends.
import Foundation
import ParleyClient
import ParleyCore
import ParleyJSON
import ParleyServer
import Synchronization
import Testing

@Suite("Messaging", .serialized, .timeLimit(.minutes(3)))
struct MessagingTests {
    @Test func twoUsersOnTwoDevicesEachSeeEveryMessageOnceInOrder() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice", devices: ["phone", "laptop"])
        let bob = try await server.user("bob", devices: ["phone", "laptop"])
        let sessions = [try await server.connect(alice[0]), try await server.connect(alice[1], headerAuth: true), try await server.connect(bob[0]), try await server.connect(bob[1])]
        let inboxes = sessions.map { Inbox($0) }
        let conversation = try await sessions[0].open(with: "bob")
        #expect(try await sessions[2].open(with: "alice") == conversation, "both sides name the conversation the same")

        let perSender = 25
        let acks = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for sender in [0, 3] {
                group.addTask {
                    var seqs: [Int64] = []
                    for index in 0..<perSender {
                        let ack = try await sessions[sender].send(conversation: conversation, body: "from \(sender) #\(index)")
                        seqs.append(ack["seq"]?.int64Value ?? -1)
                    }
                    return seqs
                }
            }
            var all: [[Int64]] = []
            for try await seqs in group { all.append(seqs) }
            return all
        }
        let total = perSender * 2
        #expect(acks.flatMap { $0 }.sorted() == (1...Int64(total)).map { $0 }, "acks carry every sequence from 1 to \(total) once")

        var orderBySequence: [Int64: String] = [:]
        for (index, inbox) in inboxes.enumerated() {
            let ownSends = index == 0 || index == 3 ? perSender : 0
            let received = await inbox.waitForMessages(total - ownSends)
            let seqs = received.compactMap { $0["seq"]?.int64Value }
            #expect(seqs.count == total - ownSends, "device \(index) received \(seqs.count) messages")
            #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count, "device \(index) received in order, without duplicates")
            for message in received {
                let seq = message["seq"]!.int64Value!, body = message["body"]!.stringValue!
                if let known = orderBySequence[seq] { #expect(known == body, "every device sees the same message at sequence \(seq)") }
                orderBySequence[seq] = body
            }
        }
        #expect(orderBySequence.count == total)
        for session in sessions { await session.close() }
        await server.stop()
    }

    @Test func offlineDeviceGetsAThousandMessagesThroughPagedSyncAndResendsAreIdempotent() async throws {
        let server = try await TestServer.start(["chat.rate_limit_per_second=100000"])
        let alice = try await server.user("alice", devices: ["phone", "laptop"])
        let bob = try await server.user("bob")
        let phone = try await server.connect(alice[0])
        let bobSession = try await server.connect(bob[0])
        let bobInbox = Inbox(bobSession)
        let conversation = try await phone.open(with: "bob")

        let count = 1_000
        var firstAcks: [Int: JSONValue] = [:]
        try await withThrowingTaskGroup(of: (Int, JSONValue).self) { group in
            for index in 0..<count {
                if index >= 50, let (done, ack) = try await group.next() { firstAcks[done] = ack }
                group.addTask { (index, try await phone.send(conversation: conversation, body: "message \(index)", clientID: "c-\(index)")) }
            }
            for try await (done, ack) in group { firstAcks[done] = ack }
        }
        #expect(firstAcks.count == count)
        #expect(Set(firstAcks.values.compactMap { $0["seq"]?.int64Value }) == Set((1...Int64(count)).map { $0 }))

        let resent = try await phone.send(conversation: conversation, body: "message 5", clientID: "c-5")
        #expect(resent["seq"] == firstAcks[5]?["seq"], "a resend returns the original sequence")
        #expect(resent["ts"] == firstAcks[5]?["ts"], "and the original timestamp")
        #expect(resent["duplicate"]?.boolValue == true)

        // The laptop was offline throughout: one sync says what changed, then pages.
        let laptop = try await server.connect(alice[1])
        let changed = try await laptop.sync(cursors: [:])
        #expect(changed.count == 1 && changed[0].conversation == conversation && changed[0].lastSequence == Int64(count))
        var cursor: Int64 = 0
        var bodies: [String] = []
        var pages = 0
        while true {
            let page = try await laptop.fetch(conversation: conversation, after: cursor, limit: 300)
            pages += 1
            for message in page.messages {
                let seq = message["seq"]!.int64Value!
                #expect(seq == cursor + 1, "sequences arrive gapless and in order")
                cursor = seq
                bodies.append(message["body"]!.stringValue!)
            }
            if !page.more { break }
        }
        #expect(pages == 4)
        #expect(bodies.count == count)
        #expect(bodies == firstAcks.keys.sorted { firstAcks[$0]!["seq"]!.int64Value! < firstAcks[$1]!["seq"]!.int64Value! }.map { "message \($0)" })
        #expect(try await laptop.sync(cursors: [conversation: cursor]).isEmpty, "nothing is left to sync")

        let received = await bobInbox.waitForMessages(count)
        try await Task.sleep(for: .milliseconds(200))
        #expect(await bobInbox.messages.count == count, "the resend was not delivered again")
        #expect(received.count == count)
        for session in [phone, bobSession, laptop] { await session.close() }
        await server.stop()
    }

    /// storage-lmdb completes each batch on the worker thread that applied it, so the next
    /// batch of a conversation can be stored on another worker while this one's messages are
    /// still being handed out; storage-log completes whole groups of batches on its writer
    /// thread. A receiver must still get every message once, in order.
    @Test(arguments: ["storage-lmdb", "storage-log"])
    func orderHoldsWithEveryOtherStoragePlugin(plugin: String) async throws {
        let server = try await TestServer.start(["storage.plugin=\(plugin)", "chat.rate_limit_per_second=100000"])
        let alice = try await server.user("alice", devices: ["phone", "laptop"])
        let bob = try await server.user("bob")
        let senders = [try await server.connect(alice[0]), try await server.connect(alice[1])]
        let receiver = try await server.connect(bob[0])
        let inbox = Inbox(receiver)
        let conversation = try await senders[0].open(with: "bob")
        let perSender = 150
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, sender) in senders.enumerated() {
                for lane in 0..<3 {
                    group.addTask {
                        for number in stride(from: lane, to: perSender, by: 3) {
                            _ = try await sender.send(conversation: conversation, body: "\(index)-\(number)")
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let received = await inbox.waitForMessages(perSender * 2)
        let sequences = received.compactMap { $0["seq"]?.int64Value }
        #expect(sequences == Array(1...Int64(perSender * 2)), "every message once, in sequence order")
        for session in senders + [receiver] { await session.close() }
        await server.stop()
    }

    /// The whole server on storage-log: messages acknowledged before a restart are all there
    /// after it, in order, a resend is still recognised, and the sequence goes on.
    @Test func storageLogKeepsAcknowledgedMessagesAcrossARestart() async throws {
        let folder = scratchFolder()
        var server = try await TestServer.start(["storage.plugin=storage-log"], dataFolder: folder)
        let alice = try await server.user("alice")
        let bob = try await server.user("bob")
        var sender = try await server.connect(alice[0])
        let conversation = try await sender.open(with: "bob")
        for number in 1...40 { _ = try await sender.send(conversation: conversation, body: "m\(number)", clientID: "c\(number)") }
        await sender.close()
        await server.stop()

        server = try await TestServer.start(["storage.plugin=storage-log"], dataFolder: folder)
        sender = try await server.connect(alice[0])
        let resend = try await sender.send(conversation: conversation, body: "m40", clientID: "c40")
        #expect(resend["seq"]?.int64Value == 40 && resend["duplicate"] == .bool(true))
        let next = try await sender.send(conversation: conversation, body: "m41", clientID: "c41")
        #expect(next["seq"]?.int64Value == 41)
        let receiver = try await server.connect(bob[0])
        let changed = try await receiver.sync(cursors: [:])
        #expect(changed.first { $0.conversation == conversation }?.lastSequence == 41)
        let page = try await receiver.fetch(conversation: conversation, after: 0)
        #expect(page.messages.compactMap { $0["body"]?.stringValue } == (1...41).map { "m\($0)" })
        await sender.close()
        await receiver.close()
        await server.stop()
    }

    /// The server encodes its frames itself: a 7-bit, a 16-bit and a 64-bit payload length,
    /// and bodies that need escaping, must all arrive byte for byte.
    @Test func framesOfEveryLengthAndEscapedBodiesArriveIntact() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice")
        let bob = try await server.user("bob")
        let sender = try await server.connect(alice[0])
        let receiver = try await server.connect(bob[0])
        let inbox = Inbox(receiver)
        let conversation = try await sender.open(with: "bob")
        let tricky = "quote \" backslash \\ newline \n tab \t control \u{01} e\u{301} 🦜 "
        let bodies = ["short", tricky + String(repeating: "x", count: 1_000), String(repeating: tricky, count: 65_000 / tricky.utf8.count)]
        #expect(bodies[2].utf8.count > 60_000 && bodies[2].utf8.count <= 65_536)
        for body in bodies { _ = try await sender.send(conversation: conversation, body: body) }
        let live = await inbox.waitForMessages(bodies.count)
        #expect(live.compactMap { $0["body"]?.stringValue } == bodies, "live events carry the bodies unchanged")
        // Two large bodies in one page make a reply over 65,535 bytes: the 64-bit length form.
        _ = try await sender.send(conversation: conversation, body: bodies[2])
        let page = try await receiver.fetch(conversation: conversation, after: 0, limit: 10)
        #expect(page.messages.compactMap { $0["body"]?.stringValue } == bodies + [bodies[2]])
        await sender.close()
        await receiver.close()
        await server.stop()
    }

    @Test func historyPagesBackwardFromAnyPoint() async throws {
        let server = try await TestServer.start()
        let alice = try await server.user("alice")
        _ = try await server.user("bob")
        let session = try await server.connect(alice[0])
        let conversation = try await session.open(with: "bob")
        for index in 1...30 { _ = try await session.send(conversation: conversation, body: "m\(index)") }
        let page = try await session.request("fetch") { writer in
            writer.field("conversation", conversation)
            writer.field("before", 21)
            writer.field("limit", 5)
        }
        #expect(page["messages"]?.arrayValue?.compactMap { $0["seq"]?.int64Value } == [16, 17, 18, 19, 20])
        #expect(page["more"]?.boolValue == true)
        await session.close()
        await server.stop()
    }

    /// When a send is answered (its ack, its delivery), the log's own last sequence already
    /// includes it: a receipt sent the moment the message arrives is never refused.
    @Test func theLastSequenceMovesBeforeTheSendIsAnswered() async throws {
        let server = try await TestServer.start()
        let log = MessageLog(storage: server.node.runtime.storage)
        let conversation = ConversationID.direct("u_answer_a", "u_answer_b")
        let sender = Session(userID: "u_answer_a", deviceID: "dv_a", username: "a")
        let seen = Mutex<[(acked: Int64, cached: Int64?)]>([])
        let done = AsyncStream<Void>.makeStream()
        for index in 1...20 {
            log.submit(SendRequest(sender: sender, conversation: conversation, clientID: "m\(index)", contentType: "text/plain", body: "m\(index)")) { result in
                let acked = (try? result.get().0.sequence) ?? -1
                // Read in the completion itself, as a receipt racing the delivery would.
                let count = seen.withLock { $0.append((acked, log.cachedLastSequence(of: conversation))); return $0.count }
                if count == 20 { done.continuation.finish() }
            }
        }
        for await _ in done.stream {}
        for (acked, cached) in seen.withLock({ $0 }) {
            #expect(acked > 0 && (cached ?? 0) >= acked, "acked \(acked) while the log's last sequence was \(cached.map(String.init) ?? "unknown")")
        }
        await server.stop()
    }

    /// The log's cached last sequence can lag behind storage when another log (another node)
    /// has stored more. Asked for at least a given sequence, the log reads storage instead of
    /// refusing what is stored.
    @Test func lastSequenceReadsStorageWhenTheCacheIsBehind() async throws {
        let server = try await TestServer.start()
        let first = MessageLog(storage: server.node.runtime.storage)
        let second = MessageLog(storage: server.node.runtime.storage)
        let conversation = ConversationID.direct("u_lastseq_a", "u_lastseq_b")
        let sender = Session(userID: "u_lastseq_a", deviceID: "dv_a", username: "a")
        func request(_ clientID: String) -> SendRequest {
            SendRequest(sender: sender, conversation: conversation, clientID: clientID, contentType: "text/plain", body: clientID)
        }
        #expect(try await first.send(request("one")).0.sequence == 1)
        #expect(try await second.send(request("two")).0.sequence == 2, "the second log reads the stored sequence")
        #expect(try await first.lastSequence(of: conversation) == 1, "the first log's own value is behind")
        #expect(try await first.lastSequence(of: conversation, expected: 2) == 2, "asked for 2, it reads storage")
        #expect(try await first.lastSequence(of: conversation, expected: 3) == 2)
        await server.stop()
    }
}
