// The hand-written JSON writer and the conversation id parser, which the hot path uses
// instead of Foundation.
import ParleyCore
import ParleyJSON
import Testing

@Suite("Encoding")
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

    @Test func flatObjectsOfStringsAreReadInPlaceAndAnythingElseIsLeftToTheFullParser() {
        let pairs = JSONParser.flatStringObject(Array(#" { "type" : "send", "body":"a\"b\n\u00e9", "type":"again" } "#.utf8))
        #expect(pairs?["type"] == "again", "a key given twice means its last value, as in the full parser")
        #expect(pairs?["body"] == "a\"b\né")
        #expect(pairs?["id"] == nil)
        #expect(JSONParser.flatStringObject(Array("{}".utf8))?.pairs.isEmpty == true)
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
        for bad in ["", "d:", "g:", "d:alice", "d:bob:alice", "d:a:b:c", "d::b", "d:a:", "g:ab", "g:Team", "g:a:b", "x:a:b", "dd:a:b", "g:" + String(repeating: "a", count: 200)] {
            #expect(ConversationID(bad) == nil, "\(bad) is not a conversation id")
        }
    }
}
