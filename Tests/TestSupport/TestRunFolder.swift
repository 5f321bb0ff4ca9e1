// The one folder a test process keeps its files in, shared by every test target.
public import Foundation

/// This test process's folder under the system's temporary folder, made when first named and
/// removed when the process exits, so a test run leaves nothing behind.
public let testRunFolder: URL = {
    atexit { try? FileManager.default.removeItem(at: testRunFolderPath()) }
    try? FileManager.default.createDirectory(at: testRunFolderPath(), withIntermediateDirectories: true)
    return testRunFolderPath()
}()

private func testRunFolderPath() -> URL {
    FileManager.default.temporaryDirectory.appendingPathComponent("parley-tests-\(getpid())")
}
