/// A conversation's identifier.
/// - A direct (1:1) conversation between users a and b is "d:" + the two user ids in
///   ascending order joined by ":", so both sides name it the same.
/// - A group is "g:" + the group's id.
public struct ConversationID: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable { case direct, group }

    public let rawValue: String
    public let kind: Kind

    /// The two users of a direct conversation (one for a conversation with oneself);
    /// empty for a group, whose members are stored. Read from the raw value when asked for:
    /// a `send` frame names its conversation, and keeping the users as strings would cost
    /// three allocations per message for the few places that need them.
    public var participants: [String] {
        guard let (first, second) = users else { return [] }
        return first == second ? [String(first)] : [String(first), String(second)]
    }

    /// For a direct conversation: whether the user takes part. Groups answer from their
    /// members, so this is false for a group.
    public func includes(_ userID: String) -> Bool {
        guard kind == .direct else { return false }
        let inPlace = rawValue.utf8.withContiguousStorageIfAvailable { raw in
            userID.utf8.withContiguousStorageIfAvailable { Self.includes(raw, $0) } ?? nil
        } ?? nil
        if let inPlace { return inPlace }
        guard let (first, second) = users else { return false }
        return first == userID || second == userID
    }

    /// `includes` on the bytes (every `send` asks); nil beyond ASCII, where String compares
    /// canonically equivalent forms as equal.
    private static func includes(_ raw: UnsafeBufferPointer<UInt8>, _ user: UnsafeBufferPointer<UInt8>) -> Bool? {
        guard raw.allSatisfy({ $0 < 0x80 }), user.allSatisfy({ $0 < 0x80 }) else { return nil }
        guard let colon = raw[2...].firstIndex(of: UInt8(ascii: ":")) else { return false }
        return raw[2..<colon].elementsEqual(user) || raw[(colon + 1)...].elementsEqual(user)
    }

    /// A direct conversation's two user ids, in place in the raw value (searched as UTF-8
    /// bytes, not characters: `includes` runs for every `send`).
    private var users: (Substring, Substring)? {
        guard kind == .direct else { return nil }
        let rest = rawValue.utf8.dropFirst(2)
        guard let colon = rest.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        return (Substring(rest[..<colon]), Substring(rest[rest.index(after: colon)...]))
    }

    public static func direct(_ first: String, _ second: String) -> ConversationID {
        let (low, high) = first <= second ? (first, second) : (second, first)
        return ConversationID(rawValue: "d:\(low):\(high)", kind: .direct)
    }

    public static func group(_ id: String) -> ConversationID {
        ConversationID(rawValue: "g:\(id)", kind: .group)
    }

    /// Parses an identifier a client sent; nil when it is not one. Checked on its UTF-8 in
    /// place (every `send` names its conversation); only a direct conversation's user ids
    /// beyond ASCII are compared as strings.
    public init?(_ text: String) {
        let kind = text.utf8.withContiguousStorageIfAvailable(Self.kind) ?? Array(text.utf8).withUnsafeBufferPointer(Self.kind)
        switch kind {
        case .some(.group): self.init(rawValue: text, kind: .group)
        case .some(.direct): self.init(rawValue: text, kind: .direct)
        case .none:
            return nil
        }
    }

    /// The kind of a well-formed identifier: "g:" and at least three of [a-z0-9_], or "d:"
    /// and two non-empty user ids without ":" in ascending order.
    private static func kind(_ utf8: UnsafeBufferPointer<UInt8>) -> Kind? {
        guard utf8.count <= 160, utf8.count > 2, utf8[1] == UInt8(ascii: ":") else { return nil }
        let rest = utf8[2...]
        if utf8[0] == UInt8(ascii: "g") {
            guard rest.count >= 3, rest.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }) else { return nil }
            return .group
        }
        guard utf8[0] == UInt8(ascii: "d"), let colon = rest.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let first = rest[..<colon], second = rest[(colon + 1)...]
        guard !first.isEmpty, !second.isEmpty, !second.contains(UInt8(ascii: ":")) else { return nil }
        // For ASCII, String's order is the bytes' order.
        let ascending = first.allSatisfy { $0 < 0x80 } && second.allSatisfy { $0 < 0x80 }
            ? !second.lexicographicallyPrecedes(first)
            : String(decoding: UnsafeBufferPointer(rebasing: first), as: UTF8.self) <= String(decoding: UnsafeBufferPointer(rebasing: second), as: UTF8.self)
        return ascending ? .direct : nil
    }

    /// The raw value names the conversation: equality and hashing use it alone.
    public static func == (lhs: ConversationID, rhs: ConversationID) -> Bool { lhs.rawValue == rhs.rawValue }
    public func hash(into hasher: inout Hasher) { hasher.combine(rawValue) }

    private init(rawValue: String, kind: Kind) {
        self.rawValue = rawValue
        self.kind = kind
    }

    /// The group's id, for a group.
    public var groupID: String? { kind == .group ? String(rawValue.dropFirst(2)) : nil }

    public var description: String { rawValue }
}

/// A member's role in a group.
public enum GroupRole: String, Sendable, Comparable {
    case member, admin, owner

    private var rank: Int {
        switch self {
        case .member: 0
        case .admin: 1
        case .owner: 2
        }
    }

    public static func < (left: GroupRole, right: GroupRole) -> Bool { left.rank < right.rank }
}

/// Who belongs to a conversation, and from which message on.
public struct ConversationMembers: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public var role: GroupRole
        /// The first sequence the member may read.
        public var fromSequence: Int64
        /// For a former member: the last sequence they may read.
        public var untilSequence: Int64?

        public init(role: GroupRole, fromSequence: Int64, untilSequence: Int64? = nil) {
            self.role = role
            self.fromSequence = fromSequence
            self.untilSequence = untilSequence
        }
    }

    /// False for a group id that names no group (or a deleted one).
    public var exists: Bool
    public var name: String
    /// Current and former members by user id.
    public var members: [String: Member]

    public init(exists: Bool, name: String = "", members: [String: Member] = [:]) {
        self.exists = exists
        self.name = name
        self.members = members
    }

    /// The users who receive new messages.
    public var current: [String] { members.filter { $0.value.untilSequence == nil }.map(\.key).sorted() }

    public func isCurrent(_ userID: String) -> Bool { members[userID].map { $0.untilSequence == nil } ?? false }

    /// The sequences a user may read, or nil when they never belonged.
    public func readableRange(for userID: String) -> ClosedRange<Int64>? {
        guard exists || members[userID] != nil, let member = members[userID] else { return nil }
        return member.fromSequence...(member.untilSequence ?? Int64.max)
    }
}
