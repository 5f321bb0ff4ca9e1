// The token and cursors kept under the user's config folder, readable by the user only.
import Foundation
import ParleyClient
import ParleyJSON

struct Credentials {
    var server: String
    var username: String
    var userID: String
    var deviceID: String
    var token: String
    var websocketURL: String

    init(server: String, login: LoginInfo) {
        self.server = server
        username = login.username
        userID = login.userID
        deviceID = login.deviceID
        token = login.token
        websocketURL = login.websocketURL
    }

    init?(_ value: JSONValue) {
        guard let server = value["server"]?.stringValue, let username = value["username"]?.stringValue, let userID = value["user_id"]?.stringValue,
            let deviceID = value["device_id"]?.stringValue, let token = value["token"]?.stringValue, let url = value["websocket_url"]?.stringValue
        else { return nil }
        self.server = server
        self.username = username
        self.userID = userID
        self.deviceID = deviceID
        self.token = token
        websocketURL = url
    }
}

struct CredentialError: Error, CustomStringConvertible {
    var description: String
}

struct CredentialStore {
    let folder: URL

    init() {
        let environment = ProcessInfo.processInfo.environment
        if let folder = environment["PARLEY_CONFIG_DIR"] {
            self.folder = URL(fileURLWithPath: folder)
        } else if let config = environment["XDG_CONFIG_HOME"] {
            self.folder = URL(fileURLWithPath: config).appendingPathComponent("parley")
        } else {
            self.folder = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".config/parley")
        }
    }

    private var credentialsFile: URL { folder.appendingPathComponent("credentials.json") }
    private var cursorsFile: URL { folder.appendingPathComponent("cursors.json") }

    func save(_ credentials: Credentials) throws {
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("server", credentials.server)
        writer.field("username", credentials.username)
        writer.field("user_id", credentials.userID)
        writer.field("device_id", credentials.deviceID)
        writer.field("token", credentials.token)
        writer.field("websocket_url", credentials.websocketURL)
        writer.endObject()
        try write(writer.bytes, to: credentialsFile)
        try? FileManager.default.removeItem(at: cursorsFile)
    }

    /// Writes a file created with mode 0600, so the token is never readable by others.
    private func write(_ bytes: [UInt8], to file: URL) throws {
        let temporary = file.appendingPathExtension("tmp")
        let descriptor = open(temporary.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard descriptor >= 0 else { throw CredentialError(description: "cannot write \(temporary.path): \(String(cString: strerror(errno)))") }
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
        guard written == bytes.count, rename(temporary.path, file.path) == 0 else {
            throw CredentialError(description: "cannot write \(file.path)")
        }
    }

    func load() throws -> Credentials {
        guard let data = FileManager.default.contents(atPath: credentialsFile.path), let value = try? JSONParser.parse(Array(data)), let credentials = Credentials(value) else {
            throw CredentialError(description: "not logged in; run: parley login USERNAME")
        }
        return credentials
    }

    func forget() throws {
        try? FileManager.default.removeItem(at: credentialsFile)
        try? FileManager.default.removeItem(at: cursorsFile)
    }

    func cursors() -> [String: Int64] {
        guard let data = FileManager.default.contents(atPath: cursorsFile.path), let value = try? JSONParser.parse(Array(data)), let object = value.objectValue else { return [:] }
        return object.compactMapValues(\.int64Value)
    }

    func saveCursors(_ cursors: [String: Int64]) {
        var writer = JSONWriter()
        writer.beginObject()
        for (conversation, cursor) in cursors.sorted(by: { $0.key < $1.key }) { writer.field(conversation, cursor) }
        writer.endObject()
        try? write(writer.bytes, to: cursorsFile)
    }
}
