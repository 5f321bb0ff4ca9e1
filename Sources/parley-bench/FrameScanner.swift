// Reads single fields out of the server's frames without parsing them whole: the
// load generator must cost far less per frame than the server it measures. The
// server writes compact JSON with no spaces, and the fields read here (type, id, seq,
// more, bodies the tool wrote itself) never hold escaped quotes.
import Glibc

/// Finds `"key":` in one frame's bytes and reads the value that follows.
struct FrameScanner {
    let bytes: UnsafeRawBufferPointer

    /// The bytes of the first string value of `key` (without quotes), starting the search at `from`.
    func stringRange(_ key: StaticString, from start: Int = 0) -> Range<Int>? {
        guard let valueStart = valueOffset(key, from: start), valueStart < bytes.count, bytes[valueStart] == UInt8(ascii: "\"") else { return nil }
        var index = valueStart + 1
        while index < bytes.count, bytes[index] != UInt8(ascii: "\"") { index += 1 }
        return index < bytes.count ? (valueStart + 1)..<index : nil
    }

    /// Whether the string value of `key` equals `expected`.
    func string(_ key: StaticString, equals expected: StaticString) -> Bool {
        guard let range = stringRange(key), range.count == expected.utf8CodeUnitCount else { return false }
        return memcmp(bytes.baseAddress! + range.lowerBound, expected.utf8Start, range.count) == 0
    }

    /// The string value of `key` as a Swift string.
    func text(_ key: StaticString) -> String? {
        stringRange(key).map { String(decoding: UnsafeRawBufferPointer(rebasing: bytes[$0]), as: UTF8.self) }
    }

    /// The leading decimal digits of the value of `key` (a number, or a string that starts with digits).
    func integer(_ key: StaticString, from start: Int = 0) -> (value: Int64, end: Int)? {
        guard var index = valueOffset(key, from: start) else { return nil }
        if index < bytes.count, bytes[index] == UInt8(ascii: "\"") { index += 1 }
        var value: Int64 = 0
        var digits = 0
        while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            value = value * 10 + Int64(bytes[index] - UInt8(ascii: "0"))
            index += 1
            digits += 1
        }
        return digits > 0 ? (value, index) : nil
    }

    /// Every integer value of `key` in the frame, in order (the `seq` of each record of a page).
    func integers(_ key: StaticString) -> [Int64] {
        var values: [Int64] = []
        var start = 0
        while let (value, end) = integer(key, from: start) {
            values.append(value)
            start = end
        }
        return values
    }

    /// Whether the value of `key` is the literal `true`.
    func isTrue(_ key: StaticString) -> Bool {
        guard let index = valueOffset(key, from: 0), index + 4 <= bytes.count else { return false }
        return memcmp(bytes.baseAddress! + index, "true", 4) == 0
    }

    /// The offset just after `"key":`, searching from `start`.
    private func valueOffset(_ key: StaticString, from start: Int) -> Int? {
        let keyLength = key.utf8CodeUnitCount
        guard let base = bytes.baseAddress, start < bytes.count else { return nil }
        var position = start
        while position < bytes.count {
            guard let found = memchr(base + position, Int32(key.utf8Start.pointee), bytes.count - position) else { return nil }
            let offset = base.distance(to: UnsafeRawPointer(found))
            guard offset + keyLength <= bytes.count else { return nil }
            guard memcmp(base + offset, key.utf8Start, keyLength) == 0 else {
                position = offset + 1
                continue
            }
            let after = offset + keyLength
            // The key must be quoted and followed by a colon: `"seq":`.
            if offset > 0, bytes[offset - 1] == UInt8(ascii: "\""), after + 1 < bytes.count,
                bytes[after] == UInt8(ascii: "\""), bytes[after + 1] == UInt8(ascii: ":")
            {
                return after + 2
            }
            position = offset + 1
        }
        return nil
    }
}
