// CPU time and memory of processes, read from /proc and getrusage.
import Foundation
import Glibc

/// CPU and memory readings of one process, by pid (the started parleyd) or of this process.
enum ProcessStats {
    /// User plus system CPU seconds of a process, from /proc/<pid>/stat (fields 14 and 15).
    static func cpuSeconds(pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = text.lastIndex(of: ")")
        else { return nil }
        // Fields after the command name, which may hold spaces: state is field 3.
        let fields = text[text.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Resident memory of a process in bytes, from VmRSS in /proc/<pid>/status.
    static func residentBytes(pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return nil }
        let kibibytes = line.split(separator: " ").compactMap { Int($0) }.first
        return kibibytes.map { $0 * 1024 }
    }

    /// User plus system CPU seconds used so far by this process and its finished children.
    static func ownCPUSeconds(includingChildren: Bool = false) -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        var total = seconds(usage.ru_utime) + seconds(usage.ru_stime)
        if includingChildren {
            getrusage(RUSAGE_CHILDREN.rawValue, &usage)
            total += seconds(usage.ru_utime) + seconds(usage.ru_stime)
        }
        return total
    }

    private static func seconds(_ time: timeval) -> Double {
        Double(time.tv_sec) + Double(time.tv_usec) / 1e6
    }
}
