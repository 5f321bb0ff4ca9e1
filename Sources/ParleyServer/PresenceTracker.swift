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

        /// `user` came online: it watches `contacts` from now on.
        mutating func watch(_ contacts: Set<String>, by user: String) {
            self.contacts[user] = contacts
            for contact in contacts { watchers[contact, default: []].insert(user) }
        }
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

    /// The contacts of a user about to connect, read when they are not online yet (nil
    /// when they are: their contacts are watched already). On a plugin worker, before the
    /// connection is registered, so `connected` can start watching them at once.
    func contactsBeforeConnectingHere(_ userID: String) -> Set<String>? {
        guard !isOnline(userID) else { return nil }
        return loadContactsHere(userID)
    }

    /// A connection of the user authenticated: counted at once, under the connection's
    /// session lock, so a close that follows is always counted after it. When the user comes
    /// online, `contacts` (from `contactsBeforeConnectingHere`) are watched from here on,
    /// before the welcome leaves: a client that asks for presence right after its welcome
    /// misses no change that follows. Returns whether the user comes online; then
    /// `cameOnlineHere` follows, outside the lock.
    func connected(_ userID: String, contacts: Set<String>?) -> Bool {
        state.withLock { state -> Bool in
            state.leaving[userID] = nil
            let previous = state.connections[userID]
            state.connections[userID] = (previous ?? 0) + 1
            if previous == nil, let contacts { state.watch(contacts, by: userID) }
            return previous == nil
        }
    }

    /// Tells the online contacts of a user who came online. On a plugin worker. Their
    /// contacts are read here only when `connected` had none: the user was still online when
    /// the connection started and went offline before it was registered.
    func cameOnlineHere(_ userID: String, username: String) {
        if state.withLock({ $0.contacts[userID] == nil }) {
            let contacts = loadContactsHere(userID)
            state.withLock { state in
                guard state.connections[userID] != nil, state.contacts[userID] == nil else { return }
                state.watch(contacts, by: userID)
            }
        }
        let watchers: Set<String> = state.withLock { state in
            state.connections[userID] != nil ? state.watchers[userID] ?? [] : []
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
            let rows: [StorageRow]
            do {
                rows = try storage.scanHere(table: StorageLayout.userConversations, partition: Array(userID.utf8), StorageScan(lower: lower, limit: StorageLimits.maxScanRows))
            } catch {
                // Presence is best effort: the user is still served, and watches the contacts read so far.
                logger.warning("cannot read the contacts of \(userID) for presence: \(error)")
                break
            }
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
