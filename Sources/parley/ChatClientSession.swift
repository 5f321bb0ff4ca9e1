// A logged-in CLI session: the connection plus the cursors kept between runs.
import Foundation
import ParleyClient
import ParleyJSON

struct ChatClientSession {
    let chat: ChatSession
    let store: CredentialStore

    static func connect() async throws -> ChatClientSession {
        let store = CredentialStore()
        let credentials = try store.load()
        let chat = try await ChatSession.connect(url: credentials.websocketURL, token: credentials.token)
        return ChatClientSession(chat: chat, store: store)
    }

    /// Fetches everything past the saved cursors, in order, and advances them.
    func catchUp(printing: Bool) async throws {
        var cursors = store.cursors()
        for (conversation, _) in try await chat.sync(cursors: cursors) {
            var after = cursors[conversation, default: 0]
            while true {
                let page = try await chat.fetch(conversation: conversation, after: after)
                for message in page.messages {
                    if printing { say(format(message)) }
                    after = message["seq"]?.int64Value ?? after
                }
                if !page.more { break }
            }
            cursors[conversation] = after
        }
        store.saveCursors(cursors)
    }

    /// Prints incoming messages (of one conversation, or all) until the connection ends.
    func printLive(conversation: String?) async throws {
        var cursors = store.cursors()
        for await event in chat.events {
            switch event {
            case .message(let message):
                guard let id = message["conversation"]?.stringValue, let seq = message["seq"]?.int64Value else { continue }
                // Other conversations' messages stay unseen for the next catch-up; a message the
                // catch-up already printed (it arrived while the pages were being fetched) is skipped.
                guard conversation == nil || conversation == id, seq > cursors[id, default: 0] else { continue }
                cursors[id] = seq
                store.saveCursors(cursors)
                say(format(message))
                if conversation != nil {
                    _ = try? await chat.request("receipt") { writer in
                        writer.field("conversation", id)
                        writer.field("kind", "read")
                        writer.field("seq", seq)
                    }
                }
            case .error(let error):
                printError("server: \(error)")
            case .closed(let code, let reason):
                printError("connection closed (\(code.map(String.init) ?? "no code")) \(reason)")
                return
            case .other(let frame):
                if let line = Self.describe(frame, in: conversation) { say(line) }
            case .toDevice:
                break
            }
        }
    }

    /// A line for typing, receipt and presence events of the conversation shown (all when nil).
    static func describe(_ frame: JSONValue, in conversation: String?) -> String? {
        let who = frame["username"]?.stringValue ?? "someone"
        let inConversation = conversation == nil || frame["conversation"]?.stringValue == conversation
        switch frame["type"]?.stringValue {
        case "typing" where inConversation:
            return frame["typing"]?.boolValue == true ? "* \(who) is typing…" : nil
        case "receipt" where inConversation:
            return "* \(who) has \(frame["kind"]?.stringValue ?? "read") up to #\(frame["seq"]?.int64Value ?? 0)"
        case "presence":
            return frame["online"]?.boolValue == true ? "* \(who) is online" : "* \(who) went offline"
        default:
            return nil
        }
    }

    /// The user's current groups: id, name and member count.
    func groups() async throws -> [(id: String, name: String, members: Int)] {
        var groups: [(id: String, name: String, members: Int)] = []
        for (conversation, _) in try await chat.sync(cursors: [:]) where conversation.hasPrefix("g:") {
            guard let info = try? await chat.request("group_info", { $0.field("conversation", conversation) }) else { continue }
            groups.append((conversation, info["name"]?.stringValue ?? "", info["members"]?.arrayValue?.count ?? 0))
        }
        return groups
    }

    /// A group id given as such, or found by its name among the user's groups.
    func resolveGroup(_ text: String) async throws -> String {
        if text.hasPrefix("g:") { return text }
        let matches = try await groups().filter { $0.name == text }
        guard matches.count == 1 else {
            throw ParleyError(code: matches.isEmpty ? "not_found" : "ambiguous", message: matches.isEmpty ? "you are in no group named \(text)" : "several of your groups are named \(text); use its id")
        }
        return matches[0].id
    }

    /// Lines typed are sent; incoming messages, typing and receipts are printed; what is
    /// shown is marked read.
    func interactive(conversation: String, title: String) async throws {
        try await catchUp(printing: false)
        say("Chatting with \(title). Type a message and press Enter; Ctrl-D ends.")
        let printer = Task { try await printLive(conversation: conversation) }
        // Standard input is read on a thread of its own: readLine blocks.
        let (lines, input) = AsyncStream<String>.makeStream()
        Thread {
            while let line = readLine() { input.yield(line) }
            input.finish()
        }.start()
        for await line in lines {
            guard !line.isEmpty else { continue }
            do {
                _ = try await chat.send(conversation: conversation, body: line)
            } catch let error as ParleyError {
                printError("not sent: \(error)")
            }
        }
        printer.cancel()
        await chat.close()
    }
}
