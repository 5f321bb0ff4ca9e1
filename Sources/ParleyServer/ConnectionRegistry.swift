// Which devices of which users are online here, for delivery and revocation.
import ParleyCore
import Synchronization

public final class ConnectionRegistry: Sendable {
    /// A user's connections in an array: a user has few devices, and a fan-out copies the
    /// array whole instead of walking a dictionary's values.
    private let byUser = Mutex<[String: [ChatConnection]]>([:])

    /// Adds the connection. `first` runs under the registry's lock: what it sends reaches
    /// the connection ahead of any fan-out that finds the connection here.
    func add(_ connection: ChatConnection, userID: String, first: () -> Void = {}) {
        byUser.withLock { users in
            users[userID, default: []].append(connection)
            first()
        }
    }

    func remove(_ connection: ChatConnection, userID: String) {
        byUser.withLock { users in
            users[userID]?.removeAll { $0 === connection }
            if users[userID]?.isEmpty == true { users[userID] = nil }
        }
    }

    /// Every open connection of the user.
    func connections(of userID: String) -> [ChatConnection] {
        connections(of: [userID])
    }

    /// Every open connection of these users, looked up under one lock.
    func connections(of userIDs: [String]) -> [ChatConnection] {
        byUser.withLock { users in
            var found: [ChatConnection] = []
            found.reserveCapacity(userIDs.count)
            for userID in userIDs {
                if let connections = users[userID] { found.append(contentsOf: connections) }
            }
            return found
        }
    }

    /// Every connection, for shutdown.
    func all() -> [ChatConnection] {
        byUser.withLock { $0.values.flatMap { $0 } }
    }

    public var count: Int { byUser.withLock { $0.values.reduce(0) { $0 + $1.count } } }
}
