/// An account this tool created, with the token of the one device it logged in.
struct BenchAccount: Codable, Sendable, Equatable {
    var username: String
    var password: String
    var userID: String
    var deviceID: String
    var token: String
}
