// Calls to the HTTP API: sign-up, log-in, discovery and the account endpoints.
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
public import ParleyJSON

/// An error the server answered with, or a failure to reach it.
public struct ParleyError: Error, Equatable, CustomStringConvertible {
    public var code: String
    public var message: String
    /// The HTTP status, or 0 for WebSocket errors.
    public var status: Int

    public init(code: String, message: String, status: Int = 0) {
        self.code = code
        self.message = message
        self.status = status
    }

    public var description: String { "\(message) (\(code))" }
}

/// What a log-in returns.
public struct LoginInfo: Sendable, Equatable {
    public var token: String
    public var userID: String
    public var username: String
    public var deviceID: String
    public var websocketURL: String
}

public struct ParleyAPI: Sendable {
    public let baseURL: String

    /// `baseURL` like "http://127.0.0.1:8080".
    public init(baseURL: String) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
    }

    @discardableResult
    public func signUp(username: String, password: String, displayName: String? = nil) async throws -> JSONValue {
        var fields = ["username": username, "password": password]
        if let displayName { fields["display_name"] = displayName }
        return try await call("POST", "/v1/signup", body: fields)
    }

    public func logIn(username: String, password: String, deviceName: String) async throws -> LoginInfo {
        let reply = try await call("POST", "/v1/login", body: ["username": username, "password": password, "device_name": deviceName])
        guard let token = reply["token"]?.stringValue, let userID = reply["user"]?["id"]?.stringValue,
            let name = reply["user"]?["username"]?.stringValue, let deviceID = reply["device"]?["id"]?.stringValue,
            let url = reply["websocket_url"]?.stringValue
        else { throw ParleyError(code: "bad_reply", message: "the login reply is missing fields") }
        return LoginInfo(token: token, userID: userID, username: name, deviceID: deviceID, websocketURL: url)
    }

    /// Calls an endpoint with a JSON object body (strings only) and returns the JSON
    /// reply (`.null` for 204). Error replies throw `ParleyError` with the server's code.
    @discardableResult
    public func call(_ method: String, _ path: String, token: String? = nil, body: [String: String]? = nil) async throws -> JSONValue {
        guard let url = URL(string: baseURL + path) else { throw ParleyError(code: "bad_url", message: "\(baseURL + path) is not a URL") }
        var request = URLRequest(url: url)
        request.httpMethod = method
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body {
            var writer = JSONWriter()
            writer.beginObject()
            for (key, value) in body.sorted(by: { $0.key < $1.key }) { writer.field(key, value) }
            writer.endObject()
            request.httpBody = Data(writer.bytes)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let data: Data
        let response: URLResponse
        do {
            (data, response) = try await URLSession.shared.data(for: request)
        } catch {
            throw ParleyError(code: "unreachable", message: "cannot reach \(baseURL): \(error.localizedDescription)")
        }
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let value = data.isEmpty ? JSONValue.null : (try? JSONParser.parse(Array(data))) ?? .null
        guard (200..<300).contains(status) else {
            throw ParleyError(code: value["code"]?.stringValue ?? "http_\(status)", message: value["message"]?.stringValue ?? "HTTP status \(status)", status: status)
        }
        return value
    }
}
