// parleyd and parley as separate processes: start-up errors, SIGKILL durability,
// graceful shutdown, and two CLI clients chatting.
import Foundation
import ParleyClient
import ParleyJSON
import PluginHost
import ParleyTestSupport
import Testing

/// A parleyd process on loopback with its own data folder.
final class ParleydProcess: @unchecked Sendable {
    static var binaries: String { PluginCatalog.executableFolder }

    let process = Process()
    let dataFolder: URL
    let output: URL
    private(set) var httpPort = 0
    private(set) var chatURL = ""

    init(dataFolder: URL, settings: [String] = []) {
        self.dataFolder = dataFolder
        output = dataFolder.deletingLastPathComponent().appendingPathComponent("\(dataFolder.lastPathComponent)-\(UUID().uuidString).log")
        process.executableURL = URL(fileURLWithPath: "\(Self.binaries)/parleyd")
        process.arguments = ["serve", "--set", "data.folder=\(dataFolder.path)", "--set", "http.port=0", "--set", "chat.port=0", "--set", "log.level=warning"] + settings.flatMap { ["--set", $0] }
    }

    /// Starts the process and waits for its "running" line.
    func start() throws {
        _ = FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            let text = log
            if let line = text.split(separator: "\n").first(where: { $0.contains(" running: ") }) {
                let words = line.split(separator: " ")
                if let index = words.firstIndex(of: "port"), let port = Int(words[index + 1].trimmingCharacters(in: .punctuationCharacters)) { httpPort = port }
                if let url = words.first(where: { $0.hasPrefix("ws://") }) { chatURL = String(url.trimmingCharacters(in: CharacterSet(charactersIn: ";"))) }
                return
            }
            if !process.isRunning { throw TestFailure("parleyd exited: \(text)") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        // Not left running after the test: a server that never came up is killed.
        stopNow()
        throw TestFailure("parleyd did not start: \(log)")
    }

    /// Kills the process if it still runs: when a test ends early (a failed expectation, a
    /// thrown error), its server goes with it instead of outliving the test run.
    deinit { stopNow() }

    private func stopNow() {
        if process.isRunning { signal(SIGKILL) }
    }

    var log: String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }
    var api: ParleyAPI { ParleyAPI(baseURL: "http://127.0.0.1:\(httpPort)") }

    /// Signs up alice and bob, connects alice's phone and opens her conversation with bob.
    func aliceTalkingToBob() async throws -> (login: LoginInfo, session: ChatSession, conversation: String) {
        try await api.signUp(username: "alice", password: "alice password")
        try await api.signUp(username: "bob", password: "bob password")
        let login = try await api.logIn(username: "alice", password: "alice password", deviceName: "phone")
        let session = try await ChatSession.connect(url: chatURL, token: login.token)
        return (login, session, try await session.open(with: "bob"))
    }

    /// Sends the signal and waits for the process to exit; one still running after 30 s is a
    /// failure (and is killed), not a test run that hangs.
    func signal(_ number: Int32) {
        kill(process.processIdentifier, number)
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if process.isRunning {
            Issue.record("parleyd did not exit within 30 s of signal \(number)")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
    }
}

/// Runs a program to completion; output goes through a file (pipes can fail with EINTR).
func runProgram(_ path: String, _ arguments: [String], environment: [String: String] = [:], input: String? = nil) throws -> (status: Int32, output: String) {
    let folder = scratchFolder()
    try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    let log = folder.appendingPathComponent("output.log")
    _ = FileManager.default.createFile(atPath: log.path, contents: nil)
    let handle = try FileHandle(forWritingTo: log)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    process.standardOutput = handle
    process.standardError = handle
    if let input {
        let file = folder.appendingPathComponent("input.txt")
        try input.write(to: file, atomically: true, encoding: .utf8)
        process.standardInput = try FileHandle(forReadingFrom: file)
    }
    try process.run()
    process.waitUntilExit()
    try handle.close()
    return (process.terminationStatus, try String(contentsOf: log, encoding: .utf8))
}

/// A folder path, not yet made, in the test run's folder.
func scratchFolder() -> URL {
    testRunFolder.appendingPathComponent(UUID().uuidString)
}

@Suite("Processes", .serialized, .timeLimit(.minutes(3)))
struct ProcessTests {
    @Test func invalidSettingsAndBrokenStoragePluginsStopStartUpWithExit78() throws {
        let parleyd = "\(ParleydProcess.binaries)/parleyd"
        let data = scratchFolder().path
        let cases: [([String], String)] = [
            (["--set", "http.port=eighty"], "configuration key 'http.port'"),
            (["--set", "chat.color=blue"], "configuration key 'chat.color': unknown setting"),
            (["--set", "storage.plugin=storage-nothing"], "no plugin named 'storage-nothing'"),
            (["--set", "storage.plugin=storage-lmdb", "--set", "plugin.storage-lmdb.map_size_mb=lots"], "map_size_mb"),
            (["--set", "plugin.storage-sqlite.synchronous=sometimes"], "'synchronous'"),
        ]
        for (arguments, expected) in cases {
            let result = try runProgram(parleyd, ["serve", "--set", "data.folder=\(data)", "--set", "http.port=0", "--set", "chat.port=0"] + arguments)
            #expect(result.status == 78, "\(arguments): exit \(result.status)")
            #expect(result.output.contains(expected), "\(arguments): \(result.output)")
        }
    }

