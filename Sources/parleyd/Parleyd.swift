// parleyd: the Parley server and its operator tools.
import ArgumentParser
import PluginHost

@main
struct Parleyd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parleyd",
        abstract: "The Parley chat server and its operator tools.",
        version: parleyVersionString,
        subcommands: [Serve.self, PluginCommand.self]
    )
}

let parleyVersionString = "\(parleyVersion) (plugin ABI \(PluginLibrary.hostABI.major).\(PluginLibrary.hostABI.minor), \(PluginLibrary.hostBuildTag))"
