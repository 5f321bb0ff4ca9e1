// The accounts created on one server, kept in the state folder: every account costs
// the server an Argon2id hash for sign-up and another for log-in (tens of
// milliseconds each, on purpose), so they are made once and reused by later runs.
import Foundation
import ParleyClient
import Synchronization

/// The accounts file of one server and pool, and the provisioning that tops it up.
final class AccountStore: @unchecked Sendable {
    private let file: URL
    private let pool: AccountPool
    private(set) var accounts: [BenchAccount]

    init(file: URL, pool: AccountPool) throws {
        self.file = file
        self.pool = pool
        if let data = try? Data(contentsOf: file) {
            accounts = try JSONDecoder().decode([BenchAccount].self, from: data)
        } else {
            accounts = []
        }
    }

    func save() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(accounts).write(to: file, options: .atomic)
    }

    static let password = "parley-bench password"

    /// Makes sure at least `count` accounts exist, signing up and logging in the missing
    /// ones through the HTTP API, `concurrency` at a time. A username the server already
    /// has (the file was lost) is logged in with the tool's fixed password.
    func provision(_ count: Int, api: ParleyAPI, concurrency: Int = 4) async throws -> [BenchAccount] {
        guard accounts.count < count else { return Array(accounts.prefix(count)) }
        let first = accounts.count
        let done = Atomic<Int>(first)
        let progress = ProgressLine("provisioning") { "\(done.load(ordering: .relaxed)) of \(count) accounts (Argon2id: tens of ms each, once)" }
        defer { progress.stop() }
        var created: [Int: BenchAccount] = [:]
        try await withThrowingTaskGroup(of: (Int, BenchAccount).self) { group in
            var next = first
            while next < count || !group.isEmpty {
                // Started but not finished: neither appended nor waiting for an earlier one.
                while next < count, next - accounts.count - created.count < concurrency {
                    let index = next
                    let username = pool.username(index)
                    group.addTask { (index, try await Self.create(username, api: api)) }
                    next += 1
                }
                guard let (index, account) = try await group.next() else { break }
                created[index] = account
                done.add(1, ordering: .relaxed)
                // Keep what is done even if the run is interrupted.
                var ready = accounts.count
                while let account = created[ready] {
                    accounts.append(account)
                    created[ready] = nil
                    ready += 1
                }
                if accounts.count % 100 == 0 { try save() }
            }
        }
        try save()
        guard accounts.count >= count else { throw BenchFailure("only \(accounts.count) of \(count) accounts could be created") }
        return Array(accounts.prefix(count))
    }

    private static func create(_ username: String, api: ParleyAPI) async throws -> BenchAccount {
        try await retryingWhenBusy {
            do {
                try await api.signUp(username: username, password: password)
            } catch let error as ParleyError where error.code == "username_taken" {
                return
            }
        }
        let login = try await retryingWhenBusy { try await api.logIn(username: username, password: password, deviceName: "parley-bench") }
        return BenchAccount(username: username, password: password, userID: login.userID, deviceID: login.deviceID, token: login.token)
    }

    /// The server answers 503 busy when its hashing queue is full; wait and try again.
    private static func retryingWhenBusy<T>(_ body: () async throws -> T) async throws -> T {
        while true {
            do {
                return try await body()
            } catch let error as ParleyError where error.code == "busy" {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }
}
