// The channel handler at the end of each WebSocket pipeline: reads frames, enforces
// the rate limit, answers pings, and hands text frames to the ChatService.
public import NIOCore
import NIOWebSocket
import ParleyCore
import ParleyJSON
import ParleyWebSocket
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

/// The one handler of a chat connection after its handshake: reads WebSocket frames
/// (`WebSocketReader`), enforces the rate limit, answers pings, and hands text messages to
/// the ChatService. Frames it sends are encoded by `ChatConnection`.
final class ChatConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let service: ChatService
    private let settings: ChatListenerSettings
    private let headerToken: String?
    private var connection: ChatConnection?
    private var reader: WebSocketReader
    /// A close frame was received or sent, or the frames broke the protocol: read no more.
    private var finished = false
    private var tokens: Double
    private var lastRefill = NIODeadline.now()

    /// The handshake's answer, when it waits to leave with the first frame; handed to the
    /// connection and dropped here, so idle connections do not keep it.
    private var heldAnswer: ByteBuffer?

    init(service: ChatService, settings: ChatListenerSettings, headerToken: String?, heldAnswer: ByteBuffer? = nil) {
        self.service = service
        self.settings = settings
        self.headerToken = headerToken
        self.heldAnswer = heldAnswer
        reader = WebSocketReader(maxMessageBytes: settings.maxFrameBytes)
        tokens = settings.burstFrames
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let connection = ChatConnection(channel: context.channel, socketContext: context, maxUnwritableWrites: settings.maxUnwritableWrites, timing: settings.timing)
        self.connection = connection
        if let answer = heldAnswer.take() { connection.hold(answer) }
        if let headerToken { service.authenticate(connection, token: headerToken, id: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let connection {
            connection.detach()
            service.disconnected(connection)
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection, !finished else { return }
        var bytes = unwrapInboundIn(data)
        reader.append(&bytes)
        do throws(WebSocketReader.Failure) {
            while !finished, let event = try reader.next() {
                // Whole frames count as signs of life, not bytes: a trickle of a frame's bytes
                // does not keep a connection open.
                connection.lastRead = .now()
                handle(event, connection)
            }
        } catch {
            finished = true
            switch error {
            case .tooLarge: connection.close(code: .messageTooLarge, reason: "message larger than \(settings.maxFrameBytes) bytes")
            case .protocolError(let reason): connection.close(code: .protocolError, reason: reason)
            }
        }
    }

    private func handle(_ event: WebSocketReader.Event, _ connection: ChatConnection) {
        switch event {
        case .text(let payload):
            guard allowFrame() else {
                // The reply names the dropped request, so the client can retry it.
                let id = (try? JSONParser.parse(payload.readableBytesView))?["id"]?.stringValue
                connection.send(ChatFrames.error(id: id, ChatError("rate_limited", "more than \(Int(settings.framesPerSecond)) frames per second; this frame was dropped")))
                return
            }
            service.handle(payload.readableBytesView, from: connection)
        case .binary:
            connection.send(ChatFrames.error(id: nil, ChatError("unsupported_frame", "binary frames are not used; send JSON text frames")))
        case .ping(let payload):
            connection.sendControl(opcode: WebSocketFrames.pong, payload)
        case .pong:
            break
        case .close(let code):
            finished = true
            connection.close(code: code.map { WebSocketErrorCode(codeNumber: Int($0)) } ?? .normalClosure, reason: "")
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        connection?.writable = context.channel.isWritable
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
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
