// A real parleyd node on loopback with a fresh data folder, and helpers to create
// accounts and connect devices to it.
import Foundation
import Logging
import ParleyClient
import ParleyJSON
import ParleyServer
import Testing

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

final class TestServer: Sendable {
    let node: ParleyNode
    let dataFolder: URL
    let api: ParleyAPI

    static let logger: Logger = {
        var logger = Logger(label: "parley-server-tests") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        return logger
    }()

    /// Starts a node on ports chosen by the system. `settings` are extra --set entries.
    static func start(_ settings: [String] = [], dataFolder: URL? = nil) async throws -> TestServer {
        let folder = dataFolder ?? scratchFolder()
        let configuration = try ServerConfiguration(
            file: nil, environment: [:],
            overrides: ["data.folder=\(folder.path)", "http.port=0", "chat.port=0", "log.level=warning"] + settings)
        let node = try await ParleyNode.start(configuration, logger: logger)
        return TestServer(node: node, dataFolder: folder)
    }

    private init(node: ParleyNode, dataFolder: URL) {
        self.node = node
        self.dataFolder = dataFolder
        api = ParleyAPI(baseURL: "http://127.0.0.1:\(node.httpPort ?? 0)")
    }

    func stop() async {
        await node.shutdown()
    }

    /// Signs a user up and logs in one device per name.
    func user(_ username: String, devices: [String] = ["phone"]) async throws -> [LoginInfo] {
        try await api.signUp(username: username, password: "password of \(username)")
        var logins: [LoginInfo] = []
        for device in devices {
            logins.append(try await api.logIn(username: username, password: "password of \(username)", deviceName: device))
        }
        return logins
    }

    func connect(_ login: LoginInfo, headerAuth: Bool = false) async throws -> ChatSession {
        try await ChatSession.connect(url: node.chatURL, token: login.token, headerAuth: headerAuth)
    }
}

/// Everything a session receives, collected by one task so tests can wait for it.
actor Inbox {
    private(set) var messages: [JSONValue] = []
    private(set) var others: [ChatEvent] = []
    /// Every event in the order it arrived.
    private(set) var timeline: [ChatEvent] = []

    init(_ session: ChatSession) {
        Task { [weak self] in
            for await event in session.events {
                await self?.record(event)
            }
        }
    }

    private func record(_ event: ChatEvent) {
        timeline.append(event)
        if case .message(let message) = event {
            messages.append(message)
        } else {
            others.append(event)
        }
    }

    /// Waits until at least `count` messages arrived (or the time is up) and returns them all.
    func waitForMessages(_ count: Int, seconds: Double = 20) async -> [JSONValue] {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while messages.count < count && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return messages
    }

    /// Waits for a non-message event (an error frame or the close).
    func waitForOther(seconds: Double = 10) async -> ChatEvent? {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while others.isEmpty && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return others.isEmpty ? nil : others.removeFirst()
    }
}
