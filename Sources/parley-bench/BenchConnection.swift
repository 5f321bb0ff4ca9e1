// One WebSocket connection of the load generator, on SwiftNIO directly: its own upgrade
// request, masked text frames out with one flush per event-loop tick, and the server's
// frames read in place (`WebSocketReader`), with no HTTP or frame handlers in between: the
// load generator must cost far less per connection and per frame than the server it measures.
import Foundation
import NIOCore
import NIOPosix
import ParleyWebSocket

/// A chat connection authenticated by the bearer token in its upgrade request.
///
/// Every method but `connect` runs on `eventLoop`, where frames arrive too; that
/// confinement is what makes the unchecked `Sendable` safe. `request` sends a frame
/// and completes with the reply that carries its id; every other text frame goes to
/// `onFrame`, which reads it in place with a `FrameScanner`.
final class BenchConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let eventLoop: any EventLoop
    /// Text frames that are not replies to `request`: events, and replies to frames sent with `send`.
    var onFrame: (FrameScanner) -> Void = { _ in }
    /// Called once when the socket has closed.
    var onClose: () -> Void = {}

    private let endpoint: ChatEndpoint
    private let token: String
    private let welcomed: EventLoopPromise<Void>
    private var isWelcomed = false
    private var context: ChannelHandlerContext?
    private var flushScheduled = false
    private var maskKeys: SplitMix64
    private var pendingReplies: [String: EventLoopPromise<ByteBuffer>] = [:]
    /// The server's answer to the upgrade request until its blank line has arrived.
    private var answer: ByteBuffer?
    private var upgraded = false
    /// Fetch pages of 1,000 records are single frames of hundreds of kilobytes.
    private var reader = WebSocketReader(maxMessageBytes: 1 << 26, masked: false)

    private init(eventLoop: any EventLoop, seed: UInt64, endpoint: ChatEndpoint, token: String) {
        self.eventLoop = eventLoop
        self.endpoint = endpoint
        self.token = token
        welcomed = eventLoop.makePromise()
        maskKeys = SplitMix64(seed: seed)
    }

    /// Connects from `source` (a local address, port 0) and completes after the server's `welcome`.
    static func connect(to endpoint: ChatEndpoint, token: String, on eventLoop: any EventLoop, from source: SocketAddress? = nil) -> EventLoopFuture<BenchConnection> {
        let connection = BenchConnection(eventLoop: eventLoop, seed: MonotonicClock.nanoseconds(), endpoint: endpoint, token: token)
        var bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(30))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(connection) }
            }
        if let source { bootstrap = bootstrap.bind(to: source) }
        return bootstrap.connect(to: endpoint.address)
            .flatMapError { error in
                connection.welcomed.fail(error)
                return eventLoop.makeFailedFuture(error)
            }
            .flatMap { _ in connection.welcomed.futureResult.map { connection } }
    }

    /// Queues a text frame; all frames queued in one event-loop tick go out in one flush.
    func send(_ text: ByteBuffer) {
        guard let context else { return }
        context.write(wrapOutboundOut(frame(WebSocketFrames.text, text)), promise: nil)
        scheduleFlush()
    }

    func send(_ text: String) {
        send(ByteBuffer(string: text))
    }

    /// Sends a request frame whose `"id"` is `id` and completes with the reply frame.
    func request(id: String, _ text: String) -> EventLoopFuture<ByteBuffer> {
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        pendingReplies[id] = promise
        send(text)
        return promise.futureResult
    }

    /// Sends a close frame (1000) and completes when the socket has closed.
    func close() -> EventLoopFuture<Void> {
        guard let context else { return eventLoop.makeSucceededVoidFuture() }
        var code = context.channel.allocator.buffer(capacity: 2)
        code.writeInteger(UInt16(1000))
        context.writeAndFlush(wrapOutboundOut(frame(WebSocketFrames.close, code)), promise: nil)
        let closed = context.channel.closeFuture
        context.close(promise: nil)
        return closed
    }

    /// A client frame: masked, with a new key each time.
    private func frame(_ opcode: UInt8, _ payload: ByteBuffer) -> ByteBuffer {
        let key = UInt32(truncatingIfNeeded: maskKeys.next())
        var buffer = ByteBufferAllocator().buffer(capacity: payload.readableBytes + 14)
        WebSocketFrames.append(opcode: opcode, payload, to: &buffer, key: (UInt8(key >> 24), UInt8(key >> 16 & 0xFF), UInt8(key >> 8 & 0xFF), UInt8(key & 0xFF)))
        return buffer
    }

    private func scheduleFlush() {
        guard !flushScheduled else { return }
        flushScheduled = true
        eventLoop.execute {
            self.flushScheduled = false
            self.context?.flush()
        }
    }

    // MARK: ChannelInboundHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Writes the upgrade request, with the token (RFC 6455, section 4.1).
    func channelActive(context: ChannelHandlerContext) {
        var key = [UInt8](repeating: 0, count: 16)
        for index in stride(from: 0, to: 16, by: 8) {
            withUnsafeBytes(of: maskKeys.next()) { key.replaceSubrange(index..<(index + 8), with: $0) }
        }
        var request = context.channel.allocator.buffer(capacity: 256 + token.utf8.count)
        request.writeString("GET \(endpoint.path) HTTP/1.1\r\nHost: \(endpoint.host):\(endpoint.port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        request.writeString("Sec-WebSocket-Key: \(Data(key).base64EncodedString())\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer \(token)\r\n\r\n")
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if !upgraded {
            guard let rest = readAnswer(context, &bytes) else { return }
            bytes = rest
        }
        reader.append(&bytes)
        do throws(WebSocketReader.Failure) {
            while let event = try reader.next() {
                switch event {
                case .text(let text):
                    text.withUnsafeReadableBytes { received(FrameScanner(bytes: $0), text) }
                case .ping(let payload):
                    context.writeAndFlush(wrapOutboundOut(frame(WebSocketFrames.pong, payload)), promise: nil)
                case .close:
                    context.close(promise: nil)
                    return
                case .binary, .pong:
                    break
                }
            }
        } catch {
            welcomed.fail(BenchFailure("the server's frames broke the protocol: \(error)"))
            context.close(promise: nil)
        }
    }

    /// Collects the server's answer to the upgrade until its blank line; returns the bytes
    /// after it (frames that came in the same read) once it is a 101, nil while it is
    /// incomplete or when it refused. The key's accept value is not checked: the tool talks
    /// to a server it knows.
    private func readAnswer(_ context: ChannelHandlerContext, _ bytes: inout ByteBuffer) -> ByteBuffer? {
        if answer == nil { answer = bytes } else { answer!.writeBuffer(&bytes) }
        let view = answer!.readableBytesView
        guard let endOfHead = answer!.withUnsafeReadableBytes({ HTTPHead.end(in: $0) }) else {
            if view.count > 16_384 {
                welcomed.fail(BenchFailure("the server's answer to the upgrade has no end"))
                context.close(promise: nil)
            }
            return nil
        }
        let head = String(decoding: view[view.startIndex..<(view.startIndex + endOfHead)], as: UTF8.self)
        guard head.hasPrefix("HTTP/1.1 101 ") else {
            let status = head.split(separator: " ", maxSplits: 2).dropFirst().first ?? "?"
            welcomed.fail(BenchFailure("the upgrade was refused with HTTP \(status)"))
            context.close(promise: nil)
            return nil
        }
        upgraded = true
        var rest = answer!
        rest.moveReaderIndex(forwardBy: endOfHead + 4)
        answer = nil
        return rest
    }

    private func received(_ scanner: FrameScanner, _ text: ByteBuffer) {
        guard isWelcomed else {
            if scanner.string("type", equals: "welcome") {
                isWelcomed = true
                welcomed.succeed()
            } else if scanner.string("type", equals: "error") {
                welcomed.fail(BenchFailure("the server refused the connection: \(String(buffer: text))"))
            }
            return
        }
        if !pendingReplies.isEmpty, let id = scanner.text("id"), let promise = pendingReplies.removeValue(forKey: id) {
            promise.succeed(text)
            return
        }
        onFrame(scanner)
    }

    func channelInactive(context: ChannelHandlerContext) {
        welcomed.fail(BenchFailure("the connection closed before welcome"))
        let pending = pendingReplies
        pendingReplies = [:]
        for promise in pending.values { promise.fail(BenchFailure("the connection closed before the reply")) }
        onClose()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        welcomed.fail(error)
        context.close(promise: nil)
    }
}

/// A cheap generator for WebSocket masking keys; masking protects proxies, not secrets,
/// so a system random call per frame would only cost the load generator time.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var mixed = state
        mixed = (mixed ^ (mixed >> 30)) &* 0xBF58_476D_1CE4_E5B9
        mixed = (mixed ^ (mixed >> 27)) &* 0x94D0_49BB_1331_11EB
        return mixed ^ (mixed >> 31)
    }
}
