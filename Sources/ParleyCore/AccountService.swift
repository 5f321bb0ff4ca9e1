// Accounts and devices: sign-up, log-in (each log-in is a device with its own token),
// log-out, password change, device list, rename and revoke, profiles.
import ParleyJSON
public import PluginHost
import Synchronization

/// An authenticated device.
public struct Session: Sendable, Equatable {
    public var userID: String
    public var deviceID: String
    public var username: String

    public init(userID: String, deviceID: String, username: String) {
        self.userID = userID
        self.deviceID = deviceID
        self.username = username
    }
}

/// A user as others see them.
public struct UserProfile: Sendable, Equatable {
    public var id: String
    public var username: String
    public var displayName: String
}

/// One logged-in device of a user.
public struct DeviceInfo: Sendable, Equatable {
    public var id: String
    public var name: String
    public var createdAt: Int64
}

/// The result of a log-in: the new device and its bearer token, shown once.
public struct LoginResult: Sendable {
    public var user: UserProfile
    public var device: DeviceInfo
    public var token: String
}

public final class AccountService: Sendable {
    public static let usernameLength = 3...32
    public static let passwordLength = 8...1024
    public static let displayNameLength = 0...64
    public static let deviceNameLength = 0...64

    private let storage: StorageBackend
    /// Threads for Argon2id, which must never run on an event loop.
    private let hashing: PluginWorkerPool
    private let revocationHandlers = Mutex<[@Sendable (String, String) -> Void]>([])

    public init(storage: StorageBackend, hashing: PluginWorkerPool) {
        Sodium.ensureInitialised()
        self.storage = storage
        self.hashing = hashing
    }

    /// Called with (user id, device id) whenever a device is revoked or logs out.
    public func onDeviceRevoked(_ handler: @escaping @Sendable (String, String) -> Void) {
        revocationHandlers.withLock { $0.append(handler) }
    }

    /// Checks a username: 3 to 32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit.
    public static func validateUsername(_ username: String) throws(ChatError) {
        let bytes = Array(username.utf8)
        guard usernameLength.contains(bytes.count) else {
            throw ChatError("invalid_username", "a username has \(usernameLength.lowerBound) to \(usernameLength.upperBound) characters")
        }
        let allowed = bytes.allSatisfy { (0x61...0x7A).contains($0) || (0x41...0x5A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5F || $0 == 0x2E || $0 == 0x2D }
        let first = bytes[0]
        let startsWell = (0x61...0x7A).contains(first) || (0x41...0x5A).contains(first) || (0x30...0x39).contains(first)
        guard allowed && startsWell else {
            throw ChatError("invalid_username", "a username uses ASCII letters, digits, '_', '.' and '-', and starts with a letter or digit")
        }
    }

    private static func checkPassword(_ password: String) throws(ChatError) {
        guard passwordLength.contains(password.utf8.count) else {
            throw ChatError("weak_password", "a password has \(passwordLength.lowerBound) to \(passwordLength.upperBound) bytes")
        }
    }

    private static func checkName(_ name: String, _ range: ClosedRange<Int>, _ what: String) throws(ChatError) {
        guard range.contains(name.count), !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw ChatError.invalid("\(what) has at most \(range.upperBound) characters and no control characters")
        }
    }

    private static func newID(_ prefix: String) -> String { prefix + Sodium.randomBytes(10).hex }

    private func hash(_ password: String) async throws(ChatError) -> String {
        let result: String?
        do {
            result = try await hashing.run { Sodium.hashPassword(password) }
        } catch {
            throw .busy
        }
        guard let result else { throw ChatError("internal", "password hashing failed", httpStatus: 500) }
        return result
    }

    private func verify(_ password: String, _ hash: String) async throws(ChatError) -> Bool {
        do {
            return try await hashing.run { Sodium.verifyPassword(password, hash: hash) }
        } catch {
            throw .busy
        }
    }

    /// Creates an account. Usernames are unique regardless of case.
    public func signUp(username: String, password: String, displayName: String?) async throws(ChatError) -> UserProfile {
        try Self.validateUsername(username)
        try Self.checkPassword(password)
        let display = displayName ?? username
        try Self.checkName(display, Self.displayNameLength, "a display name")
        let passwordHash = try await hash(password)
        let profile = UserProfile(id: Self.newID("u_"), username: username, displayName: display)
        do {
            try await storage.apply([
                .putIfAbsent(StorageLayout.key(StorageLayout.usernames, username.lowercased()), value: Array(profile.id.utf8)),
                .put(StorageLayout.key(StorageLayout.users, profile.id), value: Self.encode(profile, passwordHash: passwordHash)),
            ])
        } catch {
            if error.status == .conflict { throw ChatError("username_taken", "the username \(username) is taken", httpStatus: 409) }
            throw Self.storageError(error)
        }
        return profile
    }

