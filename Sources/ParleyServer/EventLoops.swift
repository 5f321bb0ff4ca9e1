// The event loops of the chat and HTTP listeners: one per CPU the process may run on.
import CPUAffinity
import NIOCore
import NIOPosix

enum EventLoops {
    /// NIO's singleton group counts the machine's CPUs (and cgroup quotas), not the process's
    /// CPU affinity: a `parleyd` pinned to one core (taskset, a cpuset, systemd's
    /// `CPUAffinity=`) ran two loops taking turns on that core, and spent a fifth more CPU per
    /// message on their hand-offs (docs/BENCHMARKS.md, fifth series). NIO's own
    /// `NIO_SINGLETON_GROUP_LOOP_COUNT`, when set, still decides.
    static let group: MultiThreadedEventLoopGroup = {
        let loops = CPUAffinity.eventLoopCount(machineCores: System.coreCount)
        guard getenv("NIO_SINGLETON_GROUP_LOOP_COUNT") == nil, loops < System.coreCount else { return .singleton }
        return MultiThreadedEventLoopGroup(numberOfThreads: loops)
    }()

    /// For the start-up log: the loops, and the CPUs they were counted from.
    static var summary: String {
        "\(Array(group.makeIterator()).count) (CPUs this process may use: \(usableCPUs.map(String.init) ?? "unknown") of \(System.coreCount))"
    }

    /// How many CPUs the process's affinity mask allows (nil when it cannot be read), read once.
    private static let usableCPUs: Int? = CPUAffinity.usableCPUs()
}