    @Test func acknowledgedMessagesSurviveSIGKILL() async throws {
        let data = scratchFolder()
        let server = ParleydProcess(dataFolder: data)
        try server.start()
        let (login, session, conversation) = try await server.aliceTalkingToBob()
        var acked: [Int64: String] = [:]
        try await withThrowingTaskGroup(of: (Int64, String).self) { group in
            for index in 0..<300 {
                group.addTask {
                    let body = "durable \(index)"
                    let ack = try await session.send(conversation: conversation, body: body)
                    return (ack["seq"]!.int64Value!, body)
                }
                if index >= 32, let (seq, body) = try await group.next() { acked[seq] = body }
            }
            for try await (seq, body) in group { acked[seq] = body }
        }
        server.signal(SIGKILL)
        #expect(acked.count == 300)

        let restarted = ParleydProcess(dataFolder: data)
        try restarted.start()
        let again = try await ChatSession.connect(url: restarted.chatURL, token: login.token)
        var stored: [Int64: String] = [:]
        var after: Int64 = 0
        while true {
            let page = try await again.fetch(conversation: conversation, after: after, limit: 1000)
            for message in page.messages {
                after = message["seq"]!.int64Value!
                stored[after] = message["body"]!.stringValue!
            }
            if !page.more { break }
        }
        for (seq, body) in acked { #expect(stored[seq] == body, "acknowledged message \(seq) survived") }
        let next = try await again.send(conversation: conversation, body: "after restart")
        #expect(next["seq"]?.int64Value == Int64(stored.count + 1), "the sequence continues without a gap")
        await again.close()
        restarted.signal(SIGTERM)
    }

    /// Pinned to one core (taskset here; a cpuset or systemd's CPUAffinity= alike), parleyd
    /// runs one event loop instead of one per CPU of the machine.
    @Test func aServerPinnedToOneCoreRunsOneEventLoop() throws {
        // The first CPU this process may use (CPU 0 may be outside a container's set).
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let allowed = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: ":").last
        let cpu = try #require(allowed.flatMap { Int($0.trimmingCharacters(in: .whitespaces).prefix { $0.isNumber }) })
        let server = ParleydProcess(dataFolder: scratchFolder(), settings: ["log.level=info"])
        server.process.arguments = ["-c", String(cpu), server.process.executableURL!.path] + server.process.arguments!
        server.process.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
        // NIO's own setting, when set, decides the count instead.
        server.process.environment = ProcessInfo.processInfo.environment.filter { $0.key != "NIO_SINGLETON_GROUP_LOOP_COUNT" }
        try server.start()
        defer { server.signal(SIGTERM) }
        #expect(server.log.contains("event loops: 1 (CPUs this process may use: 1 of "), "\(server.log)")
    }

