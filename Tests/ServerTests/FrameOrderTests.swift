// Frames reach a connection in the order they were sent, whichever thread sent them.
import Dispatch
import Foundation
import NIOCore
import ParleyClient
import ParleyJSON
@testable import ParleyServer
import Testing

@Suite("Frame order")
struct FrameOrderTests {
    /// A frame handed over from another thread waits in the loop writer's inbox until the
    /// loop takes it. A frame sent on the loop in the meantime (an error reply, a pong)
    /// must queue behind it, not overtake it.
    @Test func frameSentOnTheLoopDoesNotOvertakeOneHandedOverBefore() async throws {
        let server = try await TestServer.start()
        defer { Task { await server.stop() } }
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
    }

    private static func probeNumber(_ event: ChatEvent) -> Int64? {
        guard case .other(let frame) = event, frame["type"]?.stringValue == "probe" else { return nil }
        return frame["n"]?.int64Value
    }
}
