/// An error a client sees: a stable machine-readable code, words for people, and the
/// HTTP status the API answers with. The codes are listed in docs/PROTOCOL.md.
public struct ChatError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var httpStatus: Int

    public init(_ code: String, _ message: String, httpStatus: Int = 400) {
        self.code = code
        self.message = message
        self.httpStatus = httpStatus
    }

    public var description: String { "\(code): \(message)" }

    public static func invalid(_ message: String) -> ChatError { ChatError("invalid_request", message) }
    public static let unauthorized = ChatError("unauthorized", "missing, invalid or revoked token", httpStatus: 401)
    public static let invalidCredentials = ChatError("invalid_credentials", "wrong username or password", httpStatus: 401)
    public static func notFound(_ what: String) -> ChatError { ChatError("not_found", "\(what) not found", httpStatus: 404) }
    public static func forbidden(_ message: String) -> ChatError { ChatError("forbidden", message, httpStatus: 403) }
    public static func tooLarge(_ message: String) -> ChatError { ChatError("too_large", message, httpStatus: 413) }
    public static let busy = ChatError("busy", "the server is busy; retry shortly", httpStatus: 503)
    public static func storage(_ message: String) -> ChatError { ChatError("storage_failed", message, httpStatus: 503) }
}
