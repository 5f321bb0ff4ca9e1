// A small JSON reader and writer for protocol frames and stored records. It works on
// bytes and avoids Foundation's JSONDecoder, which costs several microseconds per
// message on the chat hot path.

/// A parsed JSON value.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public subscript(_ key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    /// The largest whole number JSON carries exactly (2^53 - 1).
    public static let maxSafeInteger: Int64 = 9_007_199_254_740_991

    /// The value as a whole number, when it is a number with no fraction within ±(2^53 - 1).
    public var int64Value: Int64? {
        guard case .number(let number) = self, number.rounded() == number, abs(number) <= Double(Self.maxSafeInteger) else { return nil }
        return Int64(number)
    }

    public var boolValue: Bool? {
        if case .bool(let value) = self { return value }
        return nil
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let members) = self { return members }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let items) = self { return items }
        return nil
    }
}

/// Why bytes are not valid JSON, with the byte offset where reading stopped.
public struct JSONParseError: Error, CustomStringConvertible, Equatable {
    public var offset: Int
    public var reason: String
    public var description: String { "\(reason) at byte \(offset)" }
}

/// Parses one JSON document. Nesting is limited so hostile input cannot exhaust the stack.
public struct JSONParser {
    public static let maxDepth = 32

    private let bytes: UnsafeRawBufferPointer
    private var index = 0

    public static func parse(_ bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        let result = withBuffer(bytes) { buffer in
            Result { () throws(JSONParseError) -> JSONValue in
                var parser = JSONParser(bytes: buffer)
                parser.skipWhitespace()
                let value = try parser.value(depth: 0)
                parser.skipWhitespace()
                guard parser.index == buffer.count else { throw parser.error("unexpected data after the JSON value") }
                return value
            }
        }
        return try result.get()
    }

    /// Reads a top-level object whose every value is a string (most request frames) into
    /// its pairs, in order, without building `JSONValue`s or a dictionary. Nil when the text
    /// is anything else, valid or not: the caller then uses `parse`, which also explains
    /// errors. Like `parse`, a key given twice means its last value.
    public static func flatStringObject(_ bytes: some Collection<UInt8>) -> JSONStringPairs? {
        withBuffer(bytes) { buffer -> JSONStringPairs? in
            var parser = JSONParser(bytes: buffer)
            var pairs = JSONStringPairs()
            // A chat frame has up to eight fields: one allocation instead of one per doubling.
            pairs.pairs.reserveCapacity(8)
            parser.skipWhitespace()
            guard parser.consume(UInt8(ascii: "{")) else { return nil }
            parser.skipWhitespace()
            if !parser.consume(UInt8(ascii: "}")) {
                while true {
                    parser.skipWhitespace()
                    guard parser.next == UInt8(ascii: "\""), let key = try? parser.string() else { return nil }
                    parser.skipWhitespace()
                    guard parser.consume(UInt8(ascii: ":")) else { return nil }
                    parser.skipWhitespace()
                    guard parser.next == UInt8(ascii: "\""), let value = try? parser.string() else { return nil }
                    pairs.pairs.append((key, value))
                    parser.skipWhitespace()
                    if parser.consume(UInt8(ascii: "}")) { break }
                    guard parser.consume(UInt8(ascii: ",")) else { return nil }
                }
            }
            parser.skipWhitespace()
            return parser.index == buffer.count ? pairs : nil
        }
    }

