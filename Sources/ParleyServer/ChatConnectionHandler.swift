// The channel handler at the end of each WebSocket pipeline: reads frames, enforces
// the rate limit, answers pings, and hands text frames to the ChatService.
public import NIOCore
import NIOWebSocket
import ParleyCore
import ParleyJSON
import Synchronization

/// Limits and timers of the chat listener.
public struct ChatListenerSettings: Sendable {
    public var maxFrameBytes = 131_072
    public var pingInterval: TimeAmount = .seconds(15)
    public var idleTimeout: TimeAmount = .seconds(45)
    public var authenticationTimeout: TimeAmount = .seconds(10)
    /// Frames per second a connection may send, and the burst it may save up.
    public var framesPerSecond: Double = 200
    public var burstFrames: Double = 400
    /// Frames queued while the socket refuses more before the connection is closed.
    public var maxUnwritableWrites = 2_000
    public init() {}

    /// The three timeouts, as each connection keeps them.
    struct Timing {
        var authentication: TimeAmount
        var ping: TimeAmount
        var idle: TimeAmount
    }

    var timing: Timing { Timing(authentication: authenticationTimeout, ping: pingInterval, idle: idleTimeout) }
}

final class ChatConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let service: ChatService
    private let settings: ChatListenerSettings
    private let headerToken: String?
    private var connection: ChatConnection?
    private var tokens: Double
    private var lastRefill = NIODeadline.now()

    init(service: ChatService, settings: ChatListenerSettings, headerToken: String?) {
        self.service = service
        self.settings = settings
        self.headerToken = headerToken
        tokens = settings.burstFrames
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // The upgrader put the frame encoder in the pipeline before this handler; frames
        // are encoded by ChatConnection and written through the encoder's context.
        guard let encoder = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self) else {
            context.close(promise: nil)
            return
        }
        let connection = ChatConnection(channel: context.channel, socketContext: encoder, maxUnwritableWrites: settings.maxUnwritableWrites, timing: settings.timing)
        self.connection = connection
        if let headerToken {
            service.handle(ByteBuffer(bytes: ChatFrames.reply("hello", id: nil) { $0.field("token", headerToken) }).readableBytesView, from: connection)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let connection {
            connection.detach()
            service.disconnected(connection)
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard let connection else { return }
        connection.lastRead = .now()
        switch frame.opcode {
        case .text:
            guard allowFrame() else {
                // The reply names the dropped request, so the client can retry it.
                let id = (try? JSONParser.parse(frame.unmaskedData.readableBytesView))?["id"]?.stringValue
                connection.send(ChatFrames.error(id: id, ChatError("rate_limited", "more than \(Int(settings.framesPerSecond)) frames per second; this frame was dropped")))
                return
            }
            service.handle(frame.unmaskedData.readableBytesView, from: connection)
        case .binary:
            connection.send(ChatFrames.error(id: nil, ChatError("unsupported_frame", "binary frames are not used; send JSON text frames")))
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            var data = frame.unmaskedData
            let code = data.readWebSocketErrorCode() ?? .normalClosure
            connection.close(code: code, reason: "")
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOWebSocketFrameAggregator.Error, let connection {
            connection.close(code: .messageTooLarge, reason: "message larger than \(settings.maxFrameBytes) bytes")
            return
        }
        if let error = error as? NIOWebSocketError, let connection {
            let tooLarge = error == .invalidFrameLength
            connection.close(code: tooLarge ? .messageTooLarge : .protocolError, reason: tooLarge ? "frame larger than \(settings.maxFrameBytes) bytes" : "WebSocket protocol error")
            return
        }
        context.close(promise: nil)
    }

    /// A token bucket: `framesPerSecond` refill, `burstFrames` capacity.
    private func allowFrame() -> Bool {
        let now = NIODeadline.now()
        let elapsed = Double((now - lastRefill).nanoseconds) / 1e9
        lastRefill = now
        tokens = min(settings.burstFrames, tokens + elapsed * settings.framesPerSecond)
        guard tokens >= 1 else { return false }
        tokens -= 1
        return true
    }
}
