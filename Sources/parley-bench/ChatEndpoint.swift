/// Where a chat listener is, parsed from the `ws://host:port/path` URL that log-in
/// and parleyd's start-up line give.
struct ChatEndpoint: Sendable, Equatable {
    var host: String
    var port: Int
    var path: String

    init?(url: String) {
        guard url.hasPrefix("ws://") else { return nil }
        let rest = url.dropFirst("ws://".count)
        let authority = rest.prefix { $0 != "/" }
        guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]) else { return nil }
        host = String(authority[..<colon])
        self.port = port
        let path = rest.dropFirst(authority.count)
        self.path = path.isEmpty ? "/" : String(path)
    }

    var url: String { "ws://\(host):\(port)\(path)" }
}
