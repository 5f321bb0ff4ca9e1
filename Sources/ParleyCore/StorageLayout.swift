// The tables the core keeps in the storage plugin and how their keys are encoded.
// Every table name is short and fixed: changing one is a migration.
public import PluginHost

/// Table names and key encodings of the core's data.
public enum StorageLayout {
    /// users / <user id> / "" → user record (JSON).
    public static let users = Array("users".utf8)
    /// usernames / <lower-case username> / "" → user id. Written put-if-absent: uniqueness.
    public static let usernames = Array("usernames".utf8)
    /// devices / <user id> / <device id> → device record (JSON).
    public static let devices = Array("devices".utf8)
    /// tokens / <BLAKE2b of the token, hex> / "" → "<user id> <device id>".
    public static let tokens = Array("tokens".utf8)
    /// messages / <conversation id> / <sequence, 8 bytes big-endian> → message record (JSON).
    public static let messages = Array("messages".utf8)
    /// client_ids / <conversation id> / <sender user id> 0x00 <client id> → sequence (8 bytes BE).
    public static let clientIDs = Array("client_ids".utf8)
    /// user_conversations / <user id> / <conversation id> → last sequence and time (JSON:
    /// last_seq, last_ts). The list of a user's conversations, read by `sync` in one scan.
    /// A direct conversation's two rows are rewritten with every batch. A group's rows are
    /// written only when its membership changes (and once per group after a server start):
    /// a current member's row has `"live": true` and the group's last sequence is then in
    /// `conversation_heads`; a former member's row keeps the sequence of their removal.
    public static let userConversations = Array("user_conversations".utf8)
    /// conversation_heads / <group conversation id> / "" → last sequence and time (JSON), one
    /// row rewritten per batch, so a batch to a group of 100 writes one row, not 100.
    public static let conversationHeads = Array("conversation_heads".utf8)
    /// groups / <conversation id "g:…"> / "" → group record (JSON: name, created_at, deleted).
    public static let groups = Array("groups".utf8)
    /// group_members / <conversation id> / <user id> → member (JSON: role, from, until).
    public static let groupMembers = Array("group_members".utf8)
    /// read_cursors / <conversation id> / <user id> → highest sequence read (8 bytes BE).
    public static let readCursors = Array("read_cursors".utf8)
    /// presence / <user id> / "" → last seen, milliseconds (8 bytes BE).
    public static let presence = Array("presence".utf8)
    /// to_device / <device id> / <time ns BE 8 bytes><random 8 bytes> → to-device message (JSON).
    public static let toDevice = Array("to_device".utf8)

    public static func key(_ table: [UInt8], _ partition: String, _ sort: [UInt8] = []) -> StorageKey {
        StorageKey(table: table, partition: Array(partition.utf8), sort: sort)
    }

    /// A sequence number as a sort key: big-endian, so byte order is numeric order.
    public static func sequenceKey(_ sequence: Int64) -> [UInt8] {
        withUnsafeBytes(of: UInt64(sequence).bigEndian) { Array($0) }
    }

    public static func sequence(fromKey key: [UInt8]) -> Int64? {
        guard key.count == 8 else { return nil }
        return Int64(key.reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }
}

extension StorageBackend {
    /// Runs `body`, which reads with `getHere` and `scanHere`, on a plugin worker and returns
    /// its result to the waiting task: one hand-over however many reads it makes.
    func reading<T: Sendable>(_ body: @escaping @Sendable () throws(ChatError) -> T) async throws(ChatError) -> T {
        let result: Result<T, ChatError>
        do {
            result = try await run { () -> Result<T, ChatError> in
                do throws(ChatError) { return .success(try body()) } catch { return .failure(error) }
            }
        } catch {
            throw AccountService.storageError(error)
        }
        return try result.get()
    }
}
