/*
 * parley/plugin.h — the Parley plugin ABI, version 1.
 *
 * This is the only file a plugin author needs. A plugin is a shared object
 * (.so) that exports one function, parley_plugin_entry, returning a
 * descriptor. The host (parleyd) loads it with dlopen(RTLD_NOW | RTLD_LOCAL),
 * checks the descriptor, creates an instance, and from then on calls the
 * plugin only through the function tables declared here. The plugin calls the
 * host only through the parley_host_api table it receives in create(); the
 * parleyd executable exports no symbols to link against.
 *
 * Stability rules (what lets a plugin built today load into every future
 * host with the same major version):
 *   - Structs only grow at the end. Every struct that crosses the boundary
 *     starts with uint32_t struct_size, set by whoever fills the struct to
 *     sizeof(the struct) in its own header (tail padding included). A field
 *     added in a later minor starts at or after the previous sizeof (explicit
 *     padding is added first if needed), so PARLEY_HAS_FIELD below is exact.
 *     Read a field only when struct_size says it is present.
 *   - Arrays of structs are passed with their element size (the sender's
 *     sizeof), so an array built against a newer header can still be walked
 *     by older code.
 *   - The host never sends a flag, kind or enum value that is newer than the
 *     plugin's abi_minor. A plugin that meets one anyway returns
 *     PARLEY_E_UNSUPPORTED.
 *   - Function pointers added in a later minor version may be NULL in
 *     tables from older peers; check before calling.
 *   - A plugin's abi_minor must be <= the host's. The major must be equal.
 *   - The first three fields of parley_plugin_descriptor (magic, abi_major,
 *     abi_minor) never move, in any major version.
 *
 * Ownership:
 *   - Every pointer passed into a call is borrowed: valid only until that call
 *     returns. Copy what you keep. For a call that returns PARLEY_PENDING, the
 *     host keeps the borrowed inputs alive until complete() is called for it.
 *   - Results flow out through the host's emit_* functions, which copy the
 *     bytes they are given. The plugin keeps ownership of what it passes.
 *   - Memory that one side allocates, the same side frees. A plugin that wants
 *     the host's allocator uses api->alloc / api->free.
 *   - Error text goes into a host-owned buffer: api->set_error for an
 *     operation, the error/error_size buffer for create().
 *
 * Threading:
 *   - create() and destroy() are called once each (possibly on different host
 *     threads), never concurrently with any other call on the same instance.
 *   - Every other table function may be called concurrently, from several
 *     host worker threads at once, never from a network event loop. A call
 *     may block (disk, network); it only occupies a worker thread.
 *   - A call either finishes synchronously (returns any status other than
 *     PARLEY_PENDING, and must NOT call complete()), or returns PARLEY_PENDING
 *     and later calls api->complete() exactly once, from any thread. For one
 *     operation, the emit_* and set_error calls must happen before complete()
 *     and must not be made concurrently with each other.
 *   - Every host_api function is thread-safe. None of them calls back into
 *     the plugin, so a plugin may hold its own locks while calling them.
 *   - destroy() is never called from inside a host function (complete()
 *     included), so it may join the plugin's own threads.
 *
 * Compiles as C11 (-std=c11 -Wall -Wextra -pedantic) and as C++ (-std=c++17).
 */
#ifndef PARLEY_PLUGIN_H
#define PARLEY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Versions and identity                                                     */
/* ------------------------------------------------------------------------ */

/** "PRLY" read as a little-endian uint32: the first field of every descriptor. */
#define PARLEY_PLUGIN_MAGIC 0x594C5250u

/** Incompatible changes bump the major; host and plugin majors must match. */
#define PARLEY_ABI_MAJOR 1
/** Compatible additions bump the minor; a plugin's minor must be <= the host's. */
#define PARLEY_ABI_MINOR 0

/** The name of the one symbol every plugin exports. */
#define PARLEY_PLUGIN_ENTRY_SYMBOL "parley_plugin_entry"