    /// Checks the password and creates a device with a fresh token.
    public func logIn(username: String, password: String, deviceName: String?) async throws(ChatError) -> LoginResult {
        let name = deviceName ?? "device"
        try Self.checkName(name, Self.deviceNameLength, "a device name")
        guard let (profile, passwordHash) = try await user(named: username) else {
            // Spend the same time as a real check, so timing does not reveal which usernames exist.
            _ = try await verify(password, Self.decoyHash)
            throw .invalidCredentials
        }
        guard try await verify(password, passwordHash) else { throw .invalidCredentials }
        let tokenBytes = Sodium.randomBytes(32)
        let token = tokenBytes.base64URL
        let device = DeviceInfo(id: Self.newID("dv_"), name: name, createdAt: currentTimeMillis())
        let tokenHash = Self.tokenKey(token)
        do {
            try await storage.apply([
                .putIfAbsent(StorageLayout.key(StorageLayout.tokens, tokenHash), value: Array("\(profile.id) \(device.id)".utf8)),
                .put(StorageLayout.key(StorageLayout.devices, profile.id, Array(device.id.utf8)), value: Self.encode(device, tokenHash: tokenHash)),
            ])
        } catch {
            throw Self.storageError(error)
        }
        return LoginResult(user: profile, device: device, token: token)
    }

    private static let decoyHash: String = Sodium.hashPassword("parley decoy password, never valid") ?? ""

    /// The device a bearer token belongs to and its user's profile, or `unauthorized`.
    public func authenticate(token: String) async throws(ChatError) -> (session: Session, profile: UserProfile) {
        guard Self.isPlausibleToken(token) else { throw .unauthorized }
        return try await storage.reading { () throws(ChatError) in try self.authenticateHere(token: token) }
    }

    /// Whether the text could be a token at all (its length); anything else is refused
    /// without a storage read.
    public static func isPlausibleToken(_ token: String) -> Bool {
        (32...128).contains(token.utf8.count)
    }

    /// `authenticate` on the current thread, which must be a plugin worker (inside
    /// `StorageBackend.onWorker`): both reads without a hand-over between them.
    public func authenticateHere(token: String) throws(ChatError) -> (session: Session, profile: UserProfile) {
        guard Self.isPlausibleToken(token) else { throw .unauthorized }
        let stored: [UInt8]?
        do {
            stored = try storage.getHere(StorageLayout.key(StorageLayout.tokens, Self.tokenKey(token)))
        } catch {
            throw Self.storageError(error)
        }
        guard let stored else { throw .unauthorized }
        let parts = String(decoding: stored, as: UTF8.self).split(separator: " ")
        guard parts.count == 2 else { throw .unauthorized }
        let userID = String(parts[0]), deviceID = String(parts[1])
        guard let profile = try profileHere(id: userID) else { throw .unauthorized }
        return (Session(userID: userID, deviceID: deviceID, username: profile.username), profile)
    }

    /// Ends this device's session: its token stops working and its connections close.
    public func logOut(_ session: Session) async throws(ChatError) {
        try await revokeDevice(session, deviceID: session.deviceID)
    }

    /// Replaces the password after checking the current one. Devices stay logged in.
    public func changePassword(_ session: Session, current: String, new: String) async throws(ChatError) {
        try Self.checkPassword(new)
        guard let (profile, passwordHash) = try await user(named: session.username) else { throw .unauthorized }
        guard try await verify(current, passwordHash) else { throw .invalidCredentials }
        let newHash = try await hash(new)
        do {
            try await storage.apply([.put(StorageLayout.key(StorageLayout.users, profile.id), value: Self.encode(profile, passwordHash: newHash))])
        } catch {
            throw Self.storageError(error)
        }
    }

    public func devices(of session: Session) async throws(ChatError) -> [DeviceInfo] {
        do {
            let rows = try await storage.scan(table: StorageLayout.devices, partition: Array(session.userID.utf8), StorageScan())
            return rows.compactMap { Self.decodeDevice($0.value)?.device }
        } catch {
            throw Self.storageError(error)
        }
    }

    public func renameDevice(_ session: Session, deviceID: String, name: String) async throws(ChatError) -> DeviceInfo {
        try Self.checkName(name, Self.deviceNameLength, "a device name")
        let key = StorageLayout.key(StorageLayout.devices, session.userID, Array(deviceID.utf8))
        guard let (device, tokenHash) = try await device(key) else { throw .notFound("device \(deviceID)") }
        let renamed = DeviceInfo(id: device.id, name: name, createdAt: device.createdAt)
        do {
            try await storage.apply([.put(key, value: Self.encode(renamed, tokenHash: tokenHash))])
        } catch {
            throw Self.storageError(error)
        }
        return renamed
    }

