// The hand-written JSON writer, the conversation id parser and the WebSocket framing,
// which the hot path uses instead of Foundation and NIO's frame handlers.
import NIOCore
import ParleyCore
import ParleyJSON
import ParleyServer
import ParleyWebSocket
import Testing

@Suite("Encoding", .timeLimit(.minutes(3)))
struct EncodingTests {
    @Test func writerEscapesWhatJSONRequiresAndNothingElse() throws {
        var writer = JSONWriter()
        writer.beginObject()
        writer.field("plain", "hello, wörld 🦜")
        writer.field("escaped", "a\"b\\c\nd\re\tf\u{01}g\u{1F}")
        writer.field("zero", 0)
        writer.field("negative", -42)
        writer.field("max", Int64.max)
        writer.field("min", Int64.min)
        writer.field("yes", true)
        writer.fieldNull("nothing")
        writer.beginArray("list")
        writer.element("x")
        writer.beginObject()
        writer.endObject()
        writer.beginArray()
        writer.endArray()
        writer.endArray()
        writer.endObject()
        let text = String(decoding: writer.bytes, as: UTF8.self)
        #expect(text == #"{"plain":"hello, wörld 🦜","escaped":"a\"b\\c\nd\re\tf\u0001g\u001f","zero":0,"negative":-42,"max":9223372036854775807,"min":-9223372036854775808,"yes":true,"nothing":null,"list":["x",{},[]]}"#)
        let parsed = try JSONParser.parse(writer.bytes)
        #expect(parsed["escaped"]?.stringValue == "a\"b\\c\nd\re\tf\u{01}g\u{1F}")
        #expect(parsed["max"]?.int64Value == nil, "above 2^53 - 1, integers are not exact in JSON")
        #expect(parsed["negative"]?.int64Value == -42)
    }

    /// The end of an HTTP head is found wherever it lies, searching from any point before it,
    /// and never in a head cut short: every cut of a real request, every start offset.
    @Test func theEndOfAnHTTPHeadIsFoundAtEveryCutAndStart() {
        let head = Array("GET /v1/ws HTTP/1.1\r\nHost: a\r\n\rX: \r\r\n\r\n".utf8)
        let end = head.count - 4
        let request = head + Array("after\r\n\r\n".utf8)
        for cut in 0...request.count {
            let bytes = Array(request.prefix(cut))
            for start in 0...max(0, cut - 3) {
                let found = bytes.withUnsafeBytes { HTTPHead.end(in: $0, from: start) }
                // The head's end, or past it the end of the bytes that follow it (a second blank line).
                let second = request.count - 4
                let expected: Int? = start <= end && cut >= end + 4 ? end : (start > end && start <= second && cut == request.count ? second : nil)
                #expect(found == expected, "cut \(cut), start \(start)")
            }
        }
    }

    /// Text written into an array's own storage (`JSONWriter.array`) is the same whether it
    /// fits the room given, fills it exactly, or outgrows it once or many times.
    @Test func textWrittenInPlaceIsTheSameAtEveryCapacity() {
        func write(_ writer: inout JSONWriter, _ body: String) {
            writer.beginObject()
            writer.field("type", "message")
            writer.field("body", body)
            writer.field("seq", 42)
            writer.endObject()
        }
        for length in [0, 1, 7, 100, 1_000] {
            let body = String(repeating: "é\"x", count: length)
            var reference = JSONWriter(capacity: 16)
            write(&reference, body)
            let expected = reference.bytes
            for capacity in [0, 16, expected.count - 1, expected.count, expected.count + 1, 4 * expected.count] {
                #expect(JSONWriter.array(capacity: capacity) { write(&$0, body) } == expected, "body \(length), capacity \(capacity)")
            }
        }
    }

    /// The writer looks for bytes to escape eight at a time: every ASCII byte, at every
    /// position of a word and of the tail, must be found (or left alone) as one at a time would.
    @Test func everyByteThatNeedsEscapingIsFoundAtEveryPosition() {
        func reference(_ text: String) -> [UInt8] {
            var out = Array("\"".utf8)
            for byte in text.utf8 {
                switch byte {
                case UInt8(ascii: "\""): out += Array("\\\"".utf8)
                case UInt8(ascii: "\\"): out += Array("\\\\".utf8)
                case 0x0A: out += Array("\\n".utf8)
                case 0x0D: out += Array("\\r".utf8)
                case 0x09: out += Array("\\t".utf8)
                case 0..<0x20: out += Array(("\\u00" + String(byte >> 4, radix: 16) + String(byte & 0xF, radix: 16)).utf8)
                default: out.append(byte)
                }
            }
            return out + Array("\"".utf8)
        }
        for byte in UInt8(0)..<0x80 {
            for position in 0..<19 {
                let text = String(repeating: "a", count: position) + String(UnicodeScalar(byte)) + String(repeating: "é", count: (18 - position) / 2)
                var writer = JSONWriter()
                writer.beginArray()
                writer.element(text)
                writer.endArray()
                #expect(writer.bytes == Array("[".utf8) + reference(text) + Array("]".utf8), "byte \(byte) at \(position)")
            }
        }
    }

