// The plugin's descriptor and its one exported symbol.
import ParleyPluginABI
import Glibc

/// The entry point the host looks up with dlsym. The only public symbol.
@_cdecl("parley_plugin_entry")
public func parleyPluginEntry() -> UnsafeRawPointer {
    UnsafeRawPointer(descriptor)
}

private nonisolated(unsafe) let storageTable: UnsafePointer<parley_storage_vtable> = {
    var table = parley_storage_vtable()
    table.struct_size = UInt32(MemoryLayout<parley_storage_vtable>.stride)
    table.get = { instance, op, table, partition, sort in
        SQLiteStore.from(instance).get(op: op, table: table, partition: partition, sort: sort)
    }
    table.scan = { instance, op, request in
        SQLiteStore.from(instance).scan(op: op, request: request!)
    }
    table.apply = { instance, op, writes, count, writeSize in
        SQLiteStore.from(instance).apply(op: op, writes: UnsafeRawPointer(writes), count: count, writeSize: writeSize)
    }
    return UnsafePointer(leaking: table)
}()

private nonisolated(unsafe) let descriptor: UnsafePointer<parley_plugin_descriptor> = {
    var descriptor = parley_plugin_descriptor()
    descriptor.magic = PARLEY_PLUGIN_MAGIC
    descriptor.abi_major = UInt16(PARLEY_ABI_MAJOR)
    descriptor.abi_minor = UInt16(PARLEY_ABI_MINOR)
    descriptor.struct_size = UInt32(MemoryLayout<parley_plugin_descriptor>.stride)
    descriptor.kinds = UInt32(PARLEY_KIND_STORAGE)
    descriptor.name = UnsafePointer(strdup("storage-sqlite"))
    descriptor.version = UnsafePointer(strdup("1.0.0"))
    descriptor.description = UnsafePointer(strdup("SQLite storage in WAL mode with group commit (the default backend)"))
    descriptor.build_tag = parley_swift_build_tag()
    descriptor.create = { api, host, instanceOut, errorBuffer, errorSize in
        do throws(StoreError) {
            let store = try SQLiteStore(host: HostCalls(api: api!, host: host))
            instanceOut!.pointee = Unmanaged.passRetained(store).toOpaque()
            return parley_status(PARLEY_OK)
        } catch {
            copyCString(error.message, to: errorBuffer, size: errorSize)
            return error.status
        }
    }
    descriptor.destroy = { instance in
        guard let instance else { return }
        let store = Unmanaged<SQLiteStore>.fromOpaque(instance)
        store.takeUnretainedValue().close()
        store.release()
    }
    descriptor.storage = storageTable
    return UnsafePointer(leaking: descriptor)
}()

extension UnsafePointer {
    /// Copies value to memory that lives for the life of the process.
    init(leaking value: Pointee) {
        let pointer = UnsafeMutablePointer<Pointee>.allocate(capacity: 1)
        pointer.initialize(to: value)
        self.init(pointer)
    }
}
