// docs/openapi.json describes the HTTP API the server really serves.
import Foundation
import ParleyClient
import ParleyJSON
import ParleyServer
import Testing

@Suite("OpenAPI document", .timeLimit(.minutes(3)))
struct OpenAPITests {
    static let document: JSONValue = {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("docs/openapi.json")
        return (try? JSONParser.parse(Array((try? Data(contentsOf: file)) ?? Data()))) ?? .null
    }()

    /// Follows "$ref": "#/components/schemas/Name".
    private func resolve(_ schema: JSONValue) -> JSONValue {
        guard let reference = schema["$ref"]?.stringValue else { return schema }
        let name = reference.split(separator: "/").last.map(String.init) ?? ""
        return resolve(Self.document["components"]?["schemas"]?[name] ?? .null)
    }

    /// The required properties of a schema that `value` lacks, nested ones included.
    private func missing(_ value: JSONValue, _ schema: JSONValue, path: String = "") -> [String] {
        let schema = resolve(schema)
        var missing: [String] = []
        for name in schema["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
            guard let present = value[name] else {
                missing.append(path + name)
                continue
            }
            if let property = schema["properties"]?[name] {
                missing += self.missing(present, property, path: path + name + ".")
            }
        }
        if let items = schema["items"], let array = value.arrayValue {
            for element in array { missing += self.missing(element, items, path: path + "[].") }
        }
        return missing
    }

    @Test func documentListsExactlyTheServersRoutes() {
        var documented: [String] = []
        for (path, item) in Self.document["paths"]?.objectValue ?? [:] {
            for method in (item.objectValue ?? [:]).keys where ["get", "post", "put", "patch", "delete"].contains(method) {
                let template = path.replacingOccurrences(of: "{", with: ":").replacingOccurrences(of: "}", with: "")
                documented.append("\(method.uppercased()) \(template)")
            }
        }
        #expect(!documented.isEmpty, "docs/openapi.json was read")
        #expect(documented.sorted() == HTTPAPI.routes.sorted())
    }

    @Test func successResponsesCarryEveryRequiredPropertyTheDocumentPromises() async throws {
        let server = try await TestServer.start()
        let api = server.api
        func check(_ method: String, _ path: String, _ template: String, status: String, token: String? = nil, body: [String: String]? = nil) async throws {
            let reply = try await api.call(method, path, token: token, body: body)
            let operation = Self.document["paths"]?[template]?[method.lowercased()]
            guard let schema = operation?["responses"]?[status]?["content"]?["application/json"]?["schema"] else {
                Issue.record("\(method) \(template) documents no JSON \(status) response")
                return
            }
            #expect(missing(reply, schema).isEmpty, "\(method) \(template) lacks \(missing(reply, schema))")
        }
        try await check("POST", "/v1/signup", "/v1/signup", status: "201", body: ["username": "alice", "password": "alice password", "display_name": "Alice"])
        try await check("POST", "/v1/signup", "/v1/signup", status: "201", body: ["username": "bob", "password": "bob password"])
        let login = try await api.logIn(username: "alice", password: "alice password", deviceName: "phone")
        try await check("POST", "/v1/login", "/v1/login", status: "200", body: ["username": "alice", "password": "alice password", "device_name": "laptop"])
        try await check("GET", "/v1/me", "/v1/me", status: "200", token: login.token)
        try await check("PATCH", "/v1/me", "/v1/me", status: "200", token: login.token, body: ["display_name": "Alice A."])
        try await check("GET", "/v1/users/bob", "/v1/users/{username}", status: "200", token: login.token)
        try await check("GET", "/v1/devices", "/v1/devices", status: "200", token: login.token)
        try await check("PATCH", "/v1/devices/\(login.deviceID)", "/v1/devices/{device}", status: "200", token: login.token, body: ["name": "old phone"])
        try await check("GET", "/v1/discover", "/v1/discover", status: "200")
        try await check("GET", "/health", "/health", status: "200")
        await server.stop()
    }
}
