// Who is online on this node, last-seen times, and presence changes pushed to each
// user's online 1:1 contacts. A user goes offline only after a grace period without
// any connection, so a quick reconnect does not flap.
import Dispatch
import Logging
import ParleyCore
import ParleyJSON
import PluginHost
import Synchronization

final class PresenceTracker: Sendable {
    private struct State {
        /// Open connections per online user (0 while the grace period runs).
        var connections: [String: Int] = [:]
        /// Users whose last connection closed, waiting out the grace period (with the
        /// token of the pending offline check, so a reconnect cancels it).
        var leaving: [String: UInt64] = [:]
        var nextToken: UInt64 = 0
        /// Online users' 1:1 contacts, loaded when they come online.
        var contacts: [String: Set<String>] = [:]
        /// For each user, the online users who have them as a contact (who to notify).
        var watchers: [String: Set<String>] = [:]
    }

    private let state = Mutex(State())
    /// Set at shutdown: offline checks still pending then have nothing left to do.
    private let stopped = Atomic<Bool>(false)
    private let storage: StorageBackend
    private let grace: Duration
    /// Sends an event to every connection of a user.
    private let notify: @Sendable (_ userID: String, _ frame: [UInt8]) -> Void
    private let logger: Logger

    init(storage: StorageBackend, grace: Duration, logger: Logger, notify: @escaping @Sendable (String, [UInt8]) -> Void) {
        self.storage = storage
        self.grace = grace
        self.logger = logger
        self.notify = notify
    }

    func isOnline(_ userID: String) -> Bool {
        state.withLock { $0.connections[userID] != nil }
    }

    /// A connection of the user authenticated: counted at once, under the connection's
    /// session lock, so a close that follows is always counted after it. Returns whether the
    /// user comes online; then `cameOnlineHere` follows, outside the lock.
    func connected(_ userID: String) -> Bool {
        state.withLock { state -> Bool in
            state.leaving[userID] = nil
            let previous = state.connections[userID]
            state.connections[userID] = (previous ?? 0) + 1
            return previous == nil
        }
    }

    /// Reads the contacts of a user who came online and tells those online. On a plugin worker.
    func cameOnlineHere(_ userID: String, username: String) {
        let contacts = loadContactsHere(userID)
        let watchers: Set<String> = state.withLock { state in
            guard state.connections[userID] != nil else { return [] }
            state.contacts[userID] = contacts
            for contact in contacts { state.watchers[contact, default: []].insert(userID) }
            return state.watchers[userID] ?? []
        }
        announce(userID, username: username, online: true, lastSeen: nil, to: watchers)
    }

    /// A connection of the user closed; after the grace period with none, they are offline.
    func disconnected(_ userID: String, username: String) {
        let token = state.withLock { state -> UInt64? in
            guard let count = state.connections[userID] else { return nil }
            if count > 1 {
                state.connections[userID] = count - 1
                return nil
            }
            state.connections[userID] = 0
            state.nextToken += 1
            state.leaving[userID] = state.nextToken
            return state.nextToken
        }
        guard let token else { return }
        let lastSeen = currentTimeMillis()
        let nanoseconds = Int(grace.components.seconds) * 1_000_000_000 + Int(grace.components.attoseconds / 1_000_000_000)
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [self] in
            goOffline(userID, username: username, token: token, lastSeen: lastSeen)
        }
    }

    /// `lastSeen` is when the last connection closed, not when the grace period ended.
    private func goOffline(_ userID: String, username: String, token: UInt64, lastSeen: Int64) {
        guard !stopped.load(ordering: .acquiring) else { return }
        let watchers: Set<String>? = state.withLock { state in
            guard state.leaving[userID] == token else { return nil }
            state.leaving[userID] = nil
            state.connections[userID] = nil
            for contact in state.contacts.removeValue(forKey: userID) ?? [] {
                state.watchers[contact]?.remove(userID)
                if state.watchers[contact]?.isEmpty == true { state.watchers[contact] = nil }
            }
            return state.watchers[userID] ?? []
        }
        guard let watchers else { return }
        // Stored before it is announced, so a query right after the event sees it.
        Task {
            await store(lastSeen: lastSeen, of: [userID])
            announce(userID, username: username, online: false, lastSeen: lastSeen, to: watchers)
        }
    }

    private func store(lastSeen: Int64, of users: [String]) async {
        guard !users.isEmpty else { return }
        do {
            try await storage.apply(users.map { .put(StorageLayout.key(StorageLayout.presence, $0), value: StorageLayout.sequenceKey(lastSeen)) })
        } catch {
            logger.warning("cannot store last seen of \(users.count) users: \(error)")
        }
    }

    /// At shutdown: everyone still online was last seen now.
    func recordEveryoneOffline() async {
        stopped.store(true, ordering: .releasing)
        let users = state.withLock { Array($0.connections.keys) }
        await store(lastSeen: currentTimeMillis(), of: users)
    }

    /// Two users opened a direct conversation: if either is online, it now watches the other.
    func contactsMet(_ first: String, _ second: String) {
        guard first != second else { return }
        state.withLock { state in
            for (user, contact) in [(first, second), (second, first)] where state.contacts[user] != nil {
                state.contacts[user]?.insert(contact)
                state.watchers[contact, default: []].insert(user)
            }
        }
    }

    /// The user's last-seen time, from storage (nil when never seen).
    func lastSeen(_ userID: String) async throws(ChatError) -> Int64? {
        do {
            return try await storage.get(StorageLayout.key(StorageLayout.presence, userID)).flatMap(StorageLayout.sequence(fromKey:))
        } catch {
            throw AccountService.storageError(error)
        }
    }

    /// The users the user shares a direct conversation with; on a plugin worker.
    private func loadContactsHere(_ userID: String) -> Set<String> {
        var contacts = Set<String>()
        var lower = StorageBound.none
        while true {
            guard let rows = try? storage.scanHere(table: StorageLayout.userConversations, partition: Array(userID.utf8), StorageScan(lower: lower, limit: StorageLimits.maxScanRows)) else { break }
            for row in rows {
                guard let conversation = ConversationID(String(decoding: row.sortKey, as: UTF8.self)), conversation.kind == .direct else { continue }
                contacts.formUnion(conversation.participants.filter { $0 != userID })
            }
            guard rows.count == StorageLimits.maxScanRows, let last = rows.last else { break }
            lower = .exclusive(last.sortKey)
        }
        return contacts
    }

    private func announce(_ userID: String, username: String, online: Bool, lastSeen: Int64?, to watchers: Set<String>) {
        guard !watchers.isEmpty else { return }
        let frame = JSONWriter.frame("presence", id: nil) { writer in
            writer.field("user", userID)
            writer.field("username", username)
            writer.field("online", online)
            if let lastSeen { writer.field("last_seen", lastSeen) }
        }
        for watcher in watchers { notify(watcher, frame) }
    }
}
