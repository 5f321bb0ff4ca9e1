// Pins this process (and every thread and child it starts later) to one CPU core.
import Glibc

/// Restricts the calling process to one core with sched_setaffinity.
enum CPUAffinity {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Call before any thread is started: threads inherit the mask at creation.
    static func pinCurrentProcess(toCore core: Int) throws {
        var set = cpu_set_t()
        let bits = MemoryLayout<cpu_set_t>.size * 8
        guard core >= 0, core < bits else { throw Failure(description: "no CPU core \(core)") }
        withUnsafeMutableBytes(of: &set) { bytes in
            bytes[core / 8] |= UInt8(1) << UInt8(core % 8)
        }
        // Glibc's module leaves out the GNU-only sched_setaffinity; look it up at run time.
        typealias SetAffinity = @convention(c) (pid_t, Int, UnsafePointer<cpu_set_t>) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sched_setaffinity") else {
            throw Failure(description: "sched_setaffinity is not available")
        }
        let setAffinity = unsafeBitCast(symbol, to: SetAffinity.self)
        guard setAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else {
            throw Failure(description: "cannot pin to CPU core \(core): errno \(errno)")
        }
    }
}