    /// Revokes one of the user's devices: its token stops working and its connections close at once.
    public func revokeDevice(_ session: Session, deviceID: String) async throws(ChatError) {
        let key = StorageLayout.key(StorageLayout.devices, session.userID, Array(deviceID.utf8))
        guard let (_, tokenHash) = try await device(key) else { throw .notFound("device \(deviceID)") }
        do {
            try await storage.apply([.delete(key), .delete(StorageLayout.key(StorageLayout.tokens, tokenHash))])
        } catch {
            throw Self.storageError(error)
        }
        for handler in revocationHandlers.withLock({ $0 }) { handler(session.userID, deviceID) }
    }

    public func setDisplayName(_ session: Session, _ displayName: String) async throws(ChatError) -> UserProfile {
        try Self.checkName(displayName, Self.displayNameLength, "a display name")
        guard let (profile, passwordHash) = try await user(named: session.username) else { throw .unauthorized }
        let updated = UserProfile(id: profile.id, username: profile.username, displayName: displayName)
        do {
            try await storage.apply([.put(StorageLayout.key(StorageLayout.users, profile.id), value: Self.encode(updated, passwordHash: passwordHash))])
        } catch {
            throw Self.storageError(error)
        }
        return updated
    }

    /// Looks a user up by username, case-insensitively.
    public func lookUp(username: String) async throws(ChatError) -> UserProfile? {
        try await user(named: username)?.0
    }

    public func profile(id: String) async throws(ChatError) -> UserProfile? {
        try await storage.reading { () throws(ChatError) in try self.profileHere(id: id) }
    }

    /// `profile(id:)` on the current thread, which must be a plugin worker.
    public func profileHere(id: String) throws(ChatError) -> UserProfile? {
        guard !id.isEmpty, id.utf8.count <= 64 else { return nil }
        do {
            guard let value = try storage.getHere(StorageLayout.key(StorageLayout.users, id)) else { return nil }
            return Self.decodeUser(value)?.0
        } catch {
            throw Self.storageError(error)
        }
    }

    /// Whether a device of the user still exists (it is not revoked).
    public func deviceExists(userID: String, deviceID: String) async throws(ChatError) -> Bool {
        guard deviceID.utf8.count <= 64 else { return false }
        return try await device(StorageLayout.key(StorageLayout.devices, userID, Array(deviceID.utf8))) != nil
    }

    private func user(named username: String) async throws(ChatError) -> (UserProfile, String)? {
        guard username.utf8.count <= Self.usernameLength.upperBound, !username.isEmpty else { return nil }
        do {
            guard let id = try await storage.get(StorageLayout.key(StorageLayout.usernames, username.lowercased())),
                let value = try await storage.get(StorageLayout.key(StorageLayout.users, String(decoding: id, as: UTF8.self)))
            else { return nil }
            return Self.decodeUser(value)
        } catch {
            throw Self.storageError(error)
        }
    }

    private func device(_ key: StorageKey) async throws(ChatError) -> (DeviceInfo, String)? {
        do {
            guard let value = try await storage.get(key) else { return nil }
            return Self.decodeDevice(value).map { ($0.device, $0.tokenHash) }
        } catch {
            throw Self.storageError(error)
        }
    }

    public static func storageError(_ error: PluginCallError) -> ChatError {
        error.status == .busy ? .busy : .storage("storage failed: \(error.code)")
    }

    private static func tokenKey(_ token: String) -> String { Sodium.hash(Array(token.utf8)).hex }

    private static func encode(_ profile: UserProfile, passwordHash: String) -> [UInt8] {
        JSONWriter.object(capacity: 256) { writer in
            writer.field("id", profile.id)
            writer.field("username", profile.username)
            writer.field("display_name", profile.displayName)
            writer.field("password", passwordHash)
        }
    }

    private static func decodeUser(_ bytes: [UInt8]) -> (UserProfile, String)? {
        // A flat object of strings (see `encode`), read without a dictionary of values.
        guard let fields = JSONParser.flatStringObject(bytes), let id = fields["id"], let username = fields["username"], let password = fields["password"]
        else { return nil }
        return (UserProfile(id: id, username: username, displayName: fields["display_name"] ?? username), password)
    }

    private static func encode(_ device: DeviceInfo, tokenHash: String) -> [UInt8] {
        JSONWriter.object(capacity: 256) { writer in
            writer.field("id", device.id)
            writer.field("name", device.name)
            writer.field("created_at", device.createdAt)
            writer.field("token_hash", tokenHash)
        }
    }

    private static func decodeDevice(_ bytes: [UInt8]) -> (device: DeviceInfo, tokenHash: String)? {
        guard let value = try? JSONParser.parse(bytes), let id = value["id"]?.stringValue, let tokenHash = value["token_hash"]?.stringValue else { return nil }
        return (DeviceInfo(id: id, name: value["name"]?.stringValue ?? "", createdAt: value["created_at"]?.int64Value ?? 0), tokenHash)
    }
}
