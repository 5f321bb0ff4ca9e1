// The outcome of one scenario run: printed as a table for people or as JSON.
import Foundation
import ParleyJSON

/// The settings and measured figures of one run, in the order they were added.
struct BenchReport: Sendable {
    struct Figure: Sendable {
        var key: String
        var label: String
        var value: Double
        var decimals: Int
    }

    let scenario: String
    private(set) var settings: [(key: String, value: String)] = []
    private(set) var figures: [Figure] = []
    private(set) var notes: [String] = []

    init(scenario: String) {
        self.scenario = scenario
    }

    mutating func setting(_ key: String, _ value: String) {
        settings.append((key, value))
    }

    mutating func setting(_ key: String, _ value: Int) {
        setting(key, String(value))
    }

    /// Adds a figure; `key` names it in JSON, `label` in the table.
    mutating func figure(_ key: String, _ value: Double, _ label: String, decimals: Int = 0) {
        figures.append(Figure(key: key, label: label, value: value.isFinite ? value : 0, decimals: decimals))
    }

    mutating func latencies(_ key: String, _ histogram: LatencyHistogram, _ label: String) {
        figure("\(key)_p50_ms", histogram.milliseconds(atPercentile: 50), "\(label) p50 (ms)", decimals: 3)
        figure("\(key)_p99_ms", histogram.milliseconds(atPercentile: 99), "\(label) p99 (ms)", decimals: 3)
        figure("\(key)_p999_ms", histogram.milliseconds(atPercentile: 99.9), "\(label) p99.9 (ms)", decimals: 3)
        figure("\(key)_max_ms", histogram.maxMilliseconds, "\(label) max (ms)", decimals: 3)
    }

    /// A remark for the reader, such as a warning that the client was saturated.
    mutating func note(_ text: String) {
        notes.append(text)
    }

    func value(_ key: String) -> Double? {
        figures.first { $0.key == key }?.value
    }

    var json: String {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("scenario", scenario)
        writer.beginObject("settings")
        for (key, value) in settings { writer.field(key, value) }
        writer.endObject()
        writer.beginObject("results")
        for figure in figures { writer.rawField(figure.key, Array(Self.number(figure.value, decimals: max(figure.decimals, 3)).utf8)) }
        writer.endObject()
        writer.beginArray("notes")
        for note in notes { writer.element(note) }
        writer.endArray()
        writer.endObject()
        return String(decoding: writer.bytes, as: UTF8.self)
    }

    var table: String {
        let rows = settings.map { ($0.key, $0.value) } + figures.map { ($0.label, Self.grouped($0.value, decimals: $0.decimals)) }
        let width = rows.map(\.0.count).max() ?? 0
        let valueWidth = rows.map(\.1.count).max() ?? 0
        var lines = ["parley-bench \(scenario)"]
        for (index, row) in rows.enumerated() {
            if index == settings.count { lines.append(String(repeating: "-", count: width + 2 + valueWidth)) }
            lines.append(row.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + String(repeating: " ", count: valueWidth - row.1.count) + row.1)
        }
        lines += notes.map { "note: \($0)" }
        return lines.joined(separator: "\n")
    }

    private static func number(_ value: Double, decimals: Int) -> String {
        String(format: "%.\(decimals)f", value)
    }

    /// 12345.6 with 0 decimals gives "12,346".
    static func grouped(_ value: Double, decimals: Int) -> String {
        let text = number(value, decimals: decimals)
        let parts = text.split(separator: ".", maxSplits: 1)
        var whole = String(parts[0])
        let negative = whole.hasPrefix("-")
        if negative { whole.removeFirst() }
        var groups: [Substring] = []
        while whole.count > 3 {
            groups.insert(whole.suffix(3)[...], at: 0)
            whole.removeLast(3)
        }
        groups.insert(whole[...], at: 0)
        return (negative ? "-" : "") + groups.joined(separator: ",") + (parts.count > 1 ? "." + parts[1] : "")
    }
}
