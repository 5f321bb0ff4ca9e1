import ArgumentParser

/// Options of the scenarios whose senders keep a window of messages in flight.
struct FlowOptions: ParsableArguments {
    @Option(help: "Unacknowledged sends each sender may have.")
    var window = 32

    @Option(help: "Total messages per second to offer; 0 sends as fast as acks allow.")
    var rate = 0.0

    @Option(help: "Seconds measured, after the warm-up.")
    var duration = 10.0

    @Option(help: "Seconds of sending before measuring starts.")
    var warmup = 1.0

    @Option(name: .customLong("body-bytes"), help: "Bytes in each message body.")
    var bodyBytes = 100

    @Option(name: .customLong("max-messages"), help: "Stop sending after this many messages in all, whatever the duration.")
    var maxMessages = 5_000_000

    func validate() throws {
        guard window > 0, duration > 0, warmup >= 0, rate >= 0, bodyBytes >= 20, maxMessages > 0 else {
            throw ValidationError("window, duration and max-messages must be positive, rate and warmup not negative, body-bytes at least 20")
        }
    }
}
