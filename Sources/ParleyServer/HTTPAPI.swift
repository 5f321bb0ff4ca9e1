// The HTTP API (Hummingbird 2): accounts, sessions, devices, profiles, discovery,
// health and metrics. Stateless: any node can serve any request.
import ParleyJSON
import Hummingbird
import NIOCore
import ParleyCore

/// A router that also records what it routes.
struct RouteTable {
    let router = Router()
    private(set) var routes: [String] = []

    mutating func on(_ method: HTTPRequest.Method, _ path: String, _ handler: @escaping @Sendable (Request, BasicRequestContext) async throws -> Response) {
        router.on(RouterPath(path), method: method, use: handler)
        routes.append("\(method.rawValue) \(path)")
    }
}

public struct HTTPAPI: Sendable {
    static let maxBodyBytes = 65_536

    private let accountService: AccountService?
    private let serverMetrics: ServerMetrics?
    var accounts: AccountService { accountService! }
    var metrics: ServerMetrics { serverMetrics! }
    /// The WebSocket URL clients should connect to (discovery).
    let chatURL: @Sendable () -> String

    init(accounts: AccountService?, metrics: ServerMetrics?, chatURL: @escaping @Sendable () -> String) {
        accountService = accounts
        serverMetrics = metrics
        self.chatURL = chatURL
    }

    /// Every route as "METHOD /path" (":name" for parameters); docs/openapi.json must list exactly these.
    public static var routes: [String] { HTTPAPI(accounts: nil, metrics: nil, chatURL: { "" }).routeTable().routes }

    func router() -> Router<BasicRequestContext> { routeTable().router }

    private func routeTable() -> RouteTable {
        var table = RouteTable()
        table.on(.get, "/health") { _, _ in Self.json(.ok) { $0.field("status", "ok") } }
        table.on(.get, "/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(bytes: metrics.exposition())))
        }
        table.on(.get, "/v1/discover") { _, _ in
            Self.json(.ok) { writer in
                writer.field("websocket_url", chatURL())
                writer.field("protocol_version", 1)
            }
        }
        table.on(.post, "/v1/signup") { request, _ in
            await Self.respond {
                let body = try await Self.body(request)
                let profile = try await accounts.signUp(
                    username: try ChatService.string(body, "username"), password: try ChatService.string(body, "password"),
                    displayName: try Self.optionalString(body, "display_name"))
                return Self.json(.created) { ChatFrames.user(&$0, "user", profile) }
            }
        }
        table.on(.post, "/v1/login") { request, _ in
            await Self.respond {
                let body = try await Self.body(request)
                let login = try await accounts.logIn(
                    username: try ChatService.string(body, "username"), password: try ChatService.string(body, "password"),
                    deviceName: try Self.optionalString(body, "device_name"))
                return Self.json(.ok) { writer in
                    writer.field("token", login.token)
                    ChatFrames.user(&writer, "user", login.user)
                    Self.device(&writer, "device", login.device)
                    writer.field("websocket_url", chatURL())
                }
            }
        }
        table.on(.post, "/v1/logout") { request, _ in
            await Self.respond {
                try await accounts.logOut(try await session(request))
                return Response(status: .noContent)
            }
        }
        table.on(.post, "/v1/password") { request, _ in
            await Self.respond {
                let session = try await session(request)
                let body = try await Self.body(request)
                try await accounts.changePassword(session, current: try ChatService.string(body, "current"), new: try ChatService.string(body, "new"))
                return Response(status: .noContent)
            }
        }
        table.on(.get, "/v1/me") { request, _ in
            await Self.respond {
                let session = try await session(request)
                guard let profile = try await accounts.profile(id: session.userID) else { throw ChatError.unauthorized }
                return Self.json(.ok) { ChatFrames.user(&$0, "user", profile) }
            }
        }
        table.on(.patch, "/v1/me") { request, _ in
            await Self.respond {
                let session = try await session(request)
                let body = try await Self.body(request)
                let profile = try await accounts.setDisplayName(session, try ChatService.string(body, "display_name"))
                return Self.json(.ok) { ChatFrames.user(&$0, "user", profile) }
            }
        }
        table.on(.get, "/v1/users/:username") { request, context in
            await Self.respond {
                _ = try await session(request)
                let username = context.parameters.get("username") ?? ""
                guard let profile = try await accounts.lookUp(username: username) else { throw ChatError.notFound("user \(username)") }
                return Self.json(.ok) { ChatFrames.user(&$0, "user", profile) }
            }
        }
        table.on(.get, "/v1/devices") { request, _ in
            await Self.respond {
                let session = try await session(request)
                let devices = try await accounts.devices(of: session)
                return Self.json(.ok) { writer in
                    writer.beginArray("devices")
                    for device in devices {
                        writer.beginObject()
                        writer.field("id", device.id)
                        writer.field("name", device.name)
                        writer.field("created_at", device.createdAt)
                        writer.field("current", device.id == session.deviceID)
                        writer.endObject()
                    }
                    writer.endArray()
                }
            }
        }
        table.on(.patch, "/v1/devices/:device") { request, context in
            await Self.respond {
                let session = try await session(request)
                let body = try await Self.body(request)
                let device = try await accounts.renameDevice(session, deviceID: context.parameters.get("device") ?? "", name: try ChatService.string(body, "name"))
                return Self.json(.ok) { Self.device(&$0, "device", device) }
            }
        }
        table.on(.delete, "/v1/devices/:device") { request, context in
            await Self.respond {
                let session = try await session(request)
                try await accounts.revokeDevice(session, deviceID: context.parameters.get("device") ?? "")
                return Response(status: .noContent)
            }
        }
        return table
    }

    private func session(_ request: Request) async throws(ChatError) -> Session {
        guard let header = request.headers[.authorization] else { throw .unauthorized }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { throw .unauthorized }
        return try await accounts.authenticate(token: String(parts[1])).session
    }

    /// Runs a handler and turns a ChatError into its JSON error response.
    static func respond(_ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch {
            let error = error as? ChatError ?? ChatError("internal", "internal error", httpStatus: 500)
            return json(HTTPResponse.Status(code: error.httpStatus)) { ChatFrames.errorFields(&$0, code: error.code, message: error.message) }
        }
    }

    static func json(_ status: HTTPResponse.Status, _ fields: (inout JSONWriter) -> Void) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.object(capacity: 256, fields))))
    }

    static func body(_ request: Request) async throws(ChatError) -> [String: JSONValue] {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: maxBodyBytes)
        } catch {
            throw .tooLarge("request body exceeds \(maxBodyBytes) bytes")
        }
        do {
            guard case .object(let fields) = try JSONParser.parse(buffer.readableBytesView) else { throw ChatError.invalid("the body must be a JSON object") }
            return fields
        } catch let error as ChatError {
            throw error
        } catch {
            throw ChatError("malformed_json", "the body is not valid JSON: \(error)")
        }
    }

    static func optionalString(_ fields: [String: JSONValue], _ key: String) throws(ChatError) -> String? {
        guard let value = fields[key], value != .null else { return nil }
        guard let text = value.stringValue else { throw .invalid("'\(key)' must be a string") }
        return text
    }

    static func device(_ writer: inout JSONWriter, _ key: String, _ device: DeviceInfo) {
        writer.beginObject(key)
        writer.field("id", device.id)
        writer.field("name", device.name)
        writer.field("created_at", device.createdAt)
        writer.endObject()
    }
}
