// One WebSocket connection of the load generator, on SwiftNIO directly: masked text
// frames out with one flush per event-loop tick, text frames in, read in place.
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket

/// A chat connection authenticated by the bearer token in its upgrade request.
///
/// Every method but `connect` runs on `eventLoop`, where frames arrive too; that
/// confinement is what makes the unchecked `Sendable` safe. `request` sends a frame
/// and completes with the reply that carries its id; every other text frame goes to
/// `onFrame`, which reads it in place with a `FrameScanner`.
final class BenchConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let eventLoop: any EventLoop
    /// Text frames that are not replies to `request`: events, and replies to frames sent with `send`.
    var onFrame: (FrameScanner) -> Void = { _ in }
    /// Called once when the socket has closed.
    var onClose: () -> Void = {}

    private let welcomed: EventLoopPromise<Void>
    private var isWelcomed = false
    private var context: ChannelHandlerContext?
    private var flushScheduled = false
    private var maskKeys: SplitMix64
    private var pendingReplies: [String: EventLoopPromise<ByteBuffer>] = [:]

    private init(eventLoop: any EventLoop, seed: UInt64) {
        self.eventLoop = eventLoop
        welcomed = eventLoop.makePromise()
        maskKeys = SplitMix64(seed: seed)
    }

    /// Connects from `source` (a local address, port 0) and completes after the server's `welcome`.
    static func connect(to endpoint: ChatEndpoint, token: String, on eventLoop: any EventLoop, from source: SocketAddress? = nil) -> EventLoopFuture<BenchConnection> {
        let connection = BenchConnection(eventLoop: eventLoop, seed: MonotonicClock.nanoseconds())
        var bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(30))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Fetch pages of 1,000 records are single frames of hundreds of kilobytes.
                    let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: 1 << 26, automaticErrorHandling: false) { channel, _ in
                        channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(connection) }
                    }
                    let request = UpgradeRequestWriter(endpoint: endpoint, token: token, failure: connection.welcomed)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .forwardBytes,
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(request, promise: nil)
                        }))
                    try channel.pipeline.syncOperations.addHandler(request)
                }
            }
        if let source { bootstrap = bootstrap.bind(to: source) }
        return bootstrap.connect(host: endpoint.host, port: endpoint.port)
            .flatMapError { error in
                connection.welcomed.fail(error)
                return eventLoop.makeFailedFuture(error)
            }
            .flatMap { _ in connection.welcomed.futureResult.map { connection } }
    }

    /// Queues a text frame; all frames queued in one event-loop tick go out in one flush.
    func send(_ text: ByteBuffer) {
        guard let context else { return }
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(using: &maskKeys), data: text)
        context.write(wrapOutboundOut(frame), promise: nil)
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
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: .normalClosure)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(using: &maskKeys), data: data)), promise: nil)
        let closed = context.channel.closeFuture
        context.close(promise: nil)
        return closed
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

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            let text = frame.data
            text.withUnsafeReadableBytes { received(FrameScanner(bytes: $0), text) }
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(using: &maskKeys), data: frame.data)), promise: nil)
        case .connectionClose:
            context.close(promise: nil)
        default:
            break
        }
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

/// Writes the upgrade request with the bearer token once connected; fails the connect
/// when the server answers with anything but 101.
private final class UpgradeRequestWriter: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let endpoint: ChatEndpoint
    let token: String
    let failure: EventLoopPromise<Void>

    init(endpoint: ChatEndpoint, token: String, failure: EventLoopPromise<Void>) {
        self.endpoint = endpoint
        self.token = token
        self.failure = failure
    }

    func channelActive(context: ChannelHandlerContext) {
        let headers = HTTPHeaders([("Host", "\(endpoint.host):\(endpoint.port)"), ("Authorization", "Bearer \(token)"), ("Content-Length", "0")])
        context.write(wrapOutboundOut(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.path, headers: headers))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            failure.fail(BenchFailure("the upgrade was refused with HTTP \(head.status.code)"))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failure.fail(error)
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
