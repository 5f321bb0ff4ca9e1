/// Which scenario's accounts: each scenario has its own, so the state one leaves behind
/// (conversations, groups, contacts) never weighs on another's figures — a device with a
/// thousand conversations makes every `sync` of a reconnect far dearer, for example.
enum AccountPool: String, CaseIterable, Sendable {
    case direct
    case group
    case sync
    case connections
    case presence

    /// Usernames like `bench-sync-000001`.
    func username(_ index: Int) -> String {
        let digits = String(index)
        return "bench-\(rawValue)-" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }
}
