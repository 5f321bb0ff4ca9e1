// One device's WebSocket connection as the rest of the server sees it: send a frame
// from any thread, close it with a code.
//
// Outgoing frames are encoded here (header and payload) into the connection's one pending
// buffer, and the buffer goes to the socket once per event-loop tick, however many frames
// it holds. Frames sent from other threads (storage completions, tasks) reach the loop
// through its `LoopWriter`, one hand-over per batch, not one per frame.
package import NIOCore
import NIOWebSocket
import ParleyCore
import ParleyWebSocket
package import PluginHost
import Synchronization

public final class ChatConnection: @unchecked Sendable {
    let channel: any Channel
    let session = Mutex<Session?>(nil)
    /// The socket has closed (set by `ChatService.disconnected`, before it reads `session`).
    let closed = Atomic<Bool>(false)
    /// Frames written while the socket refuses more before the connection counts as a
    /// slow consumer and is closed (the device resyncs by cursor after reconnecting).
    let maxUnwritableWrites: Int
    let writer: LoopWriter

    // Event-loop state: read and written only on `channel.eventLoop`.
    /// Where encoded frames go toward the socket. Dropped when the connection closes, which
    /// ends the reference cycle through the pipeline.
    private var socketContext: ChannelHandlerContext?
    private var pending: ByteBuffer?
    private var unwritableWrites = 0
    private var closing = false
    /// It is in its loop writer's list of connections to flush.
    var flushListed = false
    /// When a frame of any kind (pongs included) last arrived, and when the last ping left.
    var lastRead = NIODeadline.now()
    var lastPing = NIODeadline.now()
    let openedAt = NIODeadline.now()
    /// When the close frame was sent; the socket is closed `closeGrace` later at the latest.
    private var closingSince = NIODeadline.now()
    static let closeGrace = TimeAmount.seconds(5)
    let timing: ChatListenerSettings.Timing

    /// `socketContext` is the context of the connection's handler: writes made through it
    /// go toward the socket (through TLS, when configured). On the event loop.
    init(channel: any Channel, socketContext: ChannelHandlerContext, maxUnwritableWrites: Int, timing: ChatListenerSettings.Timing) {
        self.channel = channel
        self.socketContext = socketContext
        self.maxUnwritableWrites = maxUnwritableWrites
        self.timing = timing
        writer = LoopWriter.of(channel.eventLoop)
        writer.track(self)
    }

    /// Queues a text frame; safe from any thread.
    func send(_ bytes: [UInt8]) {
        send(.bytes(bytes))
    }

    func send(_ payload: FramePayload) {
        writer.send(payload, to: self)
    }

    /// Whether the socket takes more writes, as the handler last heard
    /// (`channelWritabilityChanged`): a flag, not the channel's atomics, on the fan-out path.
    var writable = true

    /// Encodes a text frame into the pending buffer. On the event loop.
    func append(_ payload: FramePayload) {
        guard admit(frames: 1) else { return }
        encode(opcode: WebSocketFrames.text, payload)
    }

    /// Adds frames already encoded (a fan-out's, shared by its recipients) to the pending
    /// buffer: the buffer itself when nothing is pending, so no byte is copied. On the event loop.
    func appendEncoded(_ frames: ByteBuffer, count: Int) {
        guard admit(frames: count) else { return }
        if var buffer = pending.take() {
            buffer.writeImmutableBuffer(frames)
            pending = buffer
        } else {
            pending = frames
        }
    }

    /// Whether frames may still be queued: the connection is open, and it has not had more
    /// than `maxUnwritableWrites` frames queued while its socket refused more (a slow
    /// consumer, closed here).
    private func admit(frames: Int) -> Bool {
        // `socketContext` is dropped when the channel goes inactive (`detach`).
        guard socketContext != nil, !closing else { return false }
        if writable {
            unwritableWrites = 0
            return true
        }
        unwritableWrites += frames
        guard unwritableWrites > maxUnwritableWrites else { return true }
        // At once: the frames that would queue behind the close are what it bounds.
        closeNow(code: .init(codeNumber: ChatCloseCode.slowConsumer), reason: "slow consumer: reconnect and sync")
        return false
    }

    /// Sends a control frame (ping, pong) at once. On the event loop.
    func sendControl(opcode: UInt8, _ payload: ByteBuffer) {
        guard socketContext != nil, !closing else { return }
        encode(opcode: opcode, .buffer(payload))
        flushPending()
    }

