// Copies committed pages from the write-ahead log into the database file on its own
// thread and connection, so the group-commit writer does not stop for it.
//
// SQLite's default checkpoint runs inside the commit that pushes the log past 1,000 pages:
// that commit then also writes those pages again and syncs the database file, which held
// up every batch waiting behind it. Here the writer only notes the log's size after each
// commit (the WAL hook); past `pages` the checkpointer thread is woken for a passive
// checkpoint, which runs alongside new commits. Under a steady stream of commits a passive
// checkpoint may never find the log idle to restart it, so past `hardPages` the writer
// checkpoints itself, after reporting the commit's batches and before the next commit,
// which lets the next commit start the log over.
import ParleyPluginABI
import CSQLite

final class Checkpointer: @unchecked Sendable {
    let pages: Int32
    let hardPages: Int32
    private let connection: SQLiteConnection
    private let host: HostCalls
    private let checkpoints: OpaquePointer?
    private let writerCheckpoints: OpaquePointer?
    private var requested = false
    private var stopping = false
    private let thread = WakeableThread()

    init(path: String, synchronous: String, pages: Int32, host: HostCalls) throws(StoreError) {
        connection = try SQLiteConnection(path: path, readOnly: false)
        try connection.execute("PRAGMA synchronous=\(synchronous.uppercased())")
        try connection.execute("PRAGMA wal_autocheckpoint=0")
        self.pages = pages
        hardPages = pages * 8
        self.host = host
        checkpoints = host.metric(PARLEY_METRIC_COUNTER, "checkpoints_total", "Passive checkpoints run by the checkpointer thread")
        writerCheckpoints = host.metric(PARLEY_METRIC_COUNTER, "writer_checkpoints_total", "Checkpoints the writer ran itself because the log passed 8 × checkpoint_pages")
        thread.start { [self] in run() }
    }

    /// Installs the WAL hook on the writer's connection in place of SQLite's automatic checkpoints.
    func attach(to writer: SQLiteConnection) {
        sqlite3_wal_hook(writer.db, { context, db, _, frames in
            let checkpointer = Unmanaged<Checkpointer>.fromOpaque(context!).takeUnretainedValue()
            checkpointer.committed(db: db, frames: frames)
            return SQLITE_OK
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Set by the hook when the log passed `hardPages`; read by the writer after it has
    /// reported the commit's batches. Writer thread only.
    private var writerMustCheckpoint = false

    /// Called on the writer's thread after each commit with the log's size in pages.
    private func committed(db: OpaquePointer?, frames: Int32) {
        if frames >= hardPages {
            writerMustCheckpoint = true
        } else if frames >= pages {
            thread.locked {
                requested = true
                thread.wake()
            }
        }
    }

    /// Called by the writer after it has reported a commit's batches, so the acks do not wait
    /// for it: checkpoints on the writer's connection when the hook asked for it.
    func checkpointIfDue(_ writer: SQLiteConnection) {
        guard writerMustCheckpoint else { return }
        writerMustCheckpoint = false
        if sqlite3_wal_checkpoint_v2(writer.db, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil) == SQLITE_OK {
            host.add(writerCheckpoints, 1)
        }
    }

    /// Ends the thread after the checkpoint in progress, if any.
    func stop() {
        thread.locked {
            stopping = true
            thread.wake()
        }
        thread.join()
    }

    private func run() {
        while true {
            let stop = thread.locked {
                while !requested && !stopping { thread.wait() }
                requested = false
                return stopping
            }
            if stop { return }
            let result = sqlite3_wal_checkpoint_v2(connection.db, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
            if result == SQLITE_OK {
                host.add(checkpoints, 1)
            } else if result != SQLITE_BUSY {
                host.log(PARLEY_LOG_WARNING, "background checkpoint failed: \(connection.lastError)")
            }
        }
    }
}