    /// A PARLEY_* variable that sets nothing is reported at start (with the setting it was
    /// probably meant to be); the client's own variables are not.
    @Test func anUnknownEnvironmentVariableIsReportedAtStart() throws {
        let server = ParleydProcess(dataFolder: scratchFolder())
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PARLEY_") }
        environment["PARLEY_DATA_FOLDR"] = "/nowhere"
        environment["PARLEY_SERVER"] = "http://127.0.0.1:8080"
        environment["PARLEY_COLOUR"] = "blue"
        server.process.environment = environment
        try server.start()
        defer { server.signal(SIGTERM) }
        let log = server.log
        #expect(log.contains("environment variable PARLEY_DATA_FOLDR is not a parleyd setting and is ignored; did you mean PARLEY_DATA_FOLDER? [config.unknown_variable]"), "\(log)")
        #expect(log.contains("environment variable PARLEY_COLOUR is not a parleyd setting and is ignored [config.unknown_variable]"), "\(log)")
        #expect(!log.contains("PARLEY_SERVER"), "the parley client's variable is not reported")
    }

    /// A server that stops answering (here: stopped with SIGSTOP) ends a request's wait
    /// after the session's timeout with a `timeout` error; once it answers again, the same
    /// session goes on, and the send whose outcome was unknown is resent without a duplicate.
    @Test func aRequestWithoutAReplyTimesOutAndTheSessionGoesOn() async throws {
        let server = ParleydProcess(dataFolder: scratchFolder())
        try server.start()
        try await server.api.signUp(username: "alice", password: "alice password")
        try await server.api.signUp(username: "bob", password: "bob password")
        let login = try await server.api.logIn(username: "alice", password: "alice password", deviceName: "phone")
        let session = try await ChatSession.connect(url: server.chatURL, token: login.token, timeout: .seconds(1))
        let conversation = try await session.open(with: "bob")

        kill(server.process.processIdentifier, SIGSTOP)
        let started = ContinuousClock.now
        var outcome: ParleyError?
        do {
            _ = try await session.send(conversation: conversation, body: "while stopped", clientID: "stopped-1")
        } catch let error as ParleyError {
            outcome = error
        }
        let waited = ContinuousClock.now - started
        kill(server.process.processIdentifier, SIGCONT)
        #expect(outcome?.code == "timeout", "no reply within the timeout: \(String(describing: outcome))")
        #expect(waited >= .seconds(1) && waited < .seconds(10))

        let resent = try await session.send(conversation: conversation, body: "while stopped", clientID: "stopped-1")
        #expect(resent["seq"]?.int64Value == 1 && resent["duplicate"]?.boolValue == true, "the first send was stored once it was read: \(resent)")
        await session.close()
        server.signal(SIGTERM)
    }

    @Test func sigtermClosesConnectionsWithGoingAway() async throws {
        let server = ParleydProcess(dataFolder: scratchFolder())
        try server.start()
        try await server.api.signUp(username: "alice", password: "alice password")
        let login = try await server.api.logIn(username: "alice", password: "alice password", deviceName: "phone")
        let session = try await ChatSession.connect(url: server.chatURL, token: login.token)
        let inbox = Inbox(session)
        server.signal(SIGTERM)
        guard case .closed(let code, _) = await inbox.waitForOther() else { throw TestFailure("no close") }
        #expect(code == 1001)
        #expect(server.process.terminationStatus == 0)
    }

    @Test func twoParleyProcessesChatThroughParleyd() async throws {
        let server = ParleydProcess(dataFolder: scratchFolder())
        try server.start()
        let parley = "\(ParleydProcess.binaries)/parley"
        let aliceHome = scratchFolder().path, bobHome = scratchFolder().path
        let base = ["PARLEY_SERVER": "http://127.0.0.1:\(server.httpPort)"]
        let alice = base.merging(["PARLEY_CONFIG_DIR": aliceHome, "PARLEY_PASSWORD": "alice password"]) { $1 }
        let bob = base.merging(["PARLEY_CONFIG_DIR": bobHome, "PARLEY_PASSWORD": "bob password"]) { $1 }
        for (name, environment) in [("alice", alice), ("bob", bob)] {
            #expect(try runProgram(parley, ["signup", name], environment: environment).status == 0)
            let login = try runProgram(parley, ["login", name, "--device", "terminal"], environment: environment)
            #expect(login.status == 0 && login.output.contains("Logged in as \(name)"))
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: "\(aliceHome)/credentials.json")
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600, "credentials are readable by their owner only")

