/// A conversation's identifier. A direct (1:1) conversation between users a and b is
/// "d:" + the two user ids in ascending order, joined by ":", so both sides name it the same.
public struct ConversationID: Sendable, Hashable, CustomStringConvertible {
    public let rawValue: String
    /// The users who take part.
    public let participants: [String]

    public static func direct(_ first: String, _ second: String) -> ConversationID {
        let ordered = [first, second].sorted()
        return ConversationID(rawValue: "d:\(ordered[0]):\(ordered[1])", participants: ordered[0] == ordered[1] ? [ordered[0]] : ordered)
    }

    /// Parses an identifier a client sent; nil when it is not one.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "d", !parts[1].isEmpty, !parts[2].isEmpty, parts[1] <= parts[2], text.utf8.count <= 160 else { return nil }
        self.init(rawValue: text, participants: parts[1] == parts[2] ? [String(parts[1])] : [String(parts[1]), String(parts[2])])
    }

    private init(rawValue: String, participants: [String]) {
        self.rawValue = rawValue
        self.participants = participants
    }

    public func includes(_ userID: String) -> Bool { participants.contains(userID) }

    public var description: String { rawValue }
}
