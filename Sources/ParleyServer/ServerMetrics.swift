// The server's Prometheus metrics, served at GET /metrics.
public import Prometheus

/// Counters and histograms of one server, in one registry.
public final class ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let connections: Gauge
    let messagesIn: Counter
    let messagesOut: Counter
    let acks: Counter
    let errors: Counter
    let storageLatency: DurationHistogram

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "parley", metricName: metric, unitName: unit, helpText: help)
        }
        connections = registry.makeGauge(descriptor: name("connections", "", "Authenticated chat connections open now"))
        messagesIn = registry.makeCounter(descriptor: name("messages_in", "total", "Messages received from devices"))
        messagesOut = registry.makeCounter(descriptor: name("messages_out", "total", "Message frames delivered to devices"))
        acks = registry.makeCounter(descriptor: name("acks", "total", "Acknowledgements sent after durable storage"))
        errors = registry.makeCounter(descriptor: name("request_errors", "total", "Requests answered with an error"))
        storageLatency = registry.makeDurationHistogram(
            descriptor: name("storage_commit", "seconds", "Time from a message's arrival to its durable storage"), buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1)])
    }

    /// The Prometheus text exposition of every metric.
    public func exposition() -> [UInt8] { registry.emitToBuffer() }
}
