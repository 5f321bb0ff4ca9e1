// parleyd: the Parley server and its operator tools.
import ArgumentParser
import PluginHost

@main
struct Parleyd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parleyd",
        abstract: "The Parley chat server and its operator tools.",
        version: parleyVersion,
        subcommands: [PluginCommand.self]
    )
}
