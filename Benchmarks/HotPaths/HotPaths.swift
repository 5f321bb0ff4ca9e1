// Micro-benchmarks of the steps a chat message takes through parleyd: reading a `send`
// frame, sequencing sends into storage batches, building a batch's writes, and encoding the
// ack and the message event. Fan-out to a group's connections is measured end to end by
// parley-bench's group scenario: on an embedded NIO channel, the harness's own writes cost
// ten times the server's fan-out code.
// Run with `make microbench`; docs/BENCHMARKS.md has the figures and how to compare runs.
import Benchmark
import Foundation
import Logging
import NIOCore
import ParleyCore
import ParleyJSON
import ParleyServer
import ParleyWebSocket
import PluginHost
import Synchronization

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
        maxDuration: .seconds(3)
    )

    // The harness's own cost per sample (its measurement allocates too): subtract it from
    // the others' allocation counts.
    Benchmark("baseline: an empty sample") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(benchmark) }
    }

    // What an event loop does per `send` frame before the message log takes it.
    Benchmark("frame decode: a masked send frame to a SendRequest") { benchmark in
        let frame = Samples.maskedSendFrame()
        for _ in benchmark.scaledIterations {
            var reader = WebSocketReader(maxMessageBytes: 1 << 20)
            var bytes = frame
            reader.append(&bytes)
            guard case .text(let payload)? = try reader.next(), let pairs = JSONParser.flatStringObject(payload.readableBytesView),
                let conversation = pairs["conversation"].flatMap(ConversationID.init), let clientID = pairs["client_id"],
                let contentType = pairs["content_type"], let body = pairs["body"]
            else { preconditionFailure("the sample frame is a valid send frame") }
            blackHole(SendRequest(sender: Samples.sender, conversation: conversation, clientID: clientID, contentType: contentType, body: body))
        }
    }

    // What the storage completion does per message before the loops write: the ack for the
    // sender and the message event for the recipients, framed as the socket gets them.
    Benchmark("frame encode: an ack and a message event") { benchmark in
        let ack = SendAck(conversation: Samples.conversation.rawValue, sequence: 4_242, timestamp: 1_796_000_000_000, clientID: "c-000042", duplicate: false)
        let record = Samples.record()
        for _ in benchmark.scaledIterations {
            var out = ByteBufferAllocator().buffer(capacity: 1_024)
            FramePayload.bytes(ChatFrames.ack(id: "r-42", ack)).appendFrame(opcode: WebSocketFrames.text, to: &out)
            ChatFrames.messageEvent(record).appendFrame(opcode: WebSocketFrames.text, to: &out)
            blackHole(out)
        }
    }

    // The JSON record of a stored message, which a plugin worker builds per send and the
    // message event then carries unchanged.
    Benchmark("record encode: a stored message's JSON") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(Samples.record())
        }
    }

    // The storage writes of a batch of 16 messages to one direct conversation, built in the
    // memory handed to the plugin, as the message log builds them: per message its client-id
    // row and its record; per batch the sender's read cursor and both users' summaries.
    Benchmark("storage batch: the writes of 16 direct messages") { benchmark in
        let record = Samples.record()
        let partition = StorageBytes.utf8(Samples.conversation.rawValue)
        let summary = Array(#"{"last_seq":4258,"last_ts":1796000000000}"#.utf8)
        for _ in benchmark.scaledIterations {
            let batch = StorageBatch(capacity: 36)
            for index in 0..<16 {
                let sequence = Int64(4_242 + index)
                batch.add(.putIfAbsent, table: StorageLayout.clientIDs, partition: partition, sort: .joined(Samples.sender.userID, "c-\(index)"), value: .sequences(sequence, 1_796_000_000_000))
                batch.add(.putIfAbsent, table: StorageLayout.messages, partition: partition, sort: .sequence(sequence), value: .bytes(record))
            }
            batch.add(.put, table: StorageLayout.readCursors, partition: partition, sort: .joined(Samples.sender.userID, "read"), value: .sequence(4_257))
            for user in Samples.conversation.participants {
                batch.add(.put, table: StorageLayout.userConversations, partition: .utf8(user), sort: partition, value: .bytes(summary))
            }
            blackHole(batch)
        }
    }

    // Sequencing and batch building through the message log, the plugin host and the plugin
    // worker pool, into an in-memory plugin (no disk): one sample is 1,000 sends spread over
    // 10 conversations, all answered. The plugin is new for each sample, outside the measurement.
    Benchmark(
        "sequencing: 1,000 sends to 10 conversations into storage batches",
        configuration: .init(metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .contextSwitches], maxDuration: .seconds(5))
    ) { benchmark in
        let library = try Samples.memoryPlugin()
        let pool = PluginWorkerPool(threads: 4, capacity: 4_096)
        let instance = try PluginInstance(library: library, configuration: [:], pool: pool, logger: Logger(label: "hot-paths"))
        let log = MessageLog(storage: try StorageBackend(instance: instance))
        let requests = (0..<1_000).map { index in
            SendRequest(sender: Samples.sender, conversation: .direct(Samples.user(0), Samples.user(index % 10 + 1)), clientID: "c-\(index)", contentType: "text/plain", body: Samples.body)
        }
        benchmark.startMeasurement()
        let failures = await Samples.sendAll(requests, to: log)
        benchmark.stopMeasurement()
        precondition(failures == 0, "every send is stored")
        await instance.shutdown()
        pool.shutdown()
    }
}

