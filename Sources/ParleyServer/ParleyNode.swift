// One parleyd node: storage and plugins, the HTTP API and the chat listener, started
// together from a configuration and stopped in order.
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ParleyCore
import PluginHost
import ServiceLifecycle

public final class ParleyNode: Sendable {
    public let runtime: ServerRuntime
    public let chat: ChatService
    public let metrics: ServerMetrics
    /// The bound ports (useful when the configuration asked for port 0).
    public let httpPort: Int?
    public let chatPort: Int?
    public let chatURL: String
    private let hashing: PluginWorkerPool
    private let chatListener: ChatListener?
    private let httpTask: Task<Void, any Error>?
    private let httpGroup: ServiceGroup?
    private let logger: Logger

    private init(runtime: ServerRuntime, chat: ChatService, metrics: ServerMetrics, hashing: PluginWorkerPool, chatListener: ChatListener?, httpTask: Task<Void, any Error>?, httpGroup: ServiceGroup?, httpPort: Int?, chatURL: String, logger: Logger) {
        self.runtime = runtime
        self.chat = chat
        self.metrics = metrics
        self.hashing = hashing
        self.chatListener = chatListener
        self.httpTask = httpTask
        self.httpGroup = httpGroup
        self.httpPort = httpPort
        self.chatPort = chatListener?.port
        self.chatURL = chatURL
        self.logger = logger
    }