    /// Runs `body` on the bytes in place when they are contiguous, else on a copy.
    private static func withBuffer<R>(_ bytes: some Collection<UInt8>, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        if let result = bytes.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) { return result }
        return Array(bytes).withUnsafeBytes(body)
    }

    private var next: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func consume(_ byte: UInt8) -> Bool {
        guard next == byte else { return false }
        index += 1
        return true
    }

    private init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    private func error(_ reason: String) -> JSONParseError { JSONParseError(offset: index, reason: reason) }

    private mutating func skipWhitespace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 {
            index += 1
        }
    }

    private mutating func value(depth: Int) throws(JSONParseError) -> JSONValue {
        guard depth < Self.maxDepth else { throw error("nesting deeper than \(Self.maxDepth)") }
        guard index < bytes.count else { throw error("unexpected end of input") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        default: return .number(try number())
        }
    }

    private mutating func literal(_ word: StaticString) throws(JSONParseError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw error("unexpected end of input") }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
            throw error("invalid literal")
        }
        index += count
    }

    private mutating func object(depth: Int) throws(JSONParseError) -> JSONValue {
        index += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let key = try string()
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
            index += 1
            skipWhitespace()
            members[key] = try value(depth: depth + 1)
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of input") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
            } else if bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(members)
            } else {
                throw error("expected ',' or '}'")
            }
        }
    }

    private mutating func array(depth: Int) throws(JSONParseError) -> JSONValue {
        index += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try value(depth: depth + 1))
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of input") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
            } else if bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            } else {
                throw error("expected ',' or ']'")
            }
        }
    }

    private mutating func string() throws(JSONParseError) -> String {
        index += 1
        let start = index
        // Fast path: no escapes. ASCII needs no UTF-8 validation, which costs three times the
        // copy (most keys and values of chat frames are ASCII).
        var highBits: UInt8 = 0
        // Eight bytes at a time while none is a quote, a backslash, a control byte or beyond ASCII.
        while index + 8 <= bytes.count {
            let word = bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            if JSONWords.needsEscaping(word) || word & JSONWords.highs != 0 { break }
            index += 8
        }
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
                index += 1
                if highBits < 0x80 { return String(decoding: slice, as: UTF8.self) }
                guard let text = String(validating: slice, as: UTF8.self) else { throw error("invalid UTF-8 in string") }
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            if byte < 0x20 { throw error("control character in string") }
            highBits |= byte
            index += 1
        }
        var scalars: [UInt8] = Array(UnsafeRawBufferPointer(rebasing: bytes[start..<index]))
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                guard let text = String(validating: scalars, as: UTF8.self) else { throw error("invalid UTF-8 in string") }
                return text
            }
            if byte < 0x20 { throw error("control character in string") }
            if byte != UInt8(ascii: "\\") {
                scalars.append(byte)
                index += 1
                continue
            }
            index += 1
            guard index < bytes.count else { break }
            let escape = bytes[index]
            index += 1
            switch escape {
            case UInt8(ascii: "\""): scalars.append(0x22)
            case UInt8(ascii: "\\"): scalars.append(0x5C)
            case UInt8(ascii: "/"): scalars.append(0x2F)
            case UInt8(ascii: "b"): scalars.append(0x08)
            case UInt8(ascii: "f"): scalars.append(0x0C)
            case UInt8(ascii: "n"): scalars.append(0x0A)
            case UInt8(ascii: "r"): scalars.append(0x0D)
            case UInt8(ascii: "t"): scalars.append(0x09)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xD800...0xDBFF).contains(code) {
                    guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                        throw error("unpaired surrogate")
                    }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw error("unpaired surrogate") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(code) {
                    throw error("unpaired surrogate")
                }
                scalars.append(contentsOf: Array(String(Character(Unicode.Scalar(code)!)).utf8))
            default:
                throw error("invalid escape")
            }
        }
        throw error("unterminated string")
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("short \\u escape") }
        var code: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw error("invalid \\u escape")
            }
            code = code << 4 | digit
            index += 1
        }
        return code
    }

    private mutating func number() throws(JSONParseError) -> Double {
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        var digits = 0
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1; digits += 1 }
        guard digits > 0 else { throw error("invalid value") }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var fraction = 0
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1; fraction += 1 }
            guard fraction > 0 else { throw error("invalid number") }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            var exponent = 0
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1; exponent += 1 }
            guard exponent > 0 else { throw error("invalid number") }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let number = Double(text) else { throw error("invalid number") }
        return number
    }
}

/// Tests on eight bytes at once, for the scans of strings: the exact "some byte is zero" and
/// "some byte is below n" tests (no false positives, unlike the shorter forms).
enum JSONWords {
    static let ones: UInt64 = 0x0101_0101_0101_0101
    static let highs: UInt64 = 0x8080_8080_8080_8080

    static func hasZero(_ word: UInt64) -> Bool { (word &- ones) & ~word & highs != 0 }

    /// Some byte is a control byte (below 0x20), a quote or a backslash.
    static func needsEscaping(_ word: UInt64) -> Bool {
        (word &- ones &* 0x20) & ~word & highs != 0 || hasZero(word ^ (ones &* 0x22)) || hasZero(word ^ (ones &* 0x5C))
    }
}