/// The inputs the benchmarks share.
enum Samples {
    /// User ids as the server makes them ("u_" and 20 hex digits).
    static func user(_ number: Int) -> String { "u_" + String(repeating: "0", count: 18) + (number < 10 ? "0\(number)" : "\(number)") }
    static let sender = Session(userID: user(0), deviceID: "dv_00000000000000000000", username: "ann")
    static let conversation = ConversationID.direct(user(0), user(1))
    static let body = String(repeating: "x", count: 100)

    /// A client's `send` frame, masked as clients must send it.
    static func maskedSendFrame() -> ByteBuffer {
        let json = JSONWriter.frame("send", id: "r-42") { writer in
            writer.field("conversation", conversation.rawValue)
            writer.field("client_id", "c-000042")
            writer.field("content_type", "text/plain")
            writer.field("body", body)
        }
        var frame = ByteBuffer()
        WebSocketFrames.append(opcode: WebSocketFrames.text, ByteBuffer(bytes: json), to: &frame, key: (0x12, 0x34, 0x56, 0x78))
        return frame
    }

    /// A stored message's record, as the message log writes it.
    static func record() -> [UInt8] {
        // As the message log writes it: into the array's own storage.
        JSONWriter.array(capacity: 512) { writer in
            writer.beginObject()
            writer.field("conversation", conversation.rawValue)
            writer.field("seq", 4_242)
            writer.field("ts", 1_796_000_000_000)
            writer.field("from", sender.userID)
            writer.field("from_device", sender.deviceID)
            writer.field("sender", sender.username)
            writer.field("client_id", "c-000042")
            writer.field("content_type", "text/plain")
            writer.field("body", body)
            writer.endObject()
        }
    }

    /// Submits every request at once and waits until all are answered; returns how many failed.
    static func sendAll(_ requests: [SendRequest], to log: MessageLog) async -> Int {
        let answered = Atomic<Int>(0), failed = Atomic<Int>(0)
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            for request in requests {
                log.submit(request) { result in
                    if case .failure = result { failed.add(1, ordering: .relaxed) }
                    if answered.add(1, ordering: .acquiringAndReleasing).newValue == requests.count { done.resume() }
                }
            }
        }
        return failed.load(ordering: .acquiring)
    }

    /// The in-memory storage plugin of the plugin tests, built once with `cc` and loaded once;
    /// the file is removed once loaded (the loaded library stays mapped).
    static func memoryPlugin() throws -> PluginLibrary {
        try memoryPluginLibrary.withLock { library in
            if let library { return library }
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            let fixture = root.appendingPathComponent("Tests/PluginHostTests/Fixtures/abi-v1.0")
            let output = FileManager.default.temporaryDirectory.appendingPathComponent("parley-hot-paths-\(getpid())-memory.so")
            defer { try? FileManager.default.removeItem(at: output) }
            let cc = Process()
            cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            cc.arguments = ["cc", "-std=c11", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-pthread", "-I", fixture.path, fixture.appendingPathComponent("memory_storage.c").path, "-o", output.path]
            try cc.run()
            cc.waitUntilExit()
            guard cc.terminationStatus == 0 else { throw BuildFailure() }
            let loaded = try PluginLibrary.load(path: output.path)
            library = loaded
            return loaded
        }
    }

    private static let memoryPluginLibrary = Mutex<PluginLibrary?>(nil)

    struct BuildFailure: Error, CustomStringConvertible {
        var description: String { "cc could not build the in-memory storage plugin" }
    }
}
