// A thread of the plugin's own that sleeps until another thread wakes it: the group-commit
// writer and the checkpointer. The plugin starts its threads itself, as the ABI lets it.
import Glibc

final class WakeableThread: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var thread = pthread_t()

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    /// Starts `body` on the thread, once; it holds what it captures until it returns.
    func start(_ body: @escaping () -> Void) {
        final class Body {
            let run: () -> Void
            init(_ run: @escaping () -> Void) { self.run = run }
        }
        pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(Body(body)).toOpaque())
    }

    /// Runs `body` holding the lock that guards the state shared with the thread.
    func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }

    /// Wakes the thread if it waits; call inside `locked`.
    func wake() {
        pthread_cond_signal(&condition)
    }

    /// Sleeps until woken, releasing the lock meanwhile; call inside `locked`, in a loop
    /// that checks what it waits for.
    func wait() {
        pthread_cond_wait(&condition, &mutex)
    }

    /// Waits for the thread's body to return.
    func join() {
        pthread_join(thread, nil)
    }
}
