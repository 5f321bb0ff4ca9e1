import Synchronization

/// When each subject of the presence scenario connected or disconnected, by username,
/// written by the scenario; and how many events the observers have seen so far.
final class PresenceTimeline: Sendable {
    private let connected = Mutex<[String: UInt64]>([:])
    private let disconnected = Mutex<[String: UInt64]>([:])
    let onlineEvents = Atomic<Int>(0)
    let offlineEvents = Atomic<Int>(0)

    func markConnecting(_ username: String, at time: UInt64) {
        connected.withLock { $0[username] = time }
    }

    func markDisconnecting(_ username: String, at time: UInt64) {
        disconnected.withLock { $0[username] = time }
    }

    func connectTime(_ username: String) -> UInt64? { connected.withLock { $0[username] } }
    func disconnectTime(_ username: String) -> UInt64? { disconnected.withLock { $0[username] } }
}

/// A contact's connection in the presence scenario: times each `presence` event from
/// the subject's connect (online) or disconnect (offline). Confined to its event loop.
final class PresenceObserver: @unchecked Sendable {
    let connection: BenchConnection
    private let timeline: PresenceTimeline
    private(set) var online = LatencyHistogram()
    private(set) var offline = LatencyHistogram()

    init(connection: BenchConnection, timeline: PresenceTimeline) {
        self.connection = connection
        self.timeline = timeline
        connection.onFrame = { [unowned self] frame in self.received(frame) }
    }

    private func received(_ frame: FrameScanner) {
        guard frame.string("type", equals: "presence"), let username = frame.text("username") else { return }
        let now = MonotonicClock.nanoseconds()
        if frame.isTrue("online") {
            guard let start = timeline.connectTime(username) else { return }
            online.record(nanoseconds: now &- start)
            timeline.onlineEvents.add(1, ordering: .relaxed)
        } else {
            guard let start = timeline.disconnectTime(username) else { return }
            offline.record(nanoseconds: now &- start)
            timeline.offlineEvents.add(1, ordering: .relaxed)
        }
    }
}
