// Which devices of which users are online here, for delivery and revocation.
import ParleyCore
import Synchronization

public final class ConnectionRegistry: Sendable {
    private let byUser = Mutex<[String: [ObjectIdentifier: ChatConnection]]>([:])

    func add(_ connection: ChatConnection, userID: String) {
        byUser.withLock { $0[userID, default: [:]][ObjectIdentifier(connection)] = connection }
    }

    func remove(_ connection: ChatConnection, userID: String) {
        byUser.withLock { users in
            users[userID]?[ObjectIdentifier(connection)] = nil
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
                if let connections = users[userID] { found.append(contentsOf: connections.values) }
            }
            return found
        }
    }

    /// Every connection, for shutdown.
    func all() -> [ChatConnection] {
        byUser.withLock { $0.values.flatMap { Array($0.values) } }
    }

    public var count: Int { byUser.withLock { $0.values.reduce(0) { $0 + $1.count } } }
}
