// The chat listener: HTTP/1.1 that upgrades GET /v1/ws to a WebSocket, on SwiftNIO
// (the handshake is ChatHandshakeHandler's).
public import NIOCore
import NIOPosix
public import NIOSSL

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
                    try channel.pipeline.syncOperations.addHandler(ChatHandshakeHandler(service: service, settings: settings))
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
