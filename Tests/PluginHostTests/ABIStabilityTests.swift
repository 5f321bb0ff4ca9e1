// The v1.0 header is frozen under Fixtures/abi-v1.0; a plugin built against it
// must keep loading and working as the live header grows.
import Foundation
import PluginHost
import Testing

@Suite("ABI stability", .timeLimit(.minutes(3)))
struct ABIStabilityTests {
    static let frozenInclude = TestSupport.fixtures.appendingPathComponent("abi-v1.0").path

    @Test func pluginBuiltAgainstFrozenV1_0HeaderLoadsAndPassesConformance() async throws {
        let output = try TestSupport.scratchFolder().appendingPathComponent("memory.so")
        try TestSupport.compilePlugin(["\(Self.frozenInclude)/memory_storage.c"], include: Self.frozenInclude, output: output)
        let info = try PluginLibrary.load(path: output.path).info
        #expect(info.abiMajor == 1 && info.abiMinor == 0)
        #expect(info.name == "storage-memory-v1-0")
        // An in-memory backend cannot survive a restart; everything else must hold.
        let failures = try await conformanceFailures(of: output.path, checkRestart: false, configuration: ["greeting": "hello from the frozen ABI"])
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    @Test func liveHeaderCompilesAsStrictC11AndCpp17() throws {
        let folder = try TestSupport.scratchFolder()
        let source = folder.appendingPathComponent("header_only.c")
        try "#include <parley/plugin.h>\nint parley_header_compiles(void) { return PARLEY_ABI_MAJOR; }\n".write(to: source, atomically: true, encoding: .utf8)
        for (compiler, flags) in [("cc", ["-std=c11", "-x", "c"]), ("c++", ["-std=c++17", "-x", "c++"])] {
            let result = try TestSupport.run("/usr/bin/env", [compiler] + flags + ["-Wall", "-Wextra", "-Werror", "-pedantic", "-I", TestSupport.liveInclude, "-c", source.path, "-o", folder.appendingPathComponent("out.o").path])
            #expect(result.status == 0, "\(compiler): \(result.output)")
        }
    }

    @Test func liveHeaderKeepsEveryV1_0LayoutUnchanged() throws {
        // Prints the offset of every field of every v1.0 struct, compiled once against the
        // frozen header and once against the live one: appending may grow sizes, never move fields.
        let folder = try TestSupport.scratchFolder()
        let frozenHeader = try String(contentsOfFile: "\(Self.frozenInclude)/parley/plugin.h", encoding: .utf8)
        let program = folder.appendingPathComponent("layout.c")
        try layoutProgram(frozenHeader).write(to: program, atomically: true, encoding: .utf8)
        var outputs: [String] = []
        for include in [Self.frozenInclude, TestSupport.liveInclude] {
            let binary = folder.appendingPathComponent("layout-\(outputs.count)")
            let build = try TestSupport.run("/usr/bin/env", ["cc", "-std=c11", "-I", include, program.path, "-o", binary.path])
            #expect(build.status == 0, "\(build.output)")
            outputs.append(try TestSupport.run(binary.path, []).output)
        }
        #expect(outputs[0].split(separator: "\n").count > 40, "the layout program printed too little")
        let live = Set(outputs[1].split(separator: "\n"))
        let changed = outputs[0].split(separator: "\n").filter { ($0.hasPrefix("offset") || $0.hasPrefix("value")) && !live.contains($0) }
        #expect(changed.isEmpty, "v1.0 layout changed in the live header: \(changed.joined(separator: "; "))")
    }

    /// A C program printing offsetof for every field and the value of every constant
    /// declared in the frozen header, found by scanning its text.
    private func layoutProgram(_ header: String) -> String {
        var lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <parley/plugin.h>", "int main(void) {"]
        var currentStruct: String?
        for raw in header.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("typedef struct parley_"), line.hasSuffix("{") {
                currentStruct = String(line.dropFirst("typedef struct ".count).dropLast(2))
            } else if line.hasPrefix("}"), currentStruct != nil {
                lines.append("printf(\"size %s >= %zu\\n\", \"\(currentStruct!)\", sizeof(\(currentStruct!)));")
                currentStruct = nil
            } else if let name = currentStruct, line.hasSuffix(";"), !line.hasPrefix("/*"), !line.hasPrefix("*") {
                let declaration = line.dropLast()
                let field: Substring
                if let open = declaration.range(of: "(*") {
                    field = declaration[open.upperBound...].prefix { $0 != ")" }
                } else {
                    field = declaration.split(separator: " ").last!.drop { $0 == "*" }
                }
                lines.append("printf(\"offset %s.%s %zu\\n\", \"\(name)\", \"\(field)\", offsetof(\(name), \(field)));")
            } else if line.hasPrefix("PARLEY_"), let equals = line.firstIndex(of: "=") {
                let constant = line[..<equals].trimmingCharacters(in: .whitespaces)
                lines.append("printf(\"value %s %lld\\n\", \"\(constant)\", (long long)\(constant));")
            } else if line.hasPrefix("#define PARLEY_"), !line.contains("("), line.split(separator: " ").count >= 3 {
                let constant = line.split(separator: " ")[1]
                if !line.contains("\"") && !line.hasSuffix("\\") && constant != "PARLEY_EXPORT" && constant != "PARLEY_EXTERN_C" {
                    lines.append("printf(\"value %s %lld\\n\", \"\(constant)\", (long long)(\(constant)));")
                }
            }
        }
        lines.append("return 0; }")
        return lines.joined(separator: "\n")
    }
}