    /// Starts everything the configuration asks for. Failures are `StartupError`s
    /// naming the setting or plugin at fault.
    public static func start(_ configuration: ServerConfiguration, metrics: ServerMetrics = ServerMetrics(), logger: Logger) async throws(StartupError) -> ParleyNode {
        let runtime = try ServerRuntime.start(configuration, logger: logger)
        let hashing = PluginWorkerPool(threads: 2, capacity: 1024, name: "parley-hash")
        var limits = MessageLog.Limits()
        limits.maxBodyBytes = (try? configuration.integer(.maxBodyBytes, in: 1...1_048_576)) ?? limits.maxBodyBytes
        let accounts = AccountService(storage: runtime.storage, hashing: hashing)
        let messages = MessageLog(storage: runtime.storage, limits: limits)
        let groups = GroupService(storage: runtime.storage, messages: messages, accounts: accounts, maxMembers: (try? configuration.integer(.maxGroupMembers, in: 2...100)) ?? 100)
        let chat = ChatService(
            accounts: accounts, messages: messages, toDevice: ToDeviceQueue(storage: runtime.storage), groups: groups,
            receipts: ReceiptStore(storage: runtime.storage), storage: runtime.storage,
            presenceGrace: .seconds((try? configuration.integer(.presenceGrace, in: 0...300)) ?? 5), metrics: metrics, logger: logger)
        let tls: NIOSSLContext?
        do {
            tls = try Self.tlsContext(configuration)
        } catch {
            await runtime.shutdown()
            throw error
        }
        let group = EventLoops.group
        logger.info("event loops: \(EventLoops.summary)")
        var chatListener: ChatListener?
        let scheme = tls == nil ? "ws" : "wss"
        do {
            if configuration.runsChat {
                var settings = ChatListenerSettings()
                settings.maxFrameBytes = try configuration.integer(.maxFrameBytes, in: 1024...16_777_216)
                settings.pingInterval = .seconds(Int64(try configuration.integer(.pingInterval, in: 1...3600)))
                settings.idleTimeout = .seconds(Int64(try configuration.integer(.idleTimeout, in: 2...7200)))
                settings.framesPerSecond = Double(try configuration.integer(.rateLimit, in: 1...100_000))
                settings.burstFrames = settings.framesPerSecond * 2
                settings.maxUnwritableWrites = try configuration.integer(.outboxFrames, in: 1...1_000_000)
                do {
                    chatListener = try await ChatListener.start(
                        host: configuration[.chatHost], port: try configuration.integer(.chatPort, in: 0...65_535), service: chat, settings: settings, tls: tls, group: group)
                } catch {
                    throw StartupError("configuration key 'chat.port': cannot listen on \(configuration[.chatHost]):\(configuration[.chatPort]): \(error)")
                }
            }
        } catch let error as StartupError {
            await runtime.shutdown()
            throw error
        } catch {
            await runtime.shutdown()
            throw StartupError("\(error)")
        }
        let publicURL = configuration[.chatPublicURL]
        let chatURL = !publicURL.isEmpty ? publicURL : "\(scheme)://\(configuration[.chatHost]):\(chatListener?.port ?? Int(configuration[.chatPort]) ?? 8081)\(ChatListener.path)"

        var httpTask: Task<Void, any Error>?
        var httpGroup: ServiceGroup?
        var httpPort: Int?
        if configuration.runsHTTP {
            let api = HTTPAPI(accounts: accounts, metrics: metrics, chatURL: { chatURL })
            let (stream, continuation) = AsyncStream<Int>.makeStream()
            let address = BindAddress.hostname(configuration[.httpHost], port: Int(configuration[.httpPort]) ?? 8080)
            var server = HTTPServerBuilder.http1()
            if tls != nil {
                do throws(StartupError) {
                    let tlsConfiguration = try Self.tlsConfiguration(configuration)
                    do {
                        server = try .tls(.http1(), tlsConfiguration: tlsConfiguration)
                    } catch {
                        throw StartupError("configuration keys 'tls.certificate' and 'tls.key': \(error)")
                    }
                } catch {
                    await chatListener?.close()
                    await runtime.shutdown()
                    throw error
                }
            }
            let app = Application(
                router: api.router(), server: server,
                configuration: ApplicationConfiguration(address: address, serverName: "parley"),
                onServerRunning: { channel in
                    continuation.yield(channel.localAddress?.port ?? 0)
                    continuation.finish()
                },
                eventLoopGroupProvider: .shared(group), logger: logger)
            // A service group of its own, so shutdown is graceful rather than a cancellation.
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: [app], logger: logger))
            httpGroup = group
            let task = Task {
                do {
                    try await group.run()
                } catch {
                    continuation.finish()
                    throw error
                }
            }
            var iterator = stream.makeAsyncIterator()
            guard let port = await iterator.next() else {
                let failure = await task.result
                await chatListener?.close()
                await runtime.shutdown()
                throw StartupError("configuration key 'http.port': cannot listen on \(configuration[.httpHost]):\(configuration[.httpPort]): \(failure)")
            }
            httpTask = task
            httpPort = port
        }
        let node = ParleyNode(runtime: runtime, chat: chat, metrics: metrics, hashing: hashing, chatListener: chatListener, httpTask: httpTask, httpGroup: httpGroup, httpPort: httpPort, chatURL: chatURL, logger: logger)
        if let httpPort { logger.info("HTTP API listening on \(tls == nil ? "http" : "https")://\(configuration[.httpHost]):\(httpPort)") }
        if chatListener != nil { logger.info("chat listener on \(chatURL)") }
        return node
    }

    private static func tlsConfiguration(_ configuration: ServerConfiguration) throws(StartupError) -> TLSConfiguration {
        let certificatePath = configuration[.tlsCertificate], keyPath = configuration[.tlsKey]
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(certificatePath)
        } catch {
            throw StartupError("configuration key 'tls.certificate': cannot read a PEM certificate from \(certificatePath): \(error)")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw StartupError("configuration key 'tls.key': cannot read a PEM private key from \(keyPath): \(error)")
        }
        return TLSConfiguration.makeServerConfiguration(certificateChain: certificates.map { .certificate($0) }, privateKey: .privateKey(key))
    }

    private static func tlsContext(_ configuration: ServerConfiguration) throws(StartupError) -> NIOSSLContext? {
        guard !configuration[.tlsCertificate].isEmpty else { return nil }
        let tlsConfiguration = try tlsConfiguration(configuration)
        do {
            return try NIOSSLContext(configuration: tlsConfiguration)
        } catch {
            throw StartupError("configuration keys 'tls.certificate' and 'tls.key' do not make a usable TLS context: \(error)")
        }
    }

    /// Stops accepting, closes every chat connection with "going away", stops the
    /// HTTP API, then drains and closes storage.
    public func shutdown() async {
        await chatListener?.close()
        chat.closeAll()
        await httpGroup?.triggerGracefulShutdown()
        _ = await httpTask?.result
        try? await Task.sleep(for: .milliseconds(100))
        await chat.recordPresenceAtShutdown()
        await runtime.shutdown()
        hashing.shutdown()
        logger.info("stopped")
    }
}
