// direct: sender and receiver pairs, one conversation each, messages flowing one way.
import ArgumentParser

/// P pairs of accounts; each sender keeps a bounded window of unacknowledged sends to
/// its receiver. Reports delivered messages per second, end-to-end and ack latency,
/// and the server's CPU time per delivered message.
struct DirectScenario: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "direct", abstract: "1:1 messages between sender/receiver pairs: throughput, latency, server CPU per message.")

    @OptionGroup var options: BenchOptions
    @OptionGroup var flowOptions: FlowOptions

    @Option(help: "Sender/receiver pairs, each one conversation.")
    var pairs = 50

    func validate() throws {
        guard pairs > 0, flowOptions.maxMessages >= pairs else { throw ValidationError("pairs must be positive and at most max-messages") }
    }

    func run() async throws {
        try await BenchSession.run(options) { try await measure(in: $0) }
    }

    private func measure(in session: BenchSession) async throws -> BenchReport {
        let accounts = try await session.accounts(pairs * 2, of: .direct)
        let connections = try await session.connect(tokens: accounts.map(\.token))
        let flow = MessageFlow(options: flowOptions)
        for pair in 0..<pairs {
            let sending = connections[pair * 2], receiving = connections[pair * 2 + 1]
            let conversation = try await sending.openConversation(with: accounts[pair * 2 + 1].username)
            try await flow.addReceiver(receiving)
            try await flow.addSender(sending, conversation: conversation, limit: flowOptions.maxMessages / pairs)
        }
        let result = try await flow.run("direct", in: session, deliveriesPerMessage: 1)
        for connection in connections { await connection.closeAndWait() }

        var report = BenchReport(scenario: "direct")
        report.setting("pairs", pairs)
        result.describe(in: &report, options: flowOptions, session: session)
        return report
    }
}
