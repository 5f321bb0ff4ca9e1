import NIOCore

/// Where a chat listener is, parsed from the `ws://host:port/path` URL that log-in
/// and parleyd's start-up line give. The host is resolved once, here: name resolution
/// per connection (and NIO's happy-eyeballs connector) cost the load generator more
/// than the rest of a connect.
struct ChatEndpoint: Sendable, Equatable {
    var host: String
    var port: Int
    var path: String
    var address: SocketAddress

    init?(url: String) {
        guard url.hasPrefix("ws://") else { return nil }
        let rest = url.dropFirst("ws://".count)
        let authority = rest.prefix { $0 != "/" }
        guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]) else { return nil }
        host = String(authority[..<colon])
        self.port = port
        let path = rest.dropFirst(authority.count)
        self.path = path.isEmpty ? "/" : String(path)
        guard let address = try? SocketAddress.makeAddressResolvingHost(host, port: port) else { return nil }
        self.address = address
    }

    var url: String { "ws://\(host):\(port)\(path)" }
}
