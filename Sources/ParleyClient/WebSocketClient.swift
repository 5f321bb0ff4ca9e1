// A WebSocket client on SwiftNIO: connect (ws or wss), send text frames, read text
// frames and the close code as an async stream.
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// Something that arrived on a client WebSocket.
public enum WebSocketEvent: Sendable, Equatable {
    case text(String)
    /// The connection closed; `code` is the close frame's code, nil when the socket just ended.
    case closed(code: Int?, reason: String)
}

public final class WebSocketClient: Sendable {
    public let events: AsyncStream<WebSocketEvent>
    private let channel: any Channel

    private init(channel: any Channel, events: AsyncStream<WebSocketEvent>) {
        self.channel = channel
        self.events = events
    }

    /// Connects to ws://host:port/path (wss with `tls`), sending `headers` with the upgrade request.
    /// `trustRoots`: a PEM file of certificates to trust for wss (default: the system's).
    /// `answerPings: false` makes a client that never pongs (tests of the idle timeout).
    /// The server has `upgradeTimeout` to answer the upgrade once the socket is connected.
    public static func connect(
        host: String, port: Int, path: String, tls: Bool = false, trustRoots: String? = nil, headers: [(String, String)] = [],
        maxFrameBytes: Int = 1 << 24, answerPings: Bool = true, upgradeTimeout: Duration = .seconds(30)
    ) async throws -> WebSocketClient {
        let (events, continuation) = AsyncStream<WebSocketEvent>.makeStream()
        let group = MultiThreadedEventLoopGroup.singleton
        let upgraded = group.any().makePromise(of: Void.self)
        var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
        if let trustRoots { tlsConfiguration.trustRoots = .file(trustRoots) }
        let sslContext = tls ? try NIOSSLContext(configuration: tlsConfiguration) : nil
        let bootstrap = ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        // Server Name Indication carries host names only, never IP addresses.
                        let isAddress = (try? SocketAddress(ipAddress: host, port: 0)) != nil
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: isAddress ? nil : host))
                    }
                    let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: maxFrameBytes, automaticErrorHandling: true) { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 1024, maxAccumulatedFrameSize: maxFrameBytes))
                            try channel.pipeline.syncOperations.addHandler(ClientFrameHandler(continuation: continuation, answerPings: answerPings))
                            upgraded.succeed()
                        }
                    }
                    let request = UpgradeRequestHandler(host: host, port: port, path: path, headers: headers, failed: upgraded)
                    try channel.pipeline.syncOperations.addHTTPClientHandlers(
                        leftOverBytesStrategy: .forwardBytes,
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(request, promise: nil)
                        }))
                    try channel.pipeline.syncOperations.addHandler(request)
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            upgraded.fail(error)
            throw error
        }
        // Completing a promise twice keeps the first result, so the later of the two is ignored.
        let nanoseconds = upgradeTimeout.components.seconds * 1_000_000_000 + upgradeTimeout.components.attoseconds / 1_000_000_000
        let deadline = upgraded.futureResult.eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) {
            upgraded.fail(ParleyError(code: "timeout", message: "no answer to the WebSocket upgrade within \(upgradeTimeout)"))
        }
        defer { deadline.cancel() }
        do {
            try await upgraded.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return WebSocketClient(channel: channel, events: events)
    }

    /// Sends one text frame.
    public func send(_ text: String) async throws {
        try await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
    }

    /// Sends raw bytes as one text or binary frame (tests use it for malformed input).
    public func sendRaw(_ bytes: [UInt8], binary: Bool = false) async throws {
        try await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: binary ? .binary : .text, maskKey: .random(), data: ByteBuffer(bytes: bytes)))
    }

    /// Stops reading from the socket (tests of slow consumers), or starts again.
    public func setReading(_ reading: Bool) async throws {
        try await channel.setOption(.autoRead, value: reading).get()
    }

    /// Sends a close frame (1000) and closes the socket.
    public func close() async {
        var data = ByteBuffer()
        data.write(webSocketErrorCode: .normalClosure)
        try? await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data))
        try? await channel.close()
    }
}

/// Sends the upgrade request once connected; fails the connect if the server refuses.
private final class UpgradeRequestHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let host: String
    let port: Int
    let path: String
    let headers: [(String, String)]
    let failed: EventLoopPromise<Void>

    init(host: String, port: Int, path: String, headers: [(String, String)], failed: EventLoopPromise<Void>) {
        self.host = host
        self.port = port
        self.path = path
        self.headers = headers
        self.failed = failed
    }

    func channelActive(context: ChannelHandlerContext) {
        var requestHeaders = HTTPHeaders([("Host", "\(host):\(port)"), ("Content-Length", "0")])
        for (name, value) in headers { requestHeaders.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: requestHeaders)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            failed.fail(WebSocketClientError.upgradeRefused(status: Int(head.status.code)))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failed.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        failed.fail(WebSocketClientError.closedBeforeUpgrade)
        context.fireChannelInactive()
    }
}

public enum WebSocketClientError: Error, Equatable {
    case upgradeRefused(status: Int)
    case closedBeforeUpgrade
}

private final class ClientFrameHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let continuation: AsyncStream<WebSocketEvent>.Continuation
    let answerPings: Bool

    init(continuation: AsyncStream<WebSocketEvent>.Continuation, answerPings: Bool) {
        self.continuation = continuation
        self.answerPings = answerPings
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            continuation.yield(.text(String(buffer: frame.unmaskedData)))
        case .ping where answerPings:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            var data = frame.unmaskedData
            let code = data.readWebSocketErrorCode()
            let reason = data.readString(length: data.readableBytes) ?? ""
            continuation.yield(.closed(code: code.map { Int(UInt16(webSocketErrorCode: $0)) }, reason: reason))
            continuation.finish()
            context.close(promise: nil)
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.yield(.closed(code: nil, reason: "connection ended"))
        continuation.finish()
        context.fireChannelInactive()
    }
}