/// The pairs of a flat object of strings, from `JSONParser.flatStringObject`.
public struct JSONStringPairs: Sendable {
    public fileprivate(set) var pairs: [(key: String, value: String)] = []

    /// The value of `key`: its last one when the object gave it twice.
    public subscript(key: String) -> String? {
        pairs.last { $0.key == key }?.value
    }
}

/// Builds compact JSON text, in the order fields are added, then hands it out as bytes.
///
/// The text is written through a pointer into memory the writer owns, with one capacity
/// check per piece: appending to an array instead checked its uniqueness and capacity per
/// byte and went through generic code, which made a message's record cost about a
/// microsecond. Noncopyable, since it owns that memory.
public struct JSONWriter: ~Copyable {
    private var base: UnsafeMutablePointer<UInt8>
    private var count = 0
    private var capacity: Int
    /// Bit d is set once the container open at depth d + 1 has an element.
    private var hasElement: UInt64 = 0
    private var depth = 0

    /// False while the writer writes into memory it was lent (`array(capacity:_:)`); it
    /// moves to memory of its own when that is full.
    private var owned = true

    public init(capacity: Int = 256) {
        self.capacity = max(16, capacity)
        base = .allocate(capacity: self.capacity)
    }

    private init(lent memory: UnsafeMutableBufferPointer<UInt8>) {
        base = memory.baseAddress!
        capacity = memory.count
        owned = false
    }

    deinit { if owned { base.deallocate() } }

    /// The JSON text written so far.
    public var bytes: [UInt8] { Array(UnsafeBufferPointer(start: base, count: count)) }

    /// JSON written by `body` straight into the storage of the array returned, which has room
    /// for `capacity` bytes: no second allocation and no copy when the text fits, as `bytes`
    /// would make. Text that outgrows it is copied once more.
    public static func array(capacity: Int, _ body: (inout JSONWriter) -> Void) -> [UInt8] {
        var outgrown: [UInt8]?
        let text = [UInt8](unsafeUninitializedCapacity: max(16, capacity)) { memory, initialized in
            var writer = JSONWriter(lent: memory)
            body(&writer)
            if writer.owned {
                outgrown = writer.bytes
                initialized = 0
            } else {
                initialized = writer.count
            }
        }
        return outgrown ?? text
    }

    public mutating func beginObject() { separator(); open(UInt8(ascii: "{")) }
    public mutating func endObject() { close(UInt8(ascii: "}")) }
    public mutating func beginArray(_ key: String? = nil) { if let key { self.key(key) } else { separator() }; open(UInt8(ascii: "[")) }
    public mutating func endArray() { close(UInt8(ascii: "]")) }
    public mutating func beginObject(_ key: String) { self.key(key); open(UInt8(ascii: "{")) }

    public mutating func field(_ key: String, _ value: String) { self.key(key); appendString(value) }
    public mutating func field(_ key: String, _ value: Int64) { self.key(key); appendInteger(value) }
    public mutating func field(_ key: String, _ value: Int) { field(key, Int64(value)) }
    public mutating func field(_ key: String, _ value: Bool) { self.key(key); appendASCII(value ? "true" : "false") }
    public mutating func fieldNull(_ key: String) { self.key(key); appendASCII("null") }
    public mutating func field(_ key: String, _ value: String?) {
        if let value { field(key, value) } else { fieldNull(key) }
    }

    /// `{"type":…,"id":…, then the fields}`: the shape of every request and reply frame of
    /// the chat protocol (a null `id` for events and unnamed replies).
    public static func frame(_ type: String, id: String?, _ fields: (inout JSONWriter) -> Void = { _ in }) -> [UInt8] {
        // An ack, the most frequent frame, takes about 180 bytes: room for it from the start.
        object(capacity: 256) { writer in
            writer.field("type", type)
            writer.field("id", id)
            fields(&writer)
        }
    }

    /// `{` the fields `}`, written as `array(capacity:_:)` writes: the shape of every record,
    /// row value and body the server stores or sends.
    public static func object(capacity: Int, _ fields: (inout JSONWriter) -> Void) -> [UInt8] {
        array(capacity: capacity) { writer in
            writer.beginObject()
            fields(&writer)
            writer.endObject()
        }
    }

    /// Appends an array element that is a string.
    public mutating func element(_ value: String) { separator(); appendString(value) }