        // Bob follows live in one process while Alice chats from another.
        let followLog = scratchFolder().appendingPathExtension("log")
        _ = FileManager.default.createFile(atPath: followLog.path, contents: nil)
        let follower = Process()
        follower.executableURL = URL(fileURLWithPath: parley)
        follower.arguments = ["chat", "alice"]
        follower.environment = ProcessInfo.processInfo.environment.merging(bob) { $1 }
        let bobInput = Pipe()
        follower.standardInput = bobInput
        let followHandle = try FileHandle(forWritingTo: followLog)
        follower.standardOutput = followHandle
        follower.standardError = followHandle
        try follower.run()
        var ready = false
        for _ in 0..<200 where !ready {
            ready = ((try? String(contentsOf: followLog, encoding: .utf8)) ?? "").contains("Chatting with alice")
            if !ready { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(ready)
        let chat = try runProgram(parley, ["chat", "bob"], environment: alice, input: "hi bob\nhow are you?\n")
        #expect(chat.status == 0, "\(chat.output)")
        try bobInput.fileHandleForWriting.write(contentsOf: Data("fine, thanks\n".utf8))
        var bobSaw = ""
        for _ in 0..<200 {
            bobSaw = (try? String(contentsOf: followLog, encoding: .utf8)) ?? ""
            if bobSaw.contains("alice: how are you?") { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(bobSaw.contains("alice: hi bob") && bobSaw.contains("alice: how are you?"), "\(bobSaw)")
        try bobInput.fileHandleForWriting.close()
        follower.waitUntilExit()
        let history = try runProgram(parley, ["history", "bob"], environment: alice)
        #expect(history.output.contains("alice: hi bob") && history.output.contains("bob: fine, thanks"), "\(history.output)")
        let error = try runProgram(parley, ["send", "nobody", "hello"], environment: alice)
        #expect(error.status != 0 && error.output.contains("user nobody not found"), "server errors are shown in words")
        server.signal(SIGTERM)
    }

    @Test func parleyManagesGroupsAndShowsPresence() async throws {
        let server = ParleydProcess(dataFolder: scratchFolder(), settings: ["presence.grace_seconds=0"])
        try server.start()
        let parley = "\(ParleydProcess.binaries)/parley"
        var homes: [String: [String: String]] = [:]
        for name in ["alice", "bob", "carol"] {
            let environment = ["PARLEY_SERVER": "http://127.0.0.1:\(server.httpPort)", "PARLEY_CONFIG_DIR": scratchFolder().path, "PARLEY_PASSWORD": "\(name) password"]
            #expect(try runProgram(parley, ["signup", name], environment: environment).status == 0)
            #expect(try runProgram(parley, ["login", name], environment: environment).status == 0)
            homes[name] = environment
        }
        let alice = homes["alice"]!, bob = homes["bob"]!, carol = homes["carol"]!
        let created = try runProgram(parley, ["group", "create", "club", "--members", "bob"], environment: alice)
        #expect(created.status == 0 && created.output.contains("Created club: g:"), "\(created.output)")
        #expect(try runProgram(parley, ["group", "add", "club", "carol"], environment: alice).status == 0)
        let list = try runProgram(parley, ["group", "list"], environment: bob)
        #expect(list.output.contains("club  (3 members)"), "\(list.output)")
        #expect(try runProgram(parley, ["group", "send", "club", "hi all"], environment: alice).output.contains("sent #"))
        let follow = try runProgram(parley, ["follow"], environment: carol.merging(["PARLEY_FOLLOW_SECONDS": "1"]) { $1 })
        #expect(follow.output.contains("alice: hi all"), "\(follow.output)")
        let refused = try runProgram(parley, ["group", "remove", "club", "alice"], environment: bob)
        #expect(refused.status != 0 && refused.output.contains("(forbidden)"), "\(refused.output)")
        #expect(try runProgram(parley, ["group", "leave", "club"], environment: carol).status == 0)
        let info = try runProgram(parley, ["group", "info", "club"], environment: alice)
        #expect(info.output.contains("alice  owner") && info.output.contains("bob  member") && !info.output.contains("carol"), "\(info.output)")
        let presence = try runProgram(parley, ["presence", "bob", "nobody"], environment: alice)
        #expect(presence.output.contains("bob: offline, last seen") && presence.output.contains("nobody: unknown"), "\(presence.output)")
        server.signal(SIGTERM)
    }
}