    /// The parser skips plain bytes of a string eight at a time: every ASCII byte, escaped as
    /// JSON requires, at every position of a word and of the tail, reads back as it was, and a
    /// raw control byte anywhere is refused.
    @Test func everyByteOfAStringReadsBackAtEveryPosition() throws {
        for byte in UInt8(0)..<0x80 {
            for position in 0..<19 {
                let text = String(repeating: "a", count: position) + String(UnicodeScalar(byte)) + String(repeating: "é", count: (18 - position) / 2) + "z"
                var writer = JSONWriter()
                writer.beginObject()
                writer.field("text", text)
                writer.endObject()
                #expect(JSONParser.flatStringObject(writer.bytes)?["text"] == text, "byte \(byte) at \(position)")
                #expect(try JSONParser.parse(writer.bytes).objectValue?["text"]?.stringValue == text, "byte \(byte) at \(position)")
                guard byte < 0x20 else { continue }
                let raw = Array(#"{"text":""#.utf8) + Array(String(repeating: "a", count: position).utf8) + [byte] + Array(#"bcdefghij"}"#.utf8)
                #expect(JSONParser.flatStringObject(raw) == nil, "raw byte \(byte) at \(position)")
                #expect(throws: JSONParseError.self) { try JSONParser.parse(raw) }
            }
        }
    }

    @Test func flatObjectsOfStringsAreReadInPlaceAndAnythingElseIsLeftToTheFullParser() {
        let pairs = JSONParser.flatStringObject(Array(#" { "type" : "send", "body":"a\"b\n\u00e9", "type":"again" } "#.utf8))
        #expect(pairs?["type"] == "again", "a key given twice means its last value, as in the full parser")
        #expect(pairs?["body"] == "a\"b\né")
        #expect(pairs?["id"] == nil)
        #expect(JSONParser.flatStringObject(Array("{}".utf8))?.pairs.isEmpty == true)
        // Unescaped text: ASCII, UTF-8 beyond it, and bytes that are not UTF-8.
        #expect(JSONParser.flatStringObject(Array(#"{"ascii":"plain text","utf8":"wörld 🦜"}"#.utf8))?["utf8"] == "wörld 🦜")
        #expect(JSONParser.flatStringObject(Array(#"{"ascii":"plain text"}"#.utf8))?["ascii"] == "plain text")
        let invalid: [UInt8] = Array(#"{"body":"a"#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(JSONParser.flatStringObject(invalid) == nil)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(invalid) }
        for other in [#"{"a":1}"#, #"{"a":"x","b":{"c":"d"}}"#, #"{"a":"x"} x"#, #"{"a":"x",}"#, #"["a"]"#, #"{"a":"x""#, #"{"a":null}"#, ""] {
            #expect(JSONParser.flatStringObject(Array(other.utf8)) == nil, "\(other) is not a flat object of strings")
        }
    }

    @Test func conversationIDsParseOnlyInTheirTwoForms() {
        let direct = ConversationID("d:alice:bob")
        #expect(direct?.kind == .direct && direct?.participants == ["alice", "bob"])
        #expect(ConversationID("d:alice:alice")?.participants == ["alice"])
        #expect(direct == ConversationID.direct("bob", "alice"))
        #expect(ConversationID("g:team_42")?.groupID == "team_42")
        // Users beyond ASCII are ordered as strings are, the order `direct` uses.
        #expect(ConversationID("d:e:é") == ConversationID.direct("é", "e"))
        #expect(ConversationID("d:Zed:amy") == ConversationID.direct("amy", "Zed"))
        #expect(ConversationID("d:b:a\u{301}") == ConversationID.direct("a\u{301}", "b"), "á with a combining accent sorts after b")
        for bad in ["", "d:", "g:", "d:alice", "d:bob:alice", "d:é:e", "d:amy:Zed", "é:a:b", "d:a:b:c", "d::b", "d:a:", "g:ab", "g:Team", "g:a:b", "x:a:b", "dd:a:b", "g:" + String(repeating: "a", count: 200)] {
            #expect(ConversationID(bad) == nil, "\(bad) is not a conversation id")
        }
    }

    /// A direct conversation includes exactly its two users: compared as bytes for ASCII ids,
    /// as strings (canonical equivalence) beyond ASCII.
    @Test func aDirectConversationIncludesExactlyItsTwoUsers() throws {
        let conversation = ConversationID.direct("u_bob", "u_amy")
        for user in ["u_amy", "u_bob"] { #expect(conversation.includes(user), "\(user)") }
        for user in ["", "u_am", "u_amyx", "u_bo", "d", "u_amy:u_bob", "amy", "u_AMY"] { #expect(!conversation.includes(user), "\(user)") }
        let accented = ConversationID.direct("u_b", "u_\u{E9}")
        #expect(accented.includes("u_\u{E9}"))
        #expect(accented.includes("u_e\u{301}"), "canonically equivalent")
        #expect(!accented.includes("u_e"))
        #expect(!ConversationID.group("team").includes("team"))
        #expect(try #require(ConversationID("d:u_amy:u_bob")).includes("u_bob"))
    }

    /// Frames written by `WebSocketFrames.append` read back whole with `WebSocketReader`, for
    /// every length form, split at every byte; each side refuses the other side's masking.
    @Test func framesRoundTripMaskedAndUnmasked() throws {
        for masked in [true, false] {
            for length in [0, 5, 125, 126, 65_535, 65_536] {
                let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
                var frames = ByteBuffer()
                WebSocketFrames.append(opcode: WebSocketFrames.text, payload, to: &frames, key: masked ? (0x12, 0x34, 0x56, 0x78) : nil)
                WebSocketFrames.append(opcode: WebSocketFrames.ping, ByteBuffer(bytes: [1, 2]), to: &frames, key: masked ? (9, 8, 7, 6) : nil)
                if masked { #expect(frames.getInteger(at: 1, as: UInt8.self)! & 0x80 != 0) }
                var reader = WebSocketReader(maxMessageBytes: 1 << 20, masked: masked)
                var events: [WebSocketReader.Event] = []
                // Handed over in pieces, as reads arrive.
                let step = max(1, frames.readableBytes / 7)
                while frames.readableBytes > 0 {
                    var piece = frames.readSlice(length: min(step, frames.readableBytes))!
                    reader.append(&piece)
                    while let event = try reader.next() { events.append(event) }
                }
                guard events.count == 2, case .text(let text) = events[0], case .ping(let ping) = events[1] else {
                    Issue.record("masked \(masked), length \(length): \(events)")
                    continue
                }
                #expect(text == payload, "masked \(masked), length \(length)")
                #expect(Array(ping.readableBytesView) == [1, 2])

                var other = WebSocketReader(maxMessageBytes: 1 << 20, masked: !masked)
                var frame = ByteBuffer()
                WebSocketFrames.append(opcode: WebSocketFrames.text, payload, to: &frame, key: masked ? (1, 2, 3, 4) : nil)
                other.append(&frame)
                #expect(throws: WebSocketReader.Failure.self) { _ = try other.next() }
            }
        }
    }

    /// A payload given as bytes, as a buffer or as a record spliced into an event frames the
    /// same bytes, with the length its header gives, for every length form of the header.
    @Test func framePayloadsFrameTheirBytesInEveryForm() throws {
        for length in [0, 60, 200, 70_000] {
            let record = Array("{\"body\":\"\(String(repeating: "a", count: length))\"}".utf8)
            let event = Array("{\"type\":\"message\",\"message\":".utf8) + record + Array("}".utf8)
            for payload in [FramePayload.event("message", record), .bytes(event), .buffer(ByteBuffer(bytes: event))] {
                #expect(payload.count == event.count)
                #expect(Array(payload.buffer.readableBytesView) == event)
                var frame = ByteBuffer(bytes: [0xAB])
                payload.appendFrame(opcode: WebSocketFrames.text, to: &frame)
                #expect(frame.readInteger(as: UInt8.self) == 0xAB)
                var reader = WebSocketReader(maxMessageBytes: 1 << 20, masked: false)
                reader.append(&frame)
                guard case .text(let text) = try reader.next() else {
                    Issue.record("length \(length), \(payload): no text frame")
                    continue
                }
                #expect(Array(text.readableBytesView) == event, "length \(length), \(payload)")
                #expect(try reader.next() == nil)
            }
        }
    }
}
