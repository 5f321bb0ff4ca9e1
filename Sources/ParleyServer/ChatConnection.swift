// One device's WebSocket connection as the rest of the server sees it: send a frame
// from any thread, close it with a code. Writes are flushed once per event-loop tick.
import NIOCore
import NIOWebSocket
import ParleyCore
import Synchronization

public final class ChatConnection: Sendable {
    let channel: any Channel
    let session = Mutex<Session?>(nil)
    private let flushScheduled: NIOLoopBoundBox<Bool>
    private let unwritableWrites: NIOLoopBoundBox<Int>
    private let closing: NIOLoopBoundBox<Bool>
    /// Frames written while the socket refuses more before the connection counts as a
    /// slow consumer and is closed (the device resyncs by cursor after reconnecting).
    let maxUnwritableWrites: Int

    init(channel: any Channel, maxUnwritableWrites: Int) {
        self.channel = channel
        self.maxUnwritableWrites = maxUnwritableWrites
        flushScheduled = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
        unwritableWrites = NIOLoopBoundBox(0, eventLoop: channel.eventLoop)
        closing = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
    }

    /// Queues a text frame; safe from any thread.
    func send(_ bytes: [UInt8]) {
        send(ByteBuffer(bytes: bytes))
    }

    func send(_ buffer: ByteBuffer) {
        if channel.eventLoop.inEventLoop {
            write(buffer)
        } else {
            channel.eventLoop.execute { self.write(buffer) }
        }
    }

    private func write(_ buffer: ByteBuffer) {
        guard channel.isActive, !closing.value else { return }
        if channel.isWritable {
            unwritableWrites.value = 0
        } else {
            unwritableWrites.value += 1
            if unwritableWrites.value > maxUnwritableWrites {
                close(code: .init(codeNumber: ChatCloseCode.slowConsumer), reason: "slow consumer: reconnect and sync")
                return
            }
        }
        channel.write(WebSocketFrame(fin: true, opcode: .text, data: buffer), promise: nil)
        scheduleFlush()
    }

    /// Flushes at the end of the current event-loop tick, once for every frame written in it.
    private func scheduleFlush() {
        guard !flushScheduled.value else { return }
        flushScheduled.value = true
        channel.eventLoop.execute {
            self.flushScheduled.value = false
            self.channel.flush()
        }
    }

    /// Sends a close frame with code and reason, then closes the socket.
    func close(code: WebSocketErrorCode, reason: String) {
        guard channel.eventLoop.inEventLoop else {
            channel.eventLoop.execute { self.close(code: code, reason: reason) }
            return
        }
        guard !closing.value, channel.isActive else { return }
        closing.value = true
        var data = channel.allocator.buffer(capacity: 2 + reason.utf8.count)
        data.write(webSocketErrorCode: code)
        data.writeString(reason)
        let channel = self.channel
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)).whenComplete { _ in
            channel.close(promise: nil)
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
