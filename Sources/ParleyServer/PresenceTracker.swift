// Who is online on this node, last-seen times, and presence changes pushed to each
// user's online 1:1 contacts. A user goes offline only after a grace period without
// any connection, so a quick reconnect does not flap.
import Dispatch
package import Logging
import ParleyCore
import ParleyJSON
package import PluginHost
import Synchronization

package final class PresenceTracker: Sendable {
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
        /// Users with sign-ins under way (`beginSignInHere` until `connected` or `abandon`):
        /// how many, and the contacts they met meanwhile, which a read of their contacts
        /// that started earlier may not have seen.
        var signingIn: [String: (count: Int, met: Set<String>)] = [:]

        /// `user` came online: it watches `contacts` from now on.
        mutating func watch(_ contacts: Set<String>, by user: String) {
            self.contacts[user] = contacts
            for contact in contacts { watchers[contact, default: []].insert(user) }
        }

        /// One sign-in of `user` ends; returns the contacts met while it ran.
        mutating func endSignIn(_ user: String) -> Set<String> {
            guard var entry = signingIn[user] else { return [] }
            entry.count -= 1
            signingIn[user] = entry.count > 0 ? entry : nil
            return entry.met
        }
    }

    /// A sign-in on its way to registering its connection: the user, and their contacts
    /// when the sign-in read them (nil while they were online, so watched already).
    package struct SignIn: Sendable {
        package let userID: String
        fileprivate(set) var contacts: Set<String>?
    }

    /// What `connected` did with a sign-in.
    package enum Arrival: Equatable, Sendable {
        /// Another connection of the user counted; they were online (or within the grace period).
        case joined
        /// The user came online and watches their contacts: tell them with `cameOnline`.
        case cameOnline
        /// Nothing changed: the user went offline since the sign-in began, so their contacts
        /// were not read. Read them (`readContactsHere`) and call `connected` again.
        case needsContacts
    }

    private let state = Mutex(State())
    /// Set at shutdown: offline checks still pending then have nothing left to do.
    private let stopped = Atomic<Bool>(false)
    private let storage: StorageBackend
    private let grace: Duration
    /// Sends an event to every connection of a user.
    private let notify: @Sendable (_ userID: String, _ frame: [UInt8]) -> Void
    private let logger: Logger

    package init(storage: StorageBackend, grace: Duration, logger: Logger, notify: @escaping @Sendable (String, [UInt8]) -> Void) {
        self.storage = storage
        self.grace = grace
        self.logger = logger
        self.notify = notify
    }

    package func isOnline(_ userID: String) -> Bool {
        state.withLock { $0.connections[userID] != nil }
    }

    /// Starts a sign-in of the user, on a plugin worker, before its connection is registered:
    /// from now on the contacts the user meets are kept for it, and their contacts are read
    /// now unless they are online (then they are watched already).
    package func beginSignInHere(_ userID: String) -> SignIn {
        let online = state.withLock { state -> Bool in
            state.signingIn[userID, default: (0, [])].count += 1
            return state.connections[userID] != nil
        }
        return SignIn(userID: userID, contacts: online ? nil : loadContactsHere(userID))
    }

    /// Reads the contacts of a sign-in that `connected` answered with `.needsContacts`.
    package func readContactsHere(_ signIn: inout SignIn) {
        signIn.contacts = loadContactsHere(signIn.userID)
    }

    /// The sign-in's connection is being registered: counted at once, under the connection's
    /// session lock, so a close that follows is always counted after it, and before its
    /// welcome is queued. A user who comes online watches their contacts from here on, so a
    /// client that asks for presence right after its welcome misses no change that follows.
    /// Ends the sign-in unless the answer is `.needsContacts`.
    package func connected(_ signIn: SignIn) -> Arrival {
        let userID = signIn.userID
        return state.withLock { state -> Arrival in
            let previous = state.connections[userID]
            if previous == nil, signIn.contacts == nil { return .needsContacts }
            state.leaving[userID] = nil
            state.connections[userID] = (previous ?? 0) + 1
            let met = state.endSignIn(userID)
            guard previous == nil, let contacts = signIn.contacts else { return .joined }
            state.watch(contacts.union(met), by: userID)
            return .cameOnline
        }
    }

    /// A sign-in that registers no connection (it closed meanwhile, or was refused).
    package func abandon(_ signIn: SignIn) {
        state.withLock { _ = $0.endSignIn(signIn.userID) }
    }

    /// Tells the online contacts of a user who came online (`connected` said `.cameOnline`).
    package func cameOnline(_ userID: String, username: String) {
        let watchers: Set<String> = state.withLock { state in
            state.connections[userID] != nil ? state.watchers[userID] ?? [] : []
        }
        announce(userID, username: username, online: true, lastSeen: nil, to: watchers)
    }

    /// A connection of the user closed; after the grace period with none, they are offline.
    package func disconnected(_ userID: String, username: String) {
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

    /// Two users opened a direct conversation: if either is online, it now watches the other;
    /// if either is signing in, the sign-in adds the other when it registers.
    package func contactsMet(_ first: String, _ second: String) {
        guard first != second else { return }
        state.withLock { state in
            for (user, contact) in [(first, second), (second, first)] {
                if state.contacts[user] != nil {
                    state.contacts[user]?.insert(contact)
                    state.watchers[contact, default: []].insert(user)
                }
                state.signingIn[user]?.met.insert(contact)
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
