// Paths, compilers and processes the plugin tests use.
import Foundation
import Logging
import PluginHost
import ParleyTestSupport
import Testing

enum TestSupport {
    /// The repository root.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = packageRoot.appendingPathComponent("Tests/PluginHostTests/Fixtures")
    static let liveInclude = packageRoot.appendingPathComponent("include").path

    /// The build folder holding the test binary, parleyd and the plugin products.
    static let buildFolder = PluginCatalog.executableFolder

    static func builtPlugin(_ name: String) throws -> String {
        let path = "\(buildFolder)/lib\(name).so"
        guard FileManager.default.fileExists(atPath: path) else {
            throw TestFailure("\(path) is missing: run `swift build` (or `make test`) before `swift test`")
        }
        return path
    }

    static var parleyd: String { "\(buildFolder)/parleyd" }

    static let logger: Logger = {
        var logger = Logger(label: "parley-tests") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        return logger
    }()

    /// A fresh folder in the test run's folder (removed when the tests exit).
    static func scratchFolder() throws -> URL {
        let folder = testRunFolder.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        return folder
    }

    /// Compiles C sources into a shared object with `cc`, as a plugin author would.
    static func compilePlugin(_ sources: [String], include: String, output: URL, libraries: [String] = []) throws {
        let arguments = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fvisibility=hidden", "-fPIC", "-shared", "-pthread", "-I", include] + sources + libraries + ["-o", output.path]
        let result = try run("/usr/bin/env", ["cc"] + arguments)
        guard result.status == 0 else { throw TestFailure("cc failed:\n\(result.output)") }
    }

    struct ProcessResult {
        var status: Int32
        var output: String
    }

    /// Runs a program to completion and returns its exit status and combined output.
    /// Output goes through a file: reading a pipe can fail with EINTR in Foundation.
    static func run(_ executable: String, _ arguments: [String]) throws -> ProcessResult {
        let log = try scratchFolder().appendingPathComponent("output.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        process.waitUntilExit()
        return ProcessResult(status: process.terminationStatus, output: try String(contentsOf: log, encoding: .utf8))
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