    /// Appends already-encoded JSON as an array element.
    public mutating func rawElement(_ json: [UInt8]) { separator(); append(json) }

    /// Appends already-encoded JSON as the value of key.
    public mutating func rawField(_ key: String, _ json: [UInt8]) { self.key(key); append(json) }

    private mutating func open(_ bracket: UInt8) {
        precondition(depth < 64, "JSONWriter nests at most 64 levels")
        append(bracket)
        depth += 1
        hasElement &= ~(1 << UInt64(depth - 1))
    }

    private mutating func close(_ bracket: UInt8) {
        append(bracket)
        depth -= 1
    }

    private mutating func separator() {
        guard depth > 0 else { return }
        let bit: UInt64 = 1 << UInt64(depth - 1)
        if hasElement & bit != 0 { append(UInt8(ascii: ",")) }
        hasElement |= bit
    }

    private mutating func key(_ key: String) {
        separator()
        appendString(key)
        append(UInt8(ascii: ":"))
    }

    private mutating func appendASCII(_ text: StaticString) {
        text.withUTF8Buffer { append(UnsafeRawBufferPointer($0)) }
    }

    private mutating func appendInteger(_ value: Int64) {
        if value < 0 { append(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                count += 1
                buffer[24 - count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            append(UnsafeRawBufferPointer(rebasing: buffer[(24 - count)...]))
        }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    /// Whether any byte is a control byte, a quote or a backslash: eight bytes at a time
    /// (`JSONWords`), then one at a time.
    static func needsEscaping(_ utf8: UnsafeBufferPointer<UInt8>) -> Bool {
        var index = 0
        if let base = utf8.baseAddress {
            let raw = UnsafeRawPointer(base)
            while index + 8 <= utf8.count {
                if JSONWords.needsEscaping(raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)) { return true }
                index += 8
            }
        }
        while index < utf8.count {
            let byte = utf8[index]
            if byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return true }
            index += 1
        }
        return false
    }

    /// Appends a quoted string: in one copy when nothing needs escaping (the usual case),
    /// else byte by byte. Read in place, without a copy of the string.
    private mutating func appendString(_ text: String) {
        append(UInt8(ascii: "\""))
        if text.utf8.withContiguousStorageIfAvailable({ appendEscaping($0) }) == nil {
            var text = text
            text.withUTF8 { appendEscaping($0) }
        }
        append(UInt8(ascii: "\""))
    }

    private mutating func appendEscaping(_ utf8: UnsafeBufferPointer<UInt8>) {
        if !Self.needsEscaping(utf8) {
            append(UnsafeRawBufferPointer(utf8))
            return
        }
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "\""): append(0x5C, 0x22)
            case UInt8(ascii: "\\"): append(0x5C, 0x5C)
            case 0x0A: append(0x5C, UInt8(ascii: "n"))
            case 0x0D: append(0x5C, UInt8(ascii: "r"))
            case 0x09: append(0x5C, UInt8(ascii: "t"))
            case 0..<0x20:
                append(0x5C, UInt8(ascii: "u"))
                append(UInt8(ascii: "0"), UInt8(ascii: "0"))
                append(Self.hexDigits[Int(byte >> 4)], Self.hexDigits[Int(byte & 0xF)])
            default: append(byte)
            }
        }
    }

    // The only writes to the memory: each makes room first.

    @inline(__always)
    private mutating func append(_ byte: UInt8) {
        reserve(1)
        base[count] = byte
        count += 1
    }

    @inline(__always)
    private mutating func append(_ first: UInt8, _ second: UInt8) {
        reserve(2)
        base[count] = first
        base[count + 1] = second
        count += 2
    }

    @inline(__always)
    private mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, !bytes.isEmpty else { return }
        reserve(bytes.count)
        UnsafeMutableRawPointer(base + count).copyMemory(from: source, byteCount: bytes.count)
        count += bytes.count
    }

    private mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    @inline(__always)
    private mutating func reserve(_ extra: Int) {
        if count + extra > capacity { grow(toHold: count + extra) }
    }

    private mutating func grow(toHold needed: Int) {
        let grown = max(needed, capacity * 2)
        let memory = UnsafeMutablePointer<UInt8>.allocate(capacity: grown)
        memory.initialize(from: base, count: count)
        if owned { base.deallocate() }
        owned = true
        base = memory
        capacity = grown
    }
}
