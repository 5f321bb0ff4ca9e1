// The CPUs this process may run on: how many (so a process pinned to one core runs one
// event loop, not one per core of the machine) and pinning to one, for the load generator.
import Glibc

/// The process's CPU affinity mask, through sched_getaffinity and sched_setaffinity. Glibc's
/// module leaves out these GNU-only calls, so they are looked up at run time.
public enum CPUAffinity {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    private typealias AffinityCall = @convention(c) (pid_t, Int, UnsafeMutablePointer<cpu_set_t>) -> Int32

    private static func call(_ name: String) -> AffinityCall? {
        dlsym(UnsafeMutableRawPointer(bitPattern: 0), name).map { unsafeBitCast($0, to: AffinityCall.self) }
    }

    /// How many CPUs the affinity mask allows, or nil when it cannot be read.
    public static func usableCPUs() -> Int? {
        guard let getAffinity = call("sched_getaffinity") else { return nil }
        var set = cpu_set_t()
        guard getAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else { return nil }
        let count = withUnsafeBytes(of: &set) { bytes in bytes.reduce(0) { $0 + $1.nonzeroBitCount } }
        return count > 0 ? count : nil
    }

    /// How many event loops a process should run on a machine of `machineCores`: one per CPU
    /// its affinity mask allows (a process pinned to one core runs one loop, not several
    /// taking turns on it), and never more than the machine has.
    public static func eventLoopCount(machineCores: Int) -> Int {
        min(usableCPUs() ?? machineCores, machineCores)
    }

    /// Restricts the calling process to one core. Call before starting threads: threads
    /// (and child processes) inherit the mask when they are created.
    public static func pinCurrentProcess(toCore core: Int) throws(Failure) {
        var set = cpu_set_t()
        let bits = MemoryLayout<cpu_set_t>.size * 8
        guard core >= 0, core < bits else { throw Failure(description: "no CPU core \(core)") }
        withUnsafeMutableBytes(of: &set) { bytes in
            bytes[core / 8] |= UInt8(1) << UInt8(core % 8)
        }
        guard let setAffinity = call("sched_setaffinity") else { throw Failure(description: "sched_setaffinity is not available") }
        guard setAffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else {
            throw Failure(description: "cannot pin to CPU core \(core): errno \(errno)")
        }
    }
}