    /// Puts bytes that must precede every frame (the handshake's answer) in the pending
    /// buffer, to leave in one write with the first frame. On the event loop.
    func hold(_ bytes: ByteBuffer) {
        var buffer = channel.allocator.buffer(capacity: 2048)
        buffer.writeImmutableBuffer(bytes)
        pending = buffer
    }

    /// Appends a whole frame to the pending buffer; a server's frames are not masked.
    private func encode(opcode: UInt8, _ payload: FramePayload) {
        // Taken out and put back: one access to the stored property instead of one per write.
        var buffer = pending.take() ?? channel.allocator.buffer(capacity: max(2048, payload.count + 10))
        payload.appendFrame(opcode: opcode, to: &buffer)
        pending = buffer
    }

    /// Hands the pending frames to the socket in one write and flushes. On the event loop.
    func flushPending() {
        guard let buffer = pending else { return }
        pending = nil
        guard let socketContext else { return }
        socketContext.writeAndFlush(NIOAny(buffer), promise: nil)
    }

    /// Called once the channel is inactive: nothing more can be written.
    func detach() {
        closing = true
        pending = nil
        socketContext = nil
        writer.untrack(self)
    }

    /// The loop writer's check, a few times a second: closes a connection that has not
    /// authenticated in time or has been silent too long, and pings a quiet one.
    func checkTimers(now: NIODeadline) {
        guard channel.isActive else { return }
        if closing {
            if now - closingSince >= Self.closeGrace { channel.close(promise: nil) }
            return
        }
        if now - openedAt >= timing.authentication, session.withLock({ $0 == nil }) {
            close(code: .init(codeNumber: ChatCloseCode.authenticationTimeout), reason: "no hello within the time allowed")
        } else if now - lastRead >= timing.idle {
            close(code: .init(codeNumber: ChatCloseCode.idleTimeout), reason: "no frames or pongs for too long")
        } else if now - lastRead >= timing.ping, now - lastPing >= timing.ping {
            lastPing = now
            sendControl(opcode: WebSocketFrames.ping, ByteBuffer())
        }
    }

    /// Sends a close frame with code and reason, then closes the socket; safe from any thread.
    /// The close goes through the loop writer, behind the frames sent before it (an error, then
    /// the close that follows it), from another thread or from the loop itself.
    func close(code: WebSocketErrorCode, reason: String) {
        writer.close(self, code: code, reason: reason)
    }

    /// Writes the close frame after what is pending, then closes the socket. On the event loop.
    func closeNow(code: WebSocketErrorCode, reason: String) {
        guard !closing, channel.isActive, let socketContext else { return }
        var data = channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: code)
        // A control frame carries at most 125 bytes: the code and up to 123 of the reason.
        data.writeBytes(reason.utf8.prefix(123))
        encode(opcode: WebSocketFrames.close, .buffer(data))
        closing = true
        let frames = pending!
        pending = nil
        closingSince = .now()
        // Then end the output only, and read (and drop) what the client still sends until it
        // closes: closing with unread input resets the connection, and the client could lose
        // the close frame. The timer check closes it for good after `closeGrace`.
        let channel = self.channel
        let written = channel.eventLoop.makePromise(of: Void.self)
        socketContext.writeAndFlush(NIOAny(frames), promise: written)
        written.futureResult.whenComplete { _ in
            let halfClosed = channel.eventLoop.makePromise(of: Void.self)
            channel.close(mode: .output, promise: halfClosed)
            halfClosed.futureResult.whenFailure { _ in channel.close(promise: nil) }
        }
    }
}

/// Close codes of the chat protocol (docs/PROTOCOL.md).
public enum ChatCloseCode {
    public static let unauthorized = 4001
    public static let authenticationTimeout = 4002
    public static let slowConsumer = 4008
    public static let idleTimeout = 4009
}