/** Marks the entry point for export; build everything else hidden
 *  (-fvisibility=hidden, or `static`). */
#if defined(_WIN32)
#define PARLEY_EXPORT __declspec(dllexport)
#else
#define PARLEY_EXPORT __attribute__((visibility("default")))
#endif

/** True when a struct of the given struct_size contains FIELD. Use it to read
 *  fields added in later minor versions: PARLEY_HAS_FIELD(req, parley_scan_request, limit). */
#define PARLEY_HAS_FIELD(ptr, type, field) \
    ((ptr)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* ------------------------------------------------------------------------ */
/* Common types                                                              */
/* ------------------------------------------------------------------------ */

/** Status of a call. Zero is success, one is "pending", negatives are errors. */
typedef int32_t parley_status;

enum {
    PARLEY_OK = 0,
    /** The call continues in the background; complete() will follow exactly once. */
    PARLEY_PENDING = 1,
    /** An argument is malformed or out of range (set_error says which). */
    PARLEY_E_INVALID = -1,
    /** A condition of an atomic batch failed (put-if-absent found a row,
     *  compare-and-set found another value); nothing of the batch was applied. */
    PARLEY_E_CONFLICT = -2,
    /** The backend failed to read or write (disk, network, remote service). */
    PARLEY_E_IO = -3,
    /** The operation or kind is not supported by this plugin. */
    PARLEY_E_UNSUPPORTED = -4,
    /** Temporarily unable; the caller may retry later. */
    PARLEY_E_BUSY = -5,
    /** Out of memory. */
    PARLEY_E_NOMEM = -6,
    /** Stored data is damaged or has a format this plugin does not know. */
    PARLEY_E_CORRUPT = -7,
    /** A key, value, or batch exceeds the plugin's limits. */
    PARLEY_E_TOO_LARGE = -8,
    /** The thing addressed does not exist (media blob, for example). Storage
     *  reads never use it: a missing row is simply not emitted. */
    PARLEY_E_NOT_FOUND = -9,
    /** A signature, hash or envelope check failed (crypto, media hashes). */
    PARLEY_E_VERIFY = -10,
    /** A bug or an unexpected state inside the plugin. */
    PARLEY_E_INTERNAL = -11
};

/** A borrowed run of bytes. data may be NULL when len is 0. Not NUL-terminated. */
typedef struct parley_bytes {
    const uint8_t *data;
    size_t len;
} parley_bytes;

/** Log levels for api->log. */
typedef enum parley_log_level {
    PARLEY_LOG_TRACE = 0,
    PARLEY_LOG_DEBUG = 1,
    PARLEY_LOG_INFO = 2,
    PARLEY_LOG_WARNING = 3,
    PARLEY_LOG_ERROR = 4
} parley_log_level;

/** Plugin kinds, combined as a bit mask in the descriptor. */
enum {
    PARLEY_KIND_STORAGE = 1u << 0,
    PARLEY_KIND_PUSH = 1u << 1,
    PARLEY_KIND_MEDIA = 1u << 2,
    PARLEY_KIND_CRYPTO = 1u << 3
};

/** Metric kinds for api->metric_register. */
typedef enum parley_metric_kind {
    /** Monotonic count; use metric_add. */
    PARLEY_METRIC_COUNTER = 0,
    /** A value that goes up and down; use metric_set. */
    PARLEY_METRIC_GAUGE = 1,
    /** A distribution of observations in seconds or bytes; use metric_observe. */
    PARLEY_METRIC_HISTOGRAM = 2
} parley_metric_kind;

/** Opaque: the host's handle for one plugin instance. Passed back to host functions. */
typedef struct parley_host parley_host;
/** Opaque: one operation in flight. Valid from the call until complete() (or until
 *  a synchronous call returns). */
typedef struct parley_op parley_op;
/** Opaque: a registered metric. Valid until the instance's destroy() returns. */
typedef struct parley_metric parley_metric;

/* ------------------------------------------------------------------------ */
/* The host API: what the host offers every plugin                           */
/* ------------------------------------------------------------------------ */

typedef struct parley_host_api {
    uint32_t struct_size;
    /** The host's ABI version. A plugin needing a newer minor refuses in create(). */
    uint16_t abi_major;
    uint16_t abi_minor;
    /** The host's release, e.g. "0.1.0". Static, NUL-terminated. */
    const char *host_version;
    /** The toolchain that built the host, e.g. "swift-6.3.1". Static. Swift plugins
     *  compare it with their own to refuse a mismatched runtime. */
    const char *build_tag;

    /** Writes one log line attributed to this plugin. message is borrowed and
     *  need not be NUL-terminated. Never put secrets in logs. Any thread. */
    void (*log)(parley_host *host, parley_log_level level, const char *message, size_t message_len);

    /** Allocates size bytes (malloc semantics; NULL on failure). Any thread. */
    void *(*alloc)(size_t size);
    /** Frees memory from alloc (NULL is allowed). Any thread. */
    void (*free)(void *ptr);

    /** Reads the plugin's configuration value for key (NUL-terminated). Returns a
     *  NUL-terminated string owned by the host that stays valid until destroy(),
     *  or NULL when the operator did not set the key. Any thread. */
    const char *(*config_get)(parley_host *host, const char *key);

    /** Registers a metric once (typically in create) and returns its handle, or NULL
     *  if name is invalid. name: [a-z0-9_]+, the host prefixes it with
     *  "parley_plugin_<plugin name>_". help is a one-line description. Both borrowed.
     *  Registering the same name and kind twice returns the same handle. */
    parley_metric *(*metric_register)(parley_host *host, parley_metric_kind kind, const char *name, const char *help);
    /** Adds delta to a counter. Any thread, lock-free enough for hot paths. */
    void (*metric_add)(parley_metric *metric, uint64_t delta);
    /** Sets a gauge. Any thread. */
    void (*metric_set)(parley_metric *metric, double value);
    /** Records one observation in a histogram. Any thread. */
    void (*metric_observe)(parley_metric *metric, double value);

    /** Finishes an operation for which the plugin returned PARLEY_PENDING: exactly
     *  once, from any thread, after its last emit_* call. status is PARLEY_OK or
     *  an error (never PARLEY_PENDING). After this call op is invalid. */
    void (*complete)(parley_op *op, parley_status status);

    /** Attaches a human-readable error message to op (copied, truncated to 1 KiB).
     *  Call before returning or completing with an error status. */
    void (*set_error)(parley_op *op, const char *message, size_t message_len);

    /** Emits one row of a storage get or scan result (copied). Rows of a scan are
     *  emitted in the order requested. Returns 0 to continue, non-zero when the
     *  host wants no more rows (stop and finish with PARLEY_OK). */
    int (*emit_row)(parley_op *op, parley_bytes sort_key, parley_bytes value);

    /** Emits the outcome of item index of a batch: a storage write's counter value
     *  or failed condition, a push notification's outcome, a signature check's
     *  verdict. outcome and value mean what the operation's docs say; detail is a
     *  borrowed optional message (copied). */
    void (*emit_item)(parley_op *op, size_t index, int32_t outcome, uint64_t value, parley_bytes detail);

    /** Emits a chunk of a byte stream result: media blob data, a sealed box, a URL.
     *  Chunks concatenate in call order. Returns 0 to continue, non-zero when the
     *  host wants no more bytes. */
    int (*emit_bytes)(parley_op *op, parley_bytes chunk);

    /** Emits facts about a media blob: total size, SHA-256 (32 bytes) and content
     *  type (borrowed, copied). */
    void (*emit_blob_info)(parley_op *op, uint64_t size, parley_bytes sha256, parley_bytes content_type);
} parley_host_api;

/* ------------------------------------------------------------------------ */
/* Storage: an ordered wide-column key-value store                          */
/* ------------------------------------------------------------------------ */
/*
 * A row is addressed by (table, partition key, sort key) and holds a value.
 * Keys and values are arbitrary bytes, zero bytes included; partition and sort
 * keys may be empty. Within a partition, rows are ordered by sort key as
 * unsigned bytes (memcmp order; a key sorts before every longer key it is a
 * prefix of). The core owns table names, key encodings and migrations; the
 * plugin stores bytes.
 *
 * Limits every storage plugin must accept (the host never sends more):
 */
#define PARLEY_STORAGE_MAX_TABLE_BYTES 64
#define PARLEY_STORAGE_MAX_PARTITION_BYTES 192
#define PARLEY_STORAGE_MAX_SORT_BYTES 192
#define PARLEY_STORAGE_MAX_VALUE_BYTES 4194304 /* 4 MiB */
#define PARLEY_STORAGE_MAX_BATCH_WRITES 4096

/** Bounds of a scan. */
typedef enum parley_bound_kind {
    /** No bound on this side. */
    PARLEY_BOUND_NONE = 0,
    /** Rows whose sort key equals the bound are included. */
    PARLEY_BOUND_INCLUSIVE = 1,
    /** Rows whose sort key equals the bound are excluded. */
    PARLEY_BOUND_EXCLUSIVE = 2
} parley_bound_kind;

/** Scan flags. */
enum {
    /** Emit rows from the highest sort key down instead of the lowest up. */
    PARLEY_SCAN_REVERSE = 1u << 0
};

typedef struct parley_scan_request {
    uint32_t struct_size;
    /** PARLEY_SCAN_* flags. */
    uint32_t flags;
    parley_bytes table;
    parley_bytes partition;
    /** Lower bound on the sort key (whatever the direction). */
    parley_bytes lower;
    parley_bound_kind lower_kind;
    /** Upper bound on the sort key (whatever the direction). */
    parley_bytes upper;
    parley_bound_kind upper_kind;
    /** At most this many rows; 0 means no limit. The host always sets one. */
    uint32_t limit;
} parley_scan_request;
/* A lower bound above the upper bound, or equal bounds with one exclusive,
 * select no rows: the scan emits nothing and returns PARLEY_OK. */

/** Kinds of write in an atomic batch. */
typedef enum parley_write_kind {
    /** Store value, replacing any row. */
    PARLEY_WRITE_PUT = 0,
    /** Remove the row if present (absent is not an error). */
    PARLEY_WRITE_DELETE = 1,
    /** Store value only if no row exists. When one exists, the whole batch fails
     *  with PARLEY_E_CONFLICT and emit_item(index, PARLEY_E_CONFLICT, 0, {}),
     *  for the first failed condition only. */
    PARLEY_WRITE_PUT_IF_ABSENT = 2,
    /** Store value only if the row exists and its value equals expected byte for
     *  byte. Otherwise the batch fails as for PUT_IF_ABSENT. */
    PARLEY_WRITE_COMPARE_AND_SET = 3,
    /** Treat the row as a signed 64-bit little-endian counter (absent = 0), add
     *  delta, store the 8-byte result, and emit_item(index, PARLEY_OK, new value
     *  as uint64_t, {}) once the whole batch has succeeded (a failed batch emits
     *  no counter values). A present row whose value is not 8 bytes, or a sum
     *  that overflows int64, fails the batch with PARLEY_E_INVALID. */
    PARLEY_WRITE_COUNTER_ADD = 4
} parley_write_kind;

typedef struct parley_write {
    uint32_t struct_size;
    parley_write_kind kind;
    parley_bytes table;
    parley_bytes partition;
    parley_bytes sort;
    /** PUT, PUT_IF_ABSENT, COMPARE_AND_SET: the new value. */
    parley_bytes value;
    /** COMPARE_AND_SET: the value the row must hold. */
    parley_bytes expected;
    /** COUNTER_ADD: the amount to add (may be negative). */
    int64_t delta;
} parley_write;

typedef struct parley_storage_vtable {
    uint32_t struct_size;

    /** Reads one row. If present, calls emit_row once with its sort key and value;
     *  if absent, emits nothing. Returns PARLEY_OK, an error, or PARLEY_PENDING. */
    parley_status (*get)(void *instance, parley_op *op, parley_bytes table, parley_bytes partition, parley_bytes sort);

    /** Emits the rows of one partition between the bounds, in sort-key order
     *  (descending with PARLEY_SCAN_REVERSE), at most limit rows, stopping early
     *  when emit_row returns non-zero. The rows reflect one consistent state that
     *  includes every batch completed before the call. */
    parley_status (*scan)(void *instance, parley_op *op, const parley_scan_request *request);

    /** Applies count writes atomically and durably: when this call reports
     *  PARLEY_OK (directly or through complete) every write is on stable storage;
     *  when it reports an error none of them is. writes is an array of count
     *  elements, each write_size bytes apart (write_size >= the struct_size the
     *  plugin knows). Writes apply in array order; later writes see earlier ones.
     *  Concurrent batches are serialized. Plugins are encouraged to return
     *  PARLEY_PENDING and commit many concurrent batches in one transaction
     *  (group commit); a failed condition in one batch must not affect others.
     *  Errors found before queueing (bad arguments) may be returned at once.
     *  count 0 is PARLEY_OK (the host does not send empty batches). */
    parley_status (*apply)(void *instance, parley_op *op, const parley_write *writes, size_t count, size_t write_size);
} parley_storage_vtable;

/* ------------------------------------------------------------------------ */
/* Push: notifications to devices that are offline                          */
/* ------------------------------------------------------------------------ */

/** Per-notification outcomes, reported with emit_item(index, outcome, value, detail). */
typedef enum parley_push_outcome {
    /** Accepted by the provider. value: 0. */
    PARLEY_PUSH_DELIVERED = 0,
    /** Not delivered now; try again after value milliseconds (0 = host decides). */
    PARLEY_PUSH_RETRY_AFTER = 1,
    /** The device token is no longer valid; the host forgets it. value: 0. */
    PARLEY_PUSH_TOKEN_INVALID = 2,
    /** Rejected for good (payload too large, bad topic...); detail says why. */
    PARLEY_PUSH_REJECTED = 3
} parley_push_outcome;

/** Priority of a notification. */
typedef enum parley_push_priority {
    PARLEY_PUSH_PRIORITY_NORMAL = 0,
    PARLEY_PUSH_PRIORITY_HIGH = 1
} parley_push_priority;

typedef struct parley_push_notification {
    uint32_t struct_size;
    parley_push_priority priority;
    /** The provider the device registered with, e.g. "apns", "fcm", "webhook". */
    parley_bytes provider;
    /** The device's push token as registered by the client. */
    parley_bytes device_token;
    /** Provider topic or app id (may be empty). */
    parley_bytes topic;
    /** Notifications with the same collapse id replace each other (may be empty). */
    parley_bytes collapse_id;
    /** Opaque payload for the device: a wake-up, possibly with a preview sealed to
     *  the device's push key. Forwarded, never parsed. */
    parley_bytes payload;
    /** Seconds the provider may hold the notification; 0 = deliver now or drop. */
    uint32_t ttl_seconds;
} parley_push_notification;

typedef struct parley_push_vtable {
    uint32_t struct_size;
    /** Sends count notifications (element_size bytes apart). Reports every
     *  element's outcome with emit_item before finishing; an element with no
     *  reported outcome counts as PARLEY_PUSH_RETRY_AFTER. Returns PARLEY_OK when
     *  outcomes were reported (even if some failed), an error when the whole batch
     *  failed (provider unreachable), or PARLEY_PENDING. */
    parley_status (*send)(void *instance, parley_op *op, const parley_push_notification *notifications, size_t count, size_t element_size);
} parley_push_vtable;

/* ------------------------------------------------------------------------ */
/* Media: attachment blobs (ciphertext; the server never sees plaintext)     */
/* ------------------------------------------------------------------------ */

/** Opaque: a plugin's upload in progress. */
typedef struct parley_upload parley_upload;

typedef struct parley_media_vtable {
    uint32_t struct_size;

    /** Starts storing blob blob_id (host-chosen, [A-Za-z0-9_-], at most 128 bytes)
     *  of expected_size bytes. On success sets *upload_out. Nothing is visible
     *  under blob_id until put_finish succeeds. */
    parley_status (*put_begin)(void *instance, parley_op *op, parley_bytes blob_id, uint64_t expected_size, parley_bytes content_type, parley_upload **upload_out);
    /** Appends chunk to the upload. Chunks of one upload never overlap in time. */
    parley_status (*put_write)(void *instance, parley_op *op, parley_upload *upload, parley_bytes chunk);
    /** Finishes the upload: checks that the size is expected_size and that the
     *  SHA-256 of the content equals sha256 (32 bytes), else fails with
     *  PARLEY_E_VERIFY and keeps nothing. On success makes the blob visible and
     *  emits emit_blob_info. upload is freed by the plugin either way. */
    parley_status (*put_finish)(void *instance, parley_op *op, parley_upload *upload, parley_bytes sha256);
    /** Abandons an upload and frees it; never fails. Called instead of put_finish. */
    void (*put_abort)(void *instance, parley_upload *upload);

    /** Emits blob info (size, SHA-256, content type), or PARLEY_E_NOT_FOUND. */
    parley_status (*stat)(void *instance, parley_op *op, parley_bytes blob_id);
    /** Emits bytes [offset, offset + length) of the blob through emit_bytes, in
     *  chunks of the plugin's choosing; length UINT64_MAX means to the end. A range
     *  past the end is clipped; an offset past the end emits nothing. Stops early
     *  when emit_bytes returns non-zero. PARLEY_E_NOT_FOUND if absent. */
    parley_status (*read)(void *instance, parley_op *op, parley_bytes blob_id, uint64_t offset, uint64_t length);
    /** Deletes the blob. Deleting an absent blob is PARLEY_OK. */
    parley_status (*remove)(void *instance, parley_op *op, parley_bytes blob_id);
    /** Optional (may be NULL): emits a URL through emit_bytes from which a client
     *  can download the blob directly for expires_seconds (a presigned URL).
     *  PARLEY_E_UNSUPPORTED means clients download through the host. */
    parley_status (*download_url)(void *instance, parley_op *op, parley_bytes blob_id, uint32_t expires_seconds);
} parley_media_vtable;

/* ------------------------------------------------------------------------ */
/* Crypto: the checks the server can make without plaintext                  */
/* ------------------------------------------------------------------------ */

/** Signature algorithms. */
typedef enum parley_signature_algorithm {
    /** Ed25519 (RFC 8032): 32-byte public key, 64-byte signature. */
    PARLEY_SIGNATURE_ED25519 = 0
} parley_signature_algorithm;

/** One signature to check: key-bundle prekeys signed by the identity key,
 *  device lists signed by the account key, sender-key distribution messages. */
typedef struct parley_signature_check {
    uint32_t struct_size;
    parley_signature_algorithm algorithm;
    parley_bytes public_key;
    parley_bytes message;
    parley_bytes signature;
} parley_signature_check;

/** What the host knows about an end-to-end encrypted envelope being sent. */
typedef struct parley_envelope_context {
    uint32_t struct_size;
    /** The envelope's content type, e.g. "application/parley-e2e-v1". */
    parley_bytes content_type;
    /** The recipient device ids the envelope must address: each entry is one
     *  device id; the envelope must carry one ciphertext for each, and no other. */
    const parley_bytes *device_ids;
    size_t device_count;
    /** The sending device's id. */
    parley_bytes sender_device_id;
} parley_envelope_context;

typedef struct parley_crypto_vtable {
    uint32_t struct_size;
    /** Verifies count signatures (element_size bytes apart) and reports each with
     *  emit_item(index, PARLEY_OK or PARLEY_E_VERIFY, 0, detail). Returns
     *  PARLEY_OK once every verdict is out, an error if it could not check at all. */
    parley_status (*verify_signatures)(void *instance, parley_op *op, const parley_signature_check *checks, size_t count, size_t element_size);
    /** Checks an encrypted envelope's shape without decrypting it: well-formed,
     *  addressed to exactly context->device_ids, sizes within limits. PARLEY_OK or
     *  PARLEY_E_VERIFY with set_error saying what is wrong. */
    parley_status (*check_envelope)(void *instance, parley_op *op, parley_bytes envelope, const parley_envelope_context *context);
    /** Seals plaintext to recipient_public_key (X25519, 32 bytes) as an anonymous
     *  sealed box (crypto_box_seal) and emits the sealed bytes through emit_bytes. */
    parley_status (*seal)(void *instance, parley_op *op, parley_bytes recipient_public_key, parley_bytes plaintext);
} parley_crypto_vtable;

/* ------------------------------------------------------------------------ */
/* The descriptor and the entry point                                        */
/* ------------------------------------------------------------------------ */

typedef struct parley_plugin_descriptor {
    /** PARLEY_PLUGIN_MAGIC. These three fields never move. */
    uint32_t magic;
    /** PARLEY_ABI_MAJOR and PARLEY_ABI_MINOR of the header the plugin was built with. */
    uint16_t abi_major;
    uint16_t abi_minor;
    uint32_t struct_size;
    /** PARLEY_KIND_* bits this plugin provides. */
    uint32_t kinds;
    /** Unique name, [a-z0-9-]+, e.g. "storage-sqlite". Static, NUL-terminated. */
    const char *name;
    /** The plugin's own release, e.g. "1.2.0". Static. */
    const char *version;
    /** One line for operators. Static. */
    const char *description;
    /** The toolchain that built the plugin, e.g. "swift-6.3.1", or NULL for
     *  plugins that share no runtime with the host (C, C++, Rust, Zig...). When
     *  set, the host refuses the plugin unless it equals the host's build_tag. */
    const char *build_tag;

    /** Creates an instance. api stays valid for the life of the process; host is
     *  this instance's handle for host functions. Reads configuration through
     *  api->config_get. On success stores the instance in *instance_out and
     *  returns PARLEY_OK; on failure writes a NUL-terminated reason of at most
     *  error_size bytes into error and returns an error status. Must not return
     *  PARLEY_PENDING. */
    parley_status (*create)(const parley_host_api *api, parley_host *host, void **instance_out, char *error, size_t error_size);
    /** Stops the instance: called once at shutdown after the host has drained every
     *  operation. Flushes and releases everything. The library itself is never
     *  unloaded. */
    void (*destroy)(void *instance);

    /** The table for each kind in kinds; NULL for the others. Static. */
    const parley_storage_vtable *storage;
    const parley_push_vtable *push;
    const parley_media_vtable *media;
    const parley_crypto_vtable *crypto;
} parley_plugin_descriptor;

/** The one exported symbol. Returns a pointer to a descriptor that stays valid for
 *  the life of the process (static, or built once on the first call); called right
 *  after loading, before anything else. Must not fail. */
typedef const parley_plugin_descriptor *(*parley_plugin_entry_fn)(void);

#ifdef __cplusplus
#define PARLEY_EXTERN_C extern "C"
#else
#define PARLEY_EXTERN_C
#endif

/** Defines the entry point returning &descriptor. Use once, at file scope, in a
 *  C or C++ plugin:   PARLEY_PLUGIN_ENTRY(my_descriptor)   */
#define PARLEY_PLUGIN_ENTRY(descriptor)                                                  \
    PARLEY_EXTERN_C PARLEY_EXPORT const parley_plugin_descriptor *parley_plugin_entry(void); \
    PARLEY_EXTERN_C PARLEY_EXPORT const parley_plugin_descriptor *parley_plugin_entry(void) { \
        return &(descriptor);                                                            \
    }

#ifdef __cplusplus
}
#endif

#endif /* PARLEY_PLUGIN_H */
