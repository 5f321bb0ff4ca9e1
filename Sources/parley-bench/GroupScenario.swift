// group: one group of up to 100 members, K of them sending; every message fans out.
import ArgumentParser
import NIOCore
import ParleyJSON

/// Creates a group of M members (one connection each; the group is new each run, since
/// group changes are not idempotent), and has K members send to it with a bounded window.
/// Every message reaches the M − 1 other members. Reports messages sent and delivered
/// per second, end-to-end latency per delivery, and server CPU per delivery.
struct GroupScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "group", abstract: "A group of M members with K senders: fan-out throughput, latency, server CPU per delivery.")

    @OptionGroup var options: BenchOptions
    @OptionGroup var flowOptions: FlowOptions

    @Option(help: "Members of the group, the creator included (the server allows 100).")
    var members = 100

    @Option(help: "Members that send.")
    var senders = 10

    func validate() throws {
        guard members >= 2, (1...members).contains(senders), flowOptions.maxMessages >= senders else {
            throw ValidationError("a group needs at least 2 members and 1 to members senders")
        }
    }

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let accounts = try await session.accounts(members, of: .group)
        let connections = try await session.connect(tokens: accounts.map(\.token))
        let reply = try await connections[0].call("group_create", id: "create", expecting: "group_updated") { writer in
            writer.field("name", "parley-bench")
            writer.beginArray("members")
            for account in accounts.dropFirst() { writer.element(account.username) }
            writer.endArray()
        }
        guard let group = reply.withUnsafeReadableBytes({ FrameScanner(bytes: $0).text("conversation") }) else {
            throw BenchFailure("group_create gave no conversation: \(String(buffer: reply))")
        }
        // Let the `created` event reach everyone before counting messages.
        try await Task.sleep(for: .milliseconds(200))
        let flow = MessageFlow(options: flowOptions)
        for connection in connections { try await flow.addReceiver(connection) }
        for connection in connections.prefix(senders) {
            try await flow.addSender(connection, conversation: group, limit: flowOptions.maxMessages / senders)
        }
        let result = try await flow.run("group", in: session, deliveriesPerMessage: members - 1)
        for connection in connections { await connection.closeAndWait() }

        var report = BenchReport(scenario: "group")
        report.setting("members", members)
        report.setting("senders", senders)
        result.describe(in: &report, options: flowOptions, session: session)
        return report
    }
}
