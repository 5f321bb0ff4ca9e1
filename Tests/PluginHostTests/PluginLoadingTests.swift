// Every cause for refusing a plugin file, proven with deliberately broken plugins.
import Foundation
import Logging
import PluginHost
import Testing

@Suite("Plugin loading", .timeLimit(.minutes(3)))
struct PluginLoadingTests {
    /// Compiles Fixtures/broken/NAME.c against the live header and tries to load it.
    private func loadBroken(_ name: String) throws -> Result<PluginLibrary, PluginLoadError> {
        let folder = try TestSupport.scratchFolder()
        let output = folder.appendingPathComponent("\(name).so")
        try TestSupport.compilePlugin([TestSupport.fixtures.appendingPathComponent("broken/\(name).c").path], include: TestSupport.liveInclude, output: output)
        do {
            return .success(try PluginLibrary.load(path: output.path))
        } catch {
            return .failure(error)
        }
    }

    private func refusal(_ name: String) throws -> PluginLoadError {
        switch try loadBroken(name) {
        case .success: throw TestFailure("\(name) loaded but should have been refused")
        case .failure(let error): return error
        }
    }

    @Test func missingFileIsRefusedByName() {
        #expect(throws: PluginLoadError.fileMissing(path: "/nonexistent/plugin.so")) {
            try PluginLibrary.load(path: "/nonexistent/plugin.so")
        }
    }

    @Test func textFileIsNotASharedObject() throws {
        let file = try TestSupport.scratchFolder().appendingPathComponent("notes.so")
        try "just text\n".write(to: file, atomically: true, encoding: .utf8)
        let error = #expect(throws: PluginLoadError.self) { try PluginLibrary.load(path: file.path) }
        #expect(error?.code == "plugin.not_shared_object")
        #expect(error?.description.contains("ELF") == true)
    }

    @Test func libraryWithoutEntrySymbolIsRefused() throws {
        let error = try refusal("no_entry")
        #expect(error.code == "plugin.missing_entry_symbol")
        #expect(error.description.contains("parley_plugin_entry"))
    }

    @Test func entryReturningNullIsRefused() throws {
        #expect(try refusal("null_entry").code == "plugin.null_descriptor")
    }

    @Test func badMagicIsRefusedWithBothValues() throws {
        let error = try refusal("bad_magic")
        #expect(error.code == "plugin.bad_magic")
        #expect(error.description.contains("0xDEADBEEF"))
        #expect(error.description.contains("0x594C5250"))
    }

    @Test func abiMajorTwoIsRefusedNamingBothVersions() throws {
        let error = try refusal("major_two")
        guard case .abiMajorMismatch(_, let plugin, let host) = error else {
            Issue.record("expected an ABI major mismatch, got \(error)")
            return
        }
        #expect(plugin == 2 && host == 1)
        #expect(error.description.contains("major version 2") && error.description.contains("major version 1"))
    }

    @Test func newerMinorIsRefusedNamingBothVersions() throws {
        let error = try refusal("minor_too_new")
        guard case .abiMinorTooNew(_, let plugin, let host) = error else {
            Issue.record("expected an ABI minor refusal, got \(error)")
            return
        }
        #expect(plugin == 999 && host == PluginLibrary.hostABI.minor)
        #expect(error.description.contains("minor version 999") && error.description.contains("provides \(host)"))
    }

    @Test func declaredKindWithoutTableIsRefused() throws {
        let error = try refusal("missing_table")
        #expect(error.code == "plugin.missing_table")
        #expect(error.description.contains("storage"))
    }

    @Test func swiftPluginFromAnotherToolchainIsRefused() throws {
        let error = try refusal("build_tag_mismatch")
        #expect(error.code == "plugin.build_tag_mismatch")
        #expect(error.description.contains("swift-0.0.0-other-toolchain"))
        #expect(error.description.contains(PluginLibrary.hostBuildTag))
    }

    @Test func failingCreateReportsThePluginsMessage() throws {
        let library = try loadBroken("create_fails").get()
        let pool = PluginWorkerPool(threads: 1, capacity: 4)
        defer { pool.shutdown() }
        let error = #expect(throws: PluginLoadError.self) {
            try PluginInstance(library: library, configuration: [:], pool: pool, logger: TestSupport.logger)
        }
        #expect(error?.code == "plugin.create_failed")
        #expect(error?.description.contains("cannot open /nonexistent/db: permission denied") == true)
    }

    @Test func catalogSkipsBrokenFilesAndKeepsGoodOnes() throws {
        let folder = try TestSupport.scratchFolder()
        try TestSupport.compilePlugin([TestSupport.fixtures.appendingPathComponent("broken/bad_magic.c").path], include: TestSupport.liveInclude, output: folder.appendingPathComponent("bad.so"))
        try FileManager.default.copyItem(atPath: try TestSupport.builtPlugin("parley-storage-sqlite"), toPath: folder.appendingPathComponent("libparley-storage-sqlite.so").path)
        try "not a plugin".write(to: folder.appendingPathComponent("README.txt"), atomically: true, encoding: .utf8)
        let catalog = PluginCatalog(folders: [folder.path, TestSupport.buildFolder], logger: TestSupport.logger)
        let sqlite = try catalog.library(named: "storage-sqlite").get()
        #expect(sqlite.info.path == folder.appendingPathComponent("libparley-storage-sqlite.so").path, "the operator's folder comes first")
        #expect(catalog.refused.contains { $0.error.code == "plugin.bad_magic" })
        #expect(catalog.refused.contains { $0.error.code == "plugin.duplicate_name" })
        guard case .failure(let missing) = catalog.library(named: "storage-nothing") else {
            Issue.record("an unknown plugin name resolved")
            return
        }
        #expect(missing.description.contains("plugin.bad_magic"), "the error lists the refused files")
    }

    @Test func inspectPrintsFactsOfEveryBuiltPlugin() throws {
        for (plugin, name, tag) in [("parley-storage-sqlite", "storage-sqlite", PluginLibrary.hostBuildTag), ("parley-storage-lmdb", "storage-lmdb", "none"), ("parley-storage-log", "storage-log", "none")] {
            let result = try TestSupport.run(TestSupport.parleyd, ["plugin", "inspect", try TestSupport.builtPlugin(plugin)])
            #expect(result.status == 0, "\(result.output)")
            #expect(result.output.contains("name:        \(name)"))
            #expect(result.output.contains("kinds:       storage"))
            #expect(result.output.contains("abi:         1.0"))
            #expect(result.output.contains("build tag:   \(tag)"))
        }
    }

    @Test func inspectExitsNonZeroWithTheCause() throws {
        let folder = try TestSupport.scratchFolder()
        let text = folder.appendingPathComponent("text.so")
        try "hello".write(to: text, atomically: true, encoding: .utf8)
        let noEntry = folder.appendingPathComponent("no_entry.so")
        try TestSupport.compilePlugin([TestSupport.fixtures.appendingPathComponent("broken/no_entry.c").path], include: TestSupport.liveInclude, output: noEntry)
        let majorTwo = folder.appendingPathComponent("major_two.so")
        try TestSupport.compilePlugin([TestSupport.fixtures.appendingPathComponent("broken/major_two.c").path], include: TestSupport.liveInclude, output: majorTwo)
        for (file, code) in [(text, "plugin.not_shared_object"), (noEntry, "plugin.missing_entry_symbol"), (majorTwo, "plugin.abi_major_mismatch")] {
            let result = try TestSupport.run(TestSupport.parleyd, ["plugin", "inspect", file.path])
            #expect(result.status != 0, "inspect of \(file.lastPathComponent) succeeded")
            #expect(result.output.contains(code), "\(result.output)")
        }
    }
}

