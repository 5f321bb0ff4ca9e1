// Frames reach a connection in the order they were sent, whichever thread sent them.
import Dispatch
import Foundation
import NIOCore
import NIOWebSocket
import ParleyClient
import ParleyJSON
@testable import ParleyServer
import Testing

@Suite("Frame order", .timeLimit(.minutes(3)))
struct FrameOrderTests {
    /// A frame handed over from another thread waits in the loop writer's inbox until the
    /// loop takes it. A frame sent on the loop in the meantime (an error reply) must queue
    /// behind it, not overtake it.
    @Test func frameSentOnTheLoopDoesNotOvertakeOneHandedOverBefore() async throws {
        let server = try await TestServer.start()
        let login = try await server.user("ordered")[0]
        let session = try await server.connect(login)
        let inbox = Inbox(session)
        let connection = try #require(server.node.chat.registry.connections(of: session.userID).first)
        for round in 0..<20 {
            let handedOver = DispatchSemaphore(value: 0)
            connection.writer.eventLoop.execute {
                // The loop is busy here, so the frame from the other thread stays in the inbox.
                Thread {
                    connection.send(JSONWriter.frame("probe", id: nil) { $0.field("n", 2 * round) })
                    handedOver.signal()
                }.start()
                handedOver.wait()
                connection.send(JSONWriter.frame("probe", id: nil) { $0.field("n", 2 * round + 1) })
            }
        }
        let deadline = ContinuousClock.now + .seconds(10)
        var numbers: [Int64] = []
        while numbers.count < 40, ContinuousClock.now < deadline {
            numbers = await inbox.timeline.compactMap(Self.probeNumber)
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(numbers == (0..<40).map(Int64.init))
        await session.close()
        await server.stop()
    }

    /// The same for a close made on the loop (after a protocol error, or answering the
    /// client's close): the frame handed over before it still arrives, then the close.
    @Test func closeOnTheLoopComesAfterAFrameHandedOverBefore() async throws {
        let server = try await TestServer.start()
        let login = try await server.user("closing")[0]
        let session = try await server.connect(login)
        let inbox = Inbox(session)
        let connection = try #require(server.node.chat.registry.connections(of: session.userID).first)
        let handedOver = DispatchSemaphore(value: 0)
        connection.writer.eventLoop.execute {
            Thread {
                connection.send(JSONWriter.frame("probe", id: nil) { $0.field("n", 1) })
                handedOver.signal()
            }.start()
            handedOver.wait()
            connection.close(code: .policyViolation, reason: "test")
        }
        let deadline = ContinuousClock.now + .seconds(10)
        var timeline: [ChatEvent] = []
        while ContinuousClock.now < deadline {
            timeline = await inbox.timeline
            if timeline.contains(where: { if case .closed = $0 { true } else { false } }) { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        let probe = timeline.firstIndex { Self.probeNumber($0) == 1 }
        let closed = timeline.firstIndex { if case .closed = $0 { true } else { false } }
        #expect(probe != nil && closed != nil && probe! < closed!, "\(timeline)")
        await server.stop()
    }

    private static func probeNumber(_ event: ChatEvent) -> Int64? {
        guard case .other(let frame) = event, frame["type"]?.stringValue == "probe" else { return nil }
        return frame["n"]?.int64Value
    }
}
