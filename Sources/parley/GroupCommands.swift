// `parley group ...` and `parley presence`.
import ArgumentParser
import Foundation
import ParleyClient
import ParleyJSON

extension Parley {
    struct Group: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create and manage groups (up to 100 members).",
            discussion: "GROUP is a group's id (g:…) or its name as `parley group list` shows it.",
            subcommands: [Create.self, List.self, Info.self, Add.self, Remove.self, Leave.self, Send.self, Chat.self]
        )
    }

    struct Presence: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show whether users are online, or when they were last seen.")
        @Argument(help: "Usernames.") var users: [String]

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let reply = try await session.chat.request("presence") { writer in
                    writer.beginArray("users")
                    for user in users { writer.element(user) }
                    writer.endArray()
                }
                for entry in reply["users"]?.arrayValue ?? [] {
                    let name = entry["username"]?.stringValue ?? "?"
                    switch entry["status"]?.stringValue {
                    case "online": say("\(name): online")
                    case "offline":
                        if let seen = entry["last_seen"]?.int64Value {
                            say("\(name): offline, last seen \(Date(timeIntervalSince1970: TimeInterval(seen) / 1000))")
                        } else {
                            say("\(name): offline")
                        }
                    default: say("\(name): unknown (no such user, or you share no conversation)")
                    }
                }
                await session.chat.close()
            }
        }
    }
}

extension Parley.Group {
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a group; you are its owner.")
        @Argument var name: String
        @Option(parsing: .upToNextOption, help: "Usernames to add.") var members: [String] = []

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let reply = try await session.chat.request("group_create") { writer in
                    writer.field("name", name)
                    writer.field("client_id", UUID().uuidString.lowercased())
                    writer.beginArray("members")
                    for member in members { writer.element(member) }
                    writer.endArray()
                }
                say("Created \(name): \(reply["conversation"]?.stringValue ?? "")")
                await session.chat.close()
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your groups.")

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                for group in try await session.groups() {
                    say("\(group.id)  \(group.name)  (\(group.members) members)")
                }
                await session.chat.close()
            }
        }
    }

    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a group's members and their roles.")
        @Argument var group: String

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let id = try await session.resolveGroup(group)
                let info = try await session.chat.request("group_info") { $0.field("conversation", id) }
                say("\(info["name"]?.stringValue ?? "")  \(id)")
                for member in info["members"]?.arrayValue ?? [] {
                    say("  \(member["username"]?.stringValue ?? "")  \(member["role"]?.stringValue ?? "")")
                }
                await session.chat.close()
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add members (admins and the owner only).")
        @Argument var group: String
        @Argument var users: [String]

        func run() async throws {
            try await changeGroup(group, "group_add") { writer in
                writer.beginArray("members")
                for user in users { writer.element(user) }
                writer.endArray()
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a member (admins and the owner only).")
        @Argument var group: String
        @Argument var user: String

        func run() async throws {
            try await changeGroup(group, "group_remove") { $0.field("member", user) }
        }
    }

    struct Leave: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Leave a group (an owner hands ownership over first).")
        @Argument var group: String

        func run() async throws {
            try await changeGroup(group, "group_leave") { _ in }
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send one message to a group.")
        @Argument var group: String
        @Argument var text: String

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let id = try await session.resolveGroup(group)
                let ack = try await session.chat.send(conversation: id, body: text)
                say("sent #\(ack["seq"]?.int64Value ?? 0)")
                await session.chat.close()
            }
        }
    }

    struct Chat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Chat in a group interactively.")
        @Argument var group: String

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let id = try await session.resolveGroup(group)
                try await session.interactive(conversation: id, title: group)
            }
        }
    }
}

/// Runs one group change request and reports its sequence.
private func changeGroup(_ group: String, _ type: String, _ fields: @escaping (inout JSONWriter) -> Void) async throws {
    try await reportErrors {
        let session = try await ChatClientSession.connect()
        let id = try await session.resolveGroup(group)
        let reply = try await session.chat.request(type) { writer in
            writer.field("conversation", id)
            fields(&writer)
        }
        say("done (#\(reply["seq"]?.int64Value ?? 0))")
        await session.chat.close()
    }
}
