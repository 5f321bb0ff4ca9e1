import NIOCore

extension EventLoopFuture where Value: Sendable {
    /// This future's result, or a failure once `seconds` have passed without one.
    func timeout(after seconds: Double, _ what: String) -> EventLoopFuture<Value> {
        let promise = eventLoop.makePromise(of: Value.self)
        let timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) {
            promise.fail(BenchFailure("\(what) took longer than \(seconds) s"))
        }
        whenComplete { _ in timer.cancel() }
        cascade(to: promise)
        return promise.futureResult
    }
}
