// Messages from one device to one specific device (end-to-end key exchange uses them),
// stored until the target device fetches and acknowledges them.
import ParleyJSON
public import PluginHost
import Glibc

/// A stored to-device message.
public struct ToDeviceMessage: Sendable {
    public var id: String
    public var targetDevice: String
    public var record: [UInt8]
}

public struct ToDeviceQueue: Sendable {
    public static let maxBodyBytes = 65_536
    public static let maxPending = 1_000

    private let storage: StorageBackend

    public init(storage: StorageBackend) {
        self.storage = storage
    }

    /// Stores a message for `targetDevice` of `targetUser` and returns it for live delivery.
    public func send(from session: Session, targetUser: String, targetDevice: String, contentType: String, body: String) async throws(ChatError) -> ToDeviceMessage {
        guard !contentType.isEmpty, contentType.utf8.count <= 128 else { throw .invalid("content_type must have 1 to 128 bytes") }
        guard body.utf8.count <= Self.maxBodyBytes else { throw .tooLarge("body exceeds \(Self.maxBodyBytes) bytes") }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let nanos = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        let sortKey = withUnsafeBytes(of: nanos.bigEndian) { Array($0) } + Sodium.randomBytes(8)
        let id = sortKey.hex
        let record = JSONWriter.object(capacity: 160 + body.utf8.count) { writer in
            writer.field("id", id)
            writer.field("from", session.userID)
            writer.field("from_device", session.deviceID)
            writer.field("sender", session.username)
            writer.field("to", targetUser)
            writer.field("to_device", targetDevice)
            writer.field("ts", Int64(nanos / 1_000_000))
            writer.field("content_type", contentType)
            writer.field("body", body)
        }
        do {
            try await storage.apply([.put(StorageLayout.key(StorageLayout.toDevice, targetDevice, sortKey), value: record)])
        } catch {
            throw AccountService.storageError(error)
        }
        return ToDeviceMessage(id: id, targetDevice: targetDevice, record: record)
    }

    /// The oldest unacknowledged messages for a device.
    public func pending(for session: Session, limit: Int) async throws(ChatError) -> [ToDeviceMessage] {
        do {
            let rows = try await storage.scan(table: StorageLayout.toDevice, partition: Array(session.deviceID.utf8), StorageScan(limit: min(max(limit, 1), Self.maxPending)))
            return rows.map { ToDeviceMessage(id: $0.sortKey.hex, targetDevice: session.deviceID, record: $0.value) }
        } catch {
            throw AccountService.storageError(error)
        }
    }

    /// Deletes every message waiting for a device (it was revoked).
    public func purge(deviceID: String) async throws(ChatError) {
        do {
            while true {
                let rows = try await storage.scan(table: StorageLayout.toDevice, partition: Array(deviceID.utf8), StorageScan(limit: StorageLimits.maxBatchWrites))
                guard !rows.isEmpty else { return }
                try await storage.apply(rows.map { .delete(StorageLayout.key(StorageLayout.toDevice, deviceID, $0.sortKey)) })
            }
        } catch {
            throw AccountService.storageError(error)
        }
    }

    /// Deletes acknowledged messages; unknown ids are ignored.
    public func acknowledge(_ session: Session, ids: [String]) async throws(ChatError) {
        guard ids.count <= Self.maxPending else { throw .invalid("at most \(Self.maxPending) ids per acknowledgement") }
        var writes: [StorageWrite] = []
        for id in ids {
            guard let key = Self.bytes(fromHex: id), key.count == 16 else { throw .invalid("'\(id)' is not a to-device message id") }
            writes.append(.delete(StorageLayout.key(StorageLayout.toDevice, session.deviceID, key)))
        }
        do {
            try await storage.apply(writes)
        } catch {
            throw AccountService.storageError(error)
        }
    }

    private static func bytes(fromHex text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        return bytes
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case 0x30...0x39: digit - 0x30
        case 0x61...0x66: digit - 0x61 + 10
        default: nil
        }
    }
}