/// One per event loop: takes frames for the loop's connections from any thread and
/// flushes each connection that got frames once, at the end of the tick.
///
/// A storage batch of a group hands over one fan-out per message, each to the same
/// connections but its sender's. Consecutive fan-outs to the same connections form a run:
/// their frames are encoded once, back to back, into one buffer that every recipient's
/// pending buffer takes whole (by reference when it had nothing pending). Connections that
/// must see a run's frames one by one (a sender, who does not get its own message, and any
/// connection that gets another frame in the middle of the run) get them one by one, in order.
package final class LoopWriter: @unchecked Sendable {
    private enum Delivery {
        case one(ChatConnection, FramePayload)
        /// One frame to these connections of the loop, but `except`.
        case many(ByteBuffer, [ChatConnection], except: ChatConnection?)
        /// A close frame, after the frames handed over before it.
        case close(ChatConnection, WebSocketErrorCode, String)
    }

    private struct Inbox {
        var deliveries: [Delivery] = []
        var scheduled = false
    }

    /// Consecutive fan-outs to the same connections, encoded once.
    private struct Run {
        let connections: [ChatConnection]
        var frames = ByteBuffer()
        /// Where each frame ends in `frames`, and the connection it skips.
        var ends: [Int] = []
        var excepts: [ChatConnection?] = []
        /// Connections already given the first n frames one by one.
        var givenSeparately: [ObjectIdentifier: Int] = [:]

        init(connections: [ChatConnection]) {
            self.connections = connections
        }

        mutating func add(_ payload: ByteBuffer, except: ChatConnection?) {
            WebSocketFrames.append(opcode: WebSocketFrames.text, payload, to: &frames)
            ends.append(frames.writerIndex)
            excepts.append(except)
        }

        func includes(_ connection: ChatConnection) -> Bool {
            connections.contains { $0 === connection }
        }

        /// Gives the connection the frames it has not had yet, one by one, skipping its own.
        mutating func giveSeparately(to connection: ChatConnection) {
            let id = ObjectIdentifier(connection)
            for index in (givenSeparately[id] ?? 0)..<ends.count where excepts[index] !== connection {
                let start = index == 0 ? 0 : ends[index - 1]
                connection.appendEncoded(frames.getSlice(at: start, length: ends[index] - start)!, count: 1)
            }
            givenSeparately[id] = ends.count
        }

        /// Gives every connection the run: the whole buffer to those that need nothing skipped.
        mutating func finish() {
            // Looked up once per run, not once per frame for every connection.
            let skipping = Set(excepts.compactMap { $0.map(ObjectIdentifier.init) })
            for connection in connections {
                let id = ObjectIdentifier(connection)
                if givenSeparately[id] == nil, !skipping.contains(id) {
                    connection.appendEncoded(frames, count: ends.count)
                } else {
                    giveSeparately(to: connection)
                }
            }
        }
    }

    let eventLoop: any EventLoop
    /// Frames from other threads, in the order they were sent, waiting for the loop.
    private let inbox = Mutex(Inbox())
    // Event-loop state.
    private var toFlush: [ChatConnection] = []
    private var flushScheduled = false
    private var wakeScheduled = false
    /// The storages whose workers the scheduled wake-up wakes (`wakeAfterReads`).
    private var toWake: [StorageBackend] = []
    /// The loop's open connections, for their timers: one repeated check per loop instead
    /// of timers per connection, whose cancellation costs NIO a search of its timer queue.
    private var tracked: [ObjectIdentifier: ChatConnection] = [:]
    private var checking = false
    static let timerCheckInterval = TimeAmount.milliseconds(250)

    private static let writers = Mutex<[ObjectIdentifier: LoopWriter]>([:])

    /// The writer of `eventLoop`, made the first time it is asked for.
    package static func of(_ eventLoop: any EventLoop) -> LoopWriter {
        writers.withLock { writers in
            let id = ObjectIdentifier(eventLoop)
            if let writer = writers[id] { return writer }
            let writer = LoopWriter(eventLoop: eventLoop)
            writers[id] = writer
            return writer
        }
    }

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Starts checking the connection's timers. On the event loop.
    func track(_ connection: ChatConnection) {
        tracked[ObjectIdentifier(connection)] = connection
        guard !checking else { return }
        checking = true
        eventLoop.scheduleRepeatedTask(initialDelay: Self.timerCheckInterval, delay: Self.timerCheckInterval) { _ in
            let now = NIODeadline.now()
            for connection in self.tracked.values { connection.checkTimers(now: now) }
        }
    }

    /// Stops checking the connection's timers. On the event loop.
    func untrack(_ connection: ChatConnection) {
        tracked[ObjectIdentifier(connection)] = nil
    }

    /// Sends one frame to many connections but `except`, with one hand-over per event loop;
    /// returns how many connections it went to.
    @discardableResult
    static func send(_ payload: FramePayload, to connections: [ChatConnection], except: ChatConnection?) -> Int {
        // One connection to reach (a direct message's receiver, most often): its frame goes
        // into its pending buffer as it is, with no shared buffer or run.
        var targets = 0
        var last: ChatConnection?
        for connection in connections where connection !== except {
            targets += 1
            last = connection
        }
        guard let last else { return 0 }
        if targets == 1 {
            last.writer.hand(.one(last, payload))
            return 1
        }
        let frame = payload.buffer
        var byWriter: [(LoopWriter, [ChatConnection])] = []
        for connection in connections {
            if let index = byWriter.firstIndex(where: { $0.0 === connection.writer }) {
                byWriter[index].1.append(connection)
            } else {
                byWriter.append((connection.writer, [connection]))
            }
        }
        // A loop whose only connection is `except` (a sender's, for a direct message) gets nothing.
        for (writer, connections) in byWriter where !(connections.count == 1 && connections[0] === except) {
            writer.hand(.many(frame, connections, except: except))
        }
        return targets
    }

    func send(_ payload: FramePayload, to connection: ChatConnection) {
        hand(.one(connection, payload))
    }

    func close(_ connection: ChatConnection, code: WebSocketErrorCode, reason: String) {
        hand(.close(connection, code, reason))
    }

    private func hand(_ delivery: Delivery) {
        if eventLoop.inEventLoop {
            // While frames handed over from other threads wait to be taken (their take is then
            // scheduled), a frame or close sent on the loop (a reply, a close after a protocol
            // error) queues behind them instead of overtaking them.
            let queued = inbox.withLock { inbox in
                guard !inbox.deliveries.isEmpty else { return false }
                inbox.deliveries.append(delivery)
                return true
            }
            if !queued { take([delivery]) }
            return
        }
        let schedule = inbox.withLock { inbox in
            inbox.deliveries.append(delivery)
            guard !inbox.scheduled else { return false }
            inbox.scheduled = true
            return true
        }
        if schedule { eventLoop.execute { self.takeInbox() } }
    }

    private func takeInbox() {
        let deliveries = inbox.withLock { inbox in
            inbox.scheduled = false
            defer { inbox.deliveries = [] }
            return inbox.deliveries
        }
        take(deliveries)
    }

    /// Queues the deliveries' frames on their connections, in order for each connection.
    private func take(_ deliveries: [Delivery]) {
        var run: Run?
        for delivery in deliveries {
            switch delivery {
            case .one(let connection, let payload):
                // A frame in the middle of a run: the connection gets the run's frames so far first.
                if run?.includes(connection) == true { run!.giveSeparately(to: connection) }
                connection.append(payload)
                listForFlush(connection)
            case .close(let connection, let code, let reason):
                if run?.includes(connection) == true { run!.giveSeparately(to: connection) }
                connection.closeNow(code: code, reason: reason)
            case .many(let payload, let connections, let except):
                if let current = run, !Self.same(current.connections, connections) {
                    finish(current)
                    run = nil
                }
                if run == nil { run = Run(connections: connections) }
                run!.add(payload, except: except)
            }
        }
        if let run { finish(run) }
    }

    private func finish(_ run: Run) {
        var run = run
        run.finish()
        for connection in run.connections { listForFlush(connection) }
    }

    private static func same(_ first: [ChatConnection], _ second: [ChatConnection]) -> Bool {
        first.count == second.count && zip(first, second).allSatisfy { $0 === $1 }
    }

    /// Wakes a plugin worker for the storage jobs the loop queued while handling its reads,
    /// after them: a burst of sign-ins costs one wake-up of a worker, not one each. On the loop.
    /// The loop may serve several nodes in one process (tests, an embedding app), each with
    /// its own storage and workers: every storage named before the wake-up runs is woken.
    package func wakeAfterReads(_ storage: StorageBackend) {
        if !toWake.contains(where: { $0.sharesWorkers(with: storage) }) { toWake.append(storage) }
        guard !wakeScheduled else { return }
        wakeScheduled = true
        eventLoop.execute {
            self.wakeScheduled = false
            let storages = self.toWake
            self.toWake = []
            for storage in storages { storage.wakeWorker() }
        }
    }

    private func listForFlush(_ connection: ChatConnection) {
        guard !connection.flushListed else { return }
        connection.flushListed = true
        toFlush.append(connection)
        guard !flushScheduled else { return }
        flushScheduled = true
        eventLoop.execute { self.flushAll() }
    }

    private func flushAll() {
        flushScheduled = false
        let connections = toFlush
        toFlush = []
        for connection in connections {
            connection.flushListed = false
            connection.flushPending()
        }
    }
}
