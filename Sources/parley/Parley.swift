// parley: the command-line chat client.
import ArgumentParser
import Foundation
import ParleyClient
import ParleyJSON

@main
struct Parley: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parley",
        abstract: "Chat through a Parley server from the terminal.",
        discussion: """
            Log in once; the token is kept in $PARLEY_CONFIG_DIR, else $XDG_CONFIG_HOME/parley, \
            else ~/.config/parley (credentials.json, readable by you only).
            """,
        subcommands: [SignUp.self, LogIn.self, LogOut.self, Send.self, Follow.self, History.self, Chat.self, Group.self, Presence.self, Devices.self]
    )
}

struct ServerOption: ParsableArguments {
    @Option(help: "The server's HTTP API, e.g. http://127.0.0.1:8080.")
    var server: String = ProcessInfo.processInfo.environment["PARLEY_SERVER"] ?? "http://127.0.0.1:8080"
}

struct PasswordOption: ParsableArguments {
    @Option(help: "The password (default: $PARLEY_PASSWORD, else asked for).")
    var password: String?

    func resolve() throws -> String {
        if let password { return password }
        if let password = ProcessInfo.processInfo.environment["PARLEY_PASSWORD"] { return password }
        guard let typed = getpass("Password: ") else { throw ValidationError("no password given") }
        return String(cString: typed)
    }
}

extension Parley {
    struct SignUp: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "signup", abstract: "Create an account.")
        @Argument var username: String
        @Option(help: "The name others see.") var displayName: String?
        @OptionGroup var server: ServerOption
        @OptionGroup var password: PasswordOption

        func run() async throws {
            try await reportErrors {
                try await ParleyAPI(baseURL: server.server).signUp(username: username, password: try password.resolve(), displayName: displayName)
                say("Account \(username) created. Log in with: parley login \(username)")
            }
        }
    }

    struct LogIn: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "login", abstract: "Log in; this machine becomes one of your devices.")
        @Argument var username: String
        @Option(help: "A name for this device.") var device: String = ProcessInfo.processInfo.hostName
        @OptionGroup var server: ServerOption
        @OptionGroup var password: PasswordOption

        func run() async throws {
            try await reportErrors {
                let login = try await ParleyAPI(baseURL: server.server).logIn(username: username, password: try password.resolve(), deviceName: device)
                try CredentialStore().save(Credentials(server: server.server, login: login))
                say("Logged in as \(login.username) on device \(login.deviceID).")
            }
        }
    }

    struct LogOut: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "logout", abstract: "Log this device out and forget its token.")

        func run() async throws {
            try await reportErrors {
                let store = CredentialStore()
                let credentials = try store.load()
                try await ParleyAPI(baseURL: credentials.server).call("POST", "/v1/logout", token: credentials.token)
                try store.forget()
                say("Logged out.")
            }
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send one message to a user.")
        @Argument var username: String
        @Argument(help: "The text to send.") var text: String

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let conversation = try await session.chat.open(with: username)
                let ack = try await session.chat.send(conversation: conversation, body: text)
                say("sent #\(ack["seq"]?.int64Value ?? 0)")
                await session.chat.close()
            }
        }
    }

    struct Follow: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print messages you missed, then new ones as they arrive (Ctrl-C stops).")

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                try await session.catchUp(printing: true)
                // PARLEY_FOLLOW_SECONDS bounds the live part (scripts and tests).
                if let seconds = ProcessInfo.processInfo.environment["PARLEY_FOLLOW_SECONDS"].flatMap(Double.init) {
                    let live = Task { try await session.printLive(conversation: nil) }
                    try await Task.sleep(for: .seconds(seconds))
                    live.cancel()
                    await session.chat.close()
                } else {
                    try await session.printLive(conversation: nil)
                }
            }
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the latest messages with a user.")
        @Argument var username: String
        @Option(help: "How many messages.") var limit: Int = 20

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let conversation = try await session.chat.open(with: username)
                let page = try await session.chat.request("fetch") { writer in
                    writer.field("conversation", conversation)
                    writer.field("before", JSONValue.maxSafeInteger)
                    writer.field("limit", limit)
                }
                for message in page["messages"]?.arrayValue ?? [] { say(format(message)) }
                await session.chat.close()
            }
        }
    }

    struct Chat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Chat with a user: lines you type are sent, theirs are printed as they arrive.")
        @Argument var username: String

        func run() async throws {
            try await reportErrors {
                let session = try await ChatClientSession.connect()
                let conversation = try await session.chat.open(with: username)
                try await session.interactive(conversation: conversation, title: username)
            }
        }
    }

    struct Devices: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your devices, or revoke one with --revoke ID.")
        @Option(help: "A device id to log out remotely.") var revoke: String?

        func run() async throws {
            try await reportErrors {
                let credentials = try CredentialStore().load()
                let api = ParleyAPI(baseURL: credentials.server)
                if let revoke {
                    try await api.call("DELETE", "/v1/devices/\(revoke)", token: credentials.token)
                    say("Device \(revoke) revoked.")
                    return
                }
                let reply = try await api.call("GET", "/v1/devices", token: credentials.token)
                for device in reply["devices"]?.arrayValue ?? [] {
                    let current = device["current"]?.boolValue == true ? " (this device)" : ""
                    say("\(device["id"]?.stringValue ?? "")  \(device["name"]?.stringValue ?? "")\(current)")
                }
            }
        }
    }
}

/// Prints the server's error in words and exits non-zero.
func reportErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ParleyError {
        printError("error: \(error.message) (\(error.code))")
        throw ExitCode(1)
    } catch let error as CredentialError {
        printError("error: \(error.description)")
        throw ExitCode(1)
    }
}

/// Writes a line to standard output at once (pipes and files too), so a reader sees it as it happens.
func say(_ message: String) {
    FileHandle.standardOutput.write(Data((message + "\n").utf8))
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// "[12:34:56] alice: hello"
func format(_ message: JSONValue) -> String {
    let seconds = TimeInterval(message["ts"]?.int64Value ?? 0) / 1000
    let formatter = DateFormatter()
    formatter.dateFormat = "HH:mm:ss"
    let time = formatter.string(from: Date(timeIntervalSince1970: seconds))
    let sender = message["sender"]?.stringValue ?? "?"
    // Membership events carry JSON for programs; people get one line of words.
    if message["content_type"]?.stringValue == "application/vnd.parley.event+json",
        let event = try? JSONParser.parse(Array((message["body"]?.stringValue ?? "").utf8)) {
        let names = (event["members"]?.arrayValue ?? []).compactMap { $0["username"]?.stringValue }.joined(separator: ", ")
        return "[\(time)] * \(sender) \(event["event"]?.stringValue ?? "changed the group") \(names)".trimmingCharacters(in: .whitespaces)
    }
    return "[\(time)] \(sender): \(message["body"]?.stringValue ?? "")"
}
