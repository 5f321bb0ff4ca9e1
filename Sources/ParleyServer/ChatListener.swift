// The chat listener: HTTP/1.1 that upgrades GET /v1/ws to a WebSocket, on SwiftNIO.
public import NIOCore
import NIOHTTP1
import NIOPosix
public import NIOSSL
import NIOWebSocket

public final class ChatListener: Sendable {
    public static let path = "/v1/ws"

    private let channel: any Channel
    public let port: Int

    /// Binds host:port (port 0 picks a free one) and starts accepting connections.
    public static func start(host: String, port: Int, service: ChatService, settings: ChatListenerSettings, tls: NIOSSLContext?, group: any EventLoopGroup) async throws -> ChatListener {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: 64 * 1024, high: 256 * 1024))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
                    }
                    let upgrader = NIOWebSocketServerUpgrader(
                        maxFrameSize: settings.maxFrameBytes,
                        automaticErrorHandling: true,
                        shouldUpgrade: { channel, head in
                            guard head.uri == path || head.uri.hasPrefix(path + "?") else {
                                return channel.eventLoop.makeSucceededFuture(nil)
                            }
                            return channel.eventLoop.makeSucceededFuture(HTTPHeaders())
                        },
                        upgradePipelineHandler: { channel, head in
                            channel.eventLoop.makeCompletedFuture {
                                let token = head.headers.first(name: "Authorization").flatMap { value -> String? in
                                    let parts = value.split(separator: " ", maxSplits: 1)
                                    return parts.count == 2 && parts[0].lowercased() == "bearer" ? String(parts[1]) : nil
                                }
                                let operations = channel.pipeline.syncOperations
                                try operations.addHandler(NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 1, maxAccumulatedFrameCount: 64, maxAccumulatedFrameSize: settings.maxFrameBytes))
                                try operations.addHandler(IdleStateHandler(readTimeout: settings.pingInterval))
                                try operations.addHandler(ChatConnectionHandler(service: service, settings: settings, headerToken: token))
                            }
                        }
                    )
                    let notFound = NotWebSocketHandler()
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { context in
                            context.pipeline.syncOperations.removeHandler(notFound, promise: nil)
                        })
                    )
                    try channel.pipeline.syncOperations.addHandler(notFound)
                }
            }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        return ChatListener(channel: channel, port: channel.localAddress?.port ?? port)
    }

    private init(channel: any Channel, port: Int) {
        self.channel = channel
        self.port = port
    }

    /// Stops accepting connections.
    public func close() async {
        try? await channel.close()
    }
}

/// Answers plain HTTP requests to the chat listener: only GET /v1/ws with an upgrade is served.
private final class NotWebSocketHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = unwrapInboundIn(data) else { return }
        let upgrade = head.uri.hasPrefix(ChatListener.path)
        let body = "{\"code\":\"\(upgrade ? "upgrade_required" : "not_found")\",\"message\":\"connect a WebSocket to \(ChatListener.path)\"}"
        var headers = HTTPHeaders()
        if upgrade {
            headers.add(name: "Upgrade", value: "websocket")
        }
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.utf8.count))
        headers.add(name: "Connection", value: "close")
        let status: HTTPResponseStatus = upgrade ? .upgradeRequired : .notFound
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.close(mode: .output, promise: nil)
    }
}
