// presence: many users come online at once, then go offline; their contacts are told.
import ArgumentParser
import Foundation
import NIOCore
import ParleyJSON
import Synchronization

/// N subjects, each a contact of the same C observers (a direct conversation with a
/// message makes two users contacts). With the observers online and the subjects
/// offline, all subjects connect at once: reports how fast the C × N `presence` online
/// events arrive and how long after a subject's connect. Then all subjects disconnect:
/// reports when the offline events arrive (the server's grace period included).
struct PresenceScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "presence", abstract: "N users come online and go offline at once: presence events to their contacts.")

    @OptionGroup var options: BenchOptions

    @Option(help: "Users who come online and go offline.")
    var subjects = 200

    @Option(help: "Contacts of every subject, online throughout.")
    var contacts = 5

    @Option(help: "The server's presence.grace_seconds: how long to wait for subjects to count as offline.")
    var grace = 5.0

    func validate() throws {
        guard subjects > 0, (1...50).contains(contacts), grace >= 0 else { throw ValidationError("subjects must be positive, contacts 1 to 50") }
    }

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let accounts = try await session.accounts(contacts + subjects, of: .presence)
        let observerAccounts = Array(accounts.prefix(contacts)), subjectAccounts = Array(accounts.dropFirst(contacts))
        try await makeContacts(subjectAccounts, observerAccounts, in: session)
        // Subjects were online for that: wait until the server counts them offline.
        try await Task.sleep(for: .seconds(grace + 1))

        let timeline = PresenceTimeline()
        let observerConnections = try await session.connect(tokens: observerAccounts.map(\.token))
        var observers: [PresenceObserver] = []
        for connection in observerConnections {
            observers.append(try await connection.eventLoop.submit { PresenceObserver(connection: connection, timeline: timeline) }.get())
        }
        let expected = subjects * contacts
        let progress = ProgressLine("presence") { "online events \(timeline.onlineEvents.load(ordering: .relaxed)), offline events \(timeline.offlineEvents.load(ordering: .relaxed)) of \(expected)" }
        defer { progress.stop() }

        let before = session.cpuSnapshot()
        let subjectConnections = try await session.connect(tokens: subjectAccounts.map(\.token)) { index in
            timeline.markConnecting(subjectAccounts[index].username, at: MonotonicClock.nanoseconds())
        }
        try await waitUntil(expected, timeline.onlineEvents, seconds: 30)
        let allOnline = session.cpuSnapshot()
        for (account, connection) in zip(subjectAccounts, subjectConnections) {
            timeline.markDisconnecting(account.username, at: MonotonicClock.nanoseconds())
            await connection.closeAndWait()
        }
        try await waitUntil(expected, timeline.offlineEvents, seconds: grace + 30)
        let allOffline = session.cpuSnapshot()

        var online = LatencyHistogram(), offline = LatencyHistogram()
        for observer in observers {
            let (up, down) = try await observer.connection.eventLoop.submit { (observer.online, observer.offline) }.get()
            online.add(up)
            offline.add(down)
        }
        for connection in observerConnections { await connection.closeAndWait() }

        var report = BenchReport(scenario: "presence")
        report.setting("subjects", subjects)
        report.setting("contacts per subject", contacts)
        report.setting("grace seconds", String(grace))
        report.setting("server", session.serverDescription)
        report.figure("online_events", Double(online.count), "online events received (of \(expected))")
        report.figure("offline_events", Double(offline.count), "offline events received (of \(expected))")
        report.figure("all_online_ms", before.seconds(until: allOnline) * 1e3, "first connect to last online event (ms)", decimals: 1)
        report.figure("online_events_per_second", Double(online.count) / before.seconds(until: allOnline), "online events per second")
        report.latencies("online", online, "connect to contact told")
        report.latencies("offline", offline, "disconnect to contact told")
        for (kind, count) in [("online", online.count), ("offline", offline.count)] where count < expected {
            report.note("\(expected - count) of \(expected) \(kind) events never arrived: the server lost presence changes")
        }
        if let serverSeconds = before.serverSeconds(until: allOnline) {
            report.figure("server_cpu_us_per_online", serverSeconds * 1e6 / Double(max(subjects, 1)), "server CPU per subject coming online (µs)", decimals: 1)
        }
        if let serverSeconds = allOnline.serverSeconds(until: allOffline) {
            report.figure("server_cpu_us_per_offline", serverSeconds * 1e6 / Double(max(subjects, 1)), "server CPU per subject going offline (µs)", decimals: 1)
        }
        return report
    }

    /// Each subject sends each observer one message (the same client id every run, so
    /// later runs store nothing new): that makes them contacts.
    private func makeContacts(_ subjects: [BenchAccount], _ observers: [BenchAccount], in session: BenchSession) async throws {
        let connections = try await session.connect(tokens: subjects.map(\.token))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for (subject, connection) in zip(subjects, connections) {
                tasks.addTask {
                    for observer in observers {
                        let conversation = "d:" + min(subject.userID, observer.userID) + ":" + max(subject.userID, observer.userID)
                        _ = try await connection.call("send", id: "contact-\(observer.username)", expecting: "ack") { writer in
                            writer.field("conversation", conversation)
                            writer.field("client_id", "parley-bench-contact")
                            writer.field("content_type", "text/plain")
                            writer.field("body", "hello from parley-bench")
                        }
                    }
                }
            }
            try await tasks.waitForAll()
        }
        for connection in connections { await connection.closeAndWait() }
    }

    private func waitUntil(_ expected: Int, _ counter: borrowing Atomic<Int>, seconds: Double) async throws {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while counter.load(ordering: .relaxed) < expected, MonotonicClock.nanoseconds() < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}
