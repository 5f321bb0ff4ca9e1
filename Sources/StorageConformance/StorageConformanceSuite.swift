// The behaviour every storage plugin must show, checked through the host's
// StorageBackend facade exactly as the server uses it.
public import PluginHost

/// A failed expectation inside a conformance check.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public var description: String
}

/// The outcome of one check.
public struct ConformanceResult: Sendable {
    public var name: String
    public var failure: String?
    public var passed: Bool { failure == nil }
}

/// Opens storage backends on one configuration and closes them again, so the
/// suite can prove data survives a restart of the plugin instance.
public struct StorageConformanceSuite: Sendable {
    public typealias Open = @Sendable () async throws -> StorageBackend

    private let open: Open
    private let checkRestart: Bool

    /// `open` creates a fresh instance on the same database every time it is called.
    /// `checkRestart: false` skips the durability check, for in-memory backends.
    public init(checkRestart: Bool = true, open: @escaping Open) {
        self.open = open
        self.checkRestart = checkRestart
    }

    /// The checks, in the order they run.
    public static let checks: [(name: String, run: @Sendable (StorageBackend) async throws -> Void)] = [
        ("get of a missing row returns nothing", StorageChecks.missingRow),
        ("put then get returns the value; put replaces", StorageChecks.putAndReplace),
        ("delete removes a row; deleting an absent row succeeds", StorageChecks.delete),
        ("scan orders sort keys as unsigned bytes", StorageChecks.scanOrder),
        ("scan honours every combination of bounds", StorageChecks.scanBounds),
        ("reverse scan honours bounds and limits", StorageChecks.reverseScan),
        ("scan limit stops at the limit", StorageChecks.scanLimit),
        ("scan stays inside its table and partition", StorageChecks.partitionIsolation),
        ("empty partition and sort keys work", StorageChecks.emptyKeys),
        ("binary keys with zero bytes work", StorageChecks.binaryKeys),
        ("large values round-trip up to the limit", StorageChecks.largeValues),
        ("a batch with a failed condition applies nothing", StorageChecks.atomicBatch),
        ("put-if-absent and compare-and-set conditions", StorageChecks.conditions),
        ("later writes in a batch see earlier ones", StorageChecks.writeOrder),
        ("counters add atomically and return the new value", StorageChecks.counters),
        ("put-if-absent under concurrent callers has one winner", StorageChecks.concurrentPutIfAbsent),
        ("concurrent batches are all applied", StorageChecks.concurrentBatches),
        ("errors are reported, not crashed", StorageChecks.errorsReported),
    ]

    /// Runs every check on one instance, then the restart check on a second one.
    /// `progress` is told each result as it arrives.
    public func run(progress: @Sendable (ConformanceResult) -> Void = { _ in }) async -> [ConformanceResult] {
        var results: [ConformanceResult] = []
        func record(_ name: String, _ failure: String?) {
            let result = ConformanceResult(name: name, failure: failure)
            results.append(result)
            progress(result)
        }
        let backend: StorageBackend
        do {
            backend = try await open()
        } catch {
            record("the plugin starts", "\(error)")
            return results
        }
        for check in Self.checks {
            do {
                try await check.run(backend)
                record(check.name, nil)
            } catch {
                record(check.name, "\(error)")
            }
        }
        let restart = "acknowledged writes survive a restart"
        guard checkRestart else {
            await backend.instance.shutdown()
            return results
        }
        do {
            try await StorageChecks.writeBeforeRestart(backend)
            await backend.instance.shutdown()
            let reopened = try await open()
            var failure: (any Error)?
            do { try await StorageChecks.readAfterRestart(reopened) } catch { failure = error }
            await reopened.instance.shutdown()
            record(restart, failure.map { "\($0)" })
        } catch {
            await backend.instance.shutdown()
            record(restart, "\(error)")
        }
        return results
    }
}
