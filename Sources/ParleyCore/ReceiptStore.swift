// Per-user delivery and read cursors of each conversation: "read up to sequence N".
import ParleyJSON
public import PluginHost

public enum ReceiptKind: String, Sendable {
    case delivered, read
}

public struct ReceiptStore: Sendable {
    private let storage: StorageBackend

    public init(storage: StorageBackend) {
        self.storage = storage
    }

    static func key(_ conversation: ConversationID, _ userID: String, _ kind: ReceiptKind) -> StorageKey {
        StorageLayout.key(StorageLayout.readCursors, conversation.rawValue, sortKey(userID, kind).bytes)
    }

    /// A cursor's sort key within its conversation: the user id, a zero byte, the kind.
    static func sortKey(_ userID: String, _ kind: ReceiptKind) -> StorageBytes {
        .joined(userID, kind.rawValue)
    }

    /// Moves the user's cursor up to `sequence`; a lower value changes nothing.
    /// Returns the cursor after the call and whether it moved.
    @discardableResult
    public func advance(_ conversation: ConversationID, userID: String, kind: ReceiptKind, to sequence: Int64) async throws(ChatError) -> (cursor: Int64, moved: Bool) {
        let key = Self.key(conversation, userID, kind)
        for _ in 0..<8 {
            do {
                let current = try await storage.get(key)
                let known = current.flatMap(StorageLayout.sequence(fromKey:)) ?? 0
                guard sequence > known else { return (known, false) }
                let write: StorageWrite = current.map { .compareAndSet(key, expected: $0, value: StorageLayout.sequenceKey(sequence)) }
                    ?? .putIfAbsent(key, value: StorageLayout.sequenceKey(sequence))
                try await storage.apply([write])
                return (sequence, true)
            } catch {
                if error.status == .conflict { continue }
                throw AccountService.storageError(error)
            }
        }
        throw ChatError.busy
    }

    public func cursor(_ conversation: ConversationID, userID: String, kind: ReceiptKind) async throws(ChatError) -> Int64 {
        try await storage.reading { () throws(ChatError) in try self.cursorHere(conversation, userID: userID, kind: kind) }
    }

    /// `cursor` on the current thread, which must be a plugin worker.
    public func cursorHere(_ conversation: ConversationID, userID: String, kind: ReceiptKind) throws(ChatError) -> Int64 {
        do {
            return try storage.getHere(Self.key(conversation, userID, kind)).flatMap(StorageLayout.sequence(fromKey:)) ?? 0
        } catch {
            throw AccountService.storageError(error)
        }
    }

    /// Every user's cursors of a conversation: user id → (delivered, read).
    public func all(_ conversation: ConversationID) async throws(ChatError) -> [String: (delivered: Int64, read: Int64)] {
        var result: [String: (delivered: Int64, read: Int64)] = [:]
        do {
            let rows = try await storage.scan(table: StorageLayout.readCursors, partition: Array(conversation.rawValue.utf8), StorageScan())
            for row in rows {
                let parts = row.sortKey.split(separator: 0, maxSplits: 1)
                guard parts.count == 2, let kind = ReceiptKind(rawValue: String(decoding: parts[1], as: UTF8.self)), let value = StorageLayout.sequence(fromKey: row.value) else { continue }
                let user = String(decoding: parts[0], as: UTF8.self)
                var entry = result[user] ?? (0, 0)
                if kind == .read { entry.read = value } else { entry.delivered = value }
                result[user] = entry
            }
        } catch {
            throw AccountService.storageError(error)
        }
        return result
    }
}
