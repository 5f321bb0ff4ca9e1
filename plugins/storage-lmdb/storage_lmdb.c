/*
 * storage-lmdb: a Parley storage plugin on LMDB, in plain C11.
 *
 * One LMDB environment (a single data file, MDB_NOSUBDIR) holds every table in
 * its main database. A row (table, partition, sort) is stored under the key
 *
 *     [1 byte table length][table][2 bytes big-endian partition length][partition][sort]
 *
 * so all rows of one (table, partition) share a prefix that no other partition
 * has, and LMDB's default comparator (memcmp, shorter key first on a tie)
 * orders them by sort key exactly as the ABI requires. The largest key is
 * 1 + 64 + 2 + 192 + 192 = 451 bytes, within LMDB's 511-byte limit.
 *
 * A format marker lives under a key starting with 0xFF, a byte no table-length
 * prefix can take (tables are at most 64 bytes), so no scan ever reaches it.
 *
 * Reads use one read-only transaction per call (one consistent snapshot); the
 * environment is opened with MDB_NOTLS so a transaction is not tied to a
 * thread's reader slot. Writes use one write transaction per apply() call;
 * LMDB serializes writers and commits durably (no MDB_NOSYNC/NOMETASYNC).
 * Every call finishes synchronously.
 */
#define _POSIX_C_SOURCE 200809L

/* System headers first: they must see _POSIX_C_SOURCE before anything (such as
 * a clang module import of the plugin header) pulls in <features.h>. */
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <parley/plugin.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                 */
/* ------------------------------------------------------------------------ */

#define SLMDB_NAME "storage-lmdb"
#define SLMDB_DEFAULT_MAP_SIZE_MB 4096ull
/* Reader slots: with MDB_NOTLS each concurrent read transaction holds one. */
#define SLMDB_MAX_READERS 512u
#define SLMDB_MAX_KEY_BYTES \
    (1u + PARLEY_STORAGE_MAX_TABLE_BYTES + 2u + PARLEY_STORAGE_MAX_PARTITION_BYTES + PARLEY_STORAGE_MAX_SORT_BYTES)
#define SLMDB_MAX_PREFIX_BYTES (1u + PARLEY_STORAGE_MAX_TABLE_BYTES + 2u + PARLEY_STORAGE_MAX_PARTITION_BYTES)
#define SLMDB_MESSAGE_BYTES 1024u

static const unsigned char slmdb_format_key[] = {0xFF, 'f', 'o', 'r', 'm', 'a', 't'};
static const char slmdb_format_value[] = "parley-storage-lmdb/1";

/* A non-NULL address for empty byte runs (LMDB may memcpy from it). */
static const unsigned char slmdb_empty_byte = 0;

#if defined(__GNUC__) || defined(__clang__)
#define SLMDB_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define SLMDB_PRINTF(fmt_index, first_arg)
#endif

/* ------------------------------------------------------------------------ */
/* Instance                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct slmdb_instance {
    const parley_host_api *api;
    parley_host *host;
    MDB_env *env;
    MDB_dbi dbi;
    size_t map_size_mb;

    /* Host functions, resolved once in create (NULL when the host lacks them). */
    void (*log)(parley_host *, parley_log_level, const char *, size_t);
    void (*metric_add)(parley_metric *, uint64_t);
    void (*metric_observe)(parley_metric *, double);

    parley_metric *reads_total;
    parley_metric *writes_total;
    parley_metric *batches_total;
    parley_metric *errors_total;
    parley_metric *commit_seconds;
} slmdb_instance;

/* A counter result held back until the batch has committed. */
typedef struct slmdb_counter_result {
    size_t index;
    uint64_t value;
} slmdb_counter_result;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static int slmdb_bytes_valid(parley_bytes b) {
    return b.len == 0 || b.data != NULL;
}

static const void *slmdb_bytes_ptr(parley_bytes b) {
    return b.len == 0 ? (const void *)&slmdb_empty_byte : (const void *)b.data;
}

/* memcmp order; a key sorts before every longer key it is a prefix of. */
static int slmdb_compare(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen) {
    size_t n = alen < blen ? alen : blen;
    if (n > 0) {
        int c = memcmp(a, b, n);
        if (c != 0) return c;
    }
    return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

static void slmdb_metric_add(const slmdb_instance *inst, parley_metric *metric, uint64_t delta) {
    if (metric != NULL && inst->metric_add != NULL && delta > 0) inst->metric_add(metric, delta);
}

static void slmdb_metric_observe(const slmdb_instance *inst, parley_metric *metric, double value) {
    if (metric != NULL && inst->metric_observe != NULL) inst->metric_observe(metric, value);
}

static double slmdb_now_seconds(void) {
    struct timespec ts;
#if defined(CLOCK_MONOTONIC)
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0.0;
#else
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC) return 0.0;
#endif
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void slmdb_vformat(char *buf, size_t size, size_t *len_out, const char *fmt, va_list ap) {
    int n = vsnprintf(buf, size, fmt, ap);
    if (n < 0) {
        buf[0] = '\0';
        *len_out = 0;
    } else {
        *len_out = (size_t)n < size ? (size_t)n : size - 1;
    }
}

static SLMDB_PRINTF(3, 4) void slmdb_log(const slmdb_instance *inst, parley_log_level level, const char *fmt, ...) {
    char buf[SLMDB_MESSAGE_BYTES];
    size_t len;
    va_list ap;
    if (inst->log == NULL) return;
    va_start(ap, fmt);
    slmdb_vformat(buf, sizeof buf, &len, fmt, ap);
    va_end(ap);
    inst->log(inst->host, level, buf, len);
}

/* Attaches an error message to op, counts the error, and returns status.
 * Backend failures are also logged; caller mistakes and conflicts are not. */
static SLMDB_PRINTF(4, 5) parley_status slmdb_fail(const slmdb_instance *inst, parley_op *op, parley_status status,
                                                    const char *fmt, ...) {
    char buf[SLMDB_MESSAGE_BYTES];
    size_t len;
    va_list ap;
    va_start(ap, fmt);
    slmdb_vformat(buf, sizeof buf, &len, fmt, ap);
    va_end(ap);
    if (op != NULL && inst->api->set_error != NULL) inst->api->set_error(op, buf, len);
    slmdb_metric_add(inst, inst->errors_total, 1);
    if (status == PARLEY_E_IO || status == PARLEY_E_CORRUPT || status == PARLEY_E_INTERNAL ||
        status == PARLEY_E_NOMEM) {
        if (inst->log != NULL) inst->log(inst->host, PARLEY_LOG_ERROR, buf, len);
    }
    return status;
}

/* Maps an LMDB (or errno) code to a Parley status with a message. */
static parley_status slmdb_fail_mdb(const slmdb_instance *inst, parley_op *op, int rc, const char *what) {
    switch (rc) {
    case MDB_MAP_FULL:
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE,
                          SLMDB_NAME ": %s: the database is full (map_size_mb = %zu); "
                                     "raise map_size_mb in the plugin configuration and restart",
                          what, inst->map_size_mb);
    case MDB_TXN_FULL:
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE,
                          SLMDB_NAME ": %s: the batch touches too many pages for one transaction", what);
    case MDB_READERS_FULL:
        return slmdb_fail(inst, op, PARLEY_E_BUSY,
                          SLMDB_NAME ": %s: all %u reader slots are in use; retry later", what,
                          SLMDB_MAX_READERS);
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
        return slmdb_fail(inst, op, PARLEY_E_CORRUPT, SLMDB_NAME ": %s: %s", what, mdb_strerror(rc));
    case MDB_BAD_VALSIZE:
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE, SLMDB_NAME ": %s: %s", what, mdb_strerror(rc));
    case ENOMEM:
        return slmdb_fail(inst, op, PARLEY_E_NOMEM, SLMDB_NAME ": %s: out of memory", what);
    default:
        return slmdb_fail(inst, op, PARLEY_E_IO, SLMDB_NAME ": %s: %s (LMDB code %d)", what, mdb_strerror(rc), rc);
    }
}

/* ------------------------------------------------------------------------ */
/* Key encoding                                                              */
/* ------------------------------------------------------------------------ */

/* Checks a (table, partition) pair; returns PARLEY_OK or an error with set_error. */
static parley_status slmdb_check_prefix(const slmdb_instance *inst, parley_op *op, parley_bytes table,
                                        parley_bytes partition) {
    if (!slmdb_bytes_valid(table) || !slmdb_bytes_valid(partition))
        return slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": table or partition has NULL data and a length");
    if (table.len > PARLEY_STORAGE_MAX_TABLE_BYTES)
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE, SLMDB_NAME ": table name is %zu bytes; the limit is %u",
                          table.len, (unsigned)PARLEY_STORAGE_MAX_TABLE_BYTES);
    if (partition.len > PARLEY_STORAGE_MAX_PARTITION_BYTES)
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE, SLMDB_NAME ": partition key is %zu bytes; the limit is %u",
                          partition.len, (unsigned)PARLEY_STORAGE_MAX_PARTITION_BYTES);
    return PARLEY_OK;
}

static parley_status slmdb_check_sort(const slmdb_instance *inst, parley_op *op, parley_bytes sort, const char *what) {
    if (!slmdb_bytes_valid(sort))
        return slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": %s has NULL data and a length", what);
    if (sort.len > PARLEY_STORAGE_MAX_SORT_BYTES)
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE, SLMDB_NAME ": %s is %zu bytes; the limit is %u", what,
                          sort.len, (unsigned)PARLEY_STORAGE_MAX_SORT_BYTES);
    return PARLEY_OK;
}

/* Writes the partition prefix into buf (at least SLMDB_MAX_PREFIX_BYTES); returns its length.
 * The lengths must already be checked. */
static size_t slmdb_encode_prefix(unsigned char *buf, parley_bytes table, parley_bytes partition) {
    size_t n = 0;
    buf[n++] = (unsigned char)table.len;
    if (table.len > 0) memcpy(buf + n, table.data, table.len);
    n += table.len;
    buf[n++] = (unsigned char)((partition.len >> 8) & 0xFFu);
    buf[n++] = (unsigned char)(partition.len & 0xFFu);
    if (partition.len > 0) memcpy(buf + n, partition.data, partition.len);
    n += partition.len;
    return n;
}

/* Appends sort to a prefix of length prefix_len in buf; returns the key length. */
static size_t slmdb_append_sort(unsigned char *buf, size_t prefix_len, parley_bytes sort) {
    if (sort.len > 0) memcpy(buf + prefix_len, sort.data, sort.len);
    return prefix_len + sort.len;
}

/* The smallest key greater than every key starting with prefix: the prefix with
 * trailing 0xFF bytes removed and its last byte incremented. Returns its length,
 * or 0 when no such key exists (cannot happen: the first byte is at most 64). */
static size_t slmdb_prefix_successor(unsigned char *buf, size_t prefix_len) {
    while (prefix_len > 0 && buf[prefix_len - 1] == 0xFF) prefix_len--;
    if (prefix_len == 0) return 0;
    buf[prefix_len - 1]++;
    return prefix_len;
}

/* ------------------------------------------------------------------------ */
/* Counter values                                                            */
/* ------------------------------------------------------------------------ */

static int64_t slmdb_load_i64_le(const unsigned char *p) {
    uint64_t u = 0;
    int i;
    for (i = 7; i >= 0; i--) u = (u << 8) | (uint64_t)p[i];
    /* Two's complement reinterpretation without implementation-defined conversion. */
    if (u <= (uint64_t)INT64_MAX) return (int64_t)u;
    return -(int64_t)(~u) - 1;
}

static void slmdb_store_i64_le(unsigned char *p, int64_t v) {
    uint64_t u = (uint64_t)v;
    int i;
    for (i = 0; i < 8; i++) {
        p[i] = (unsigned char)(u & 0xFFu);
        u >>= 8;
    }
}

/* ------------------------------------------------------------------------ */
/* Storage: get                                                              */
/* ------------------------------------------------------------------------ */

static parley_status slmdb_get(void *instance, parley_op *op, parley_bytes table, parley_bytes partition,
                               parley_bytes sort) {
    slmdb_instance *inst = (slmdb_instance *)instance;
    unsigned char keybuf[SLMDB_MAX_KEY_BYTES];
    MDB_txn *txn = NULL;
    MDB_val key, val;
    size_t prefix_len;
    parley_status st;
    int rc;

    slmdb_metric_add(inst, inst->reads_total, 1);
    if ((st = slmdb_check_prefix(inst, op, table, partition)) != PARLEY_OK) return st;
    if ((st = slmdb_check_sort(inst, op, sort, "sort key")) != PARLEY_OK) return st;

    prefix_len = slmdb_encode_prefix(keybuf, table, partition);
    key.mv_size = slmdb_append_sort(keybuf, prefix_len, sort);
    key.mv_data = keybuf;

    rc = mdb_txn_begin(inst->env, NULL, MDB_RDONLY, &txn);
    if (rc != MDB_SUCCESS) return slmdb_fail_mdb(inst, op, rc, "get: begin read transaction");

    rc = mdb_get(txn, inst->dbi, &key, &val);
    if (rc == MDB_SUCCESS) {
        parley_bytes out_sort = sort;
        parley_bytes out_value;
        out_value.data = (const uint8_t *)val.mv_data;
        out_value.len = val.mv_size;
        (void)inst->api->emit_row(op, out_sort, out_value);
        mdb_txn_abort(txn);
        return PARLEY_OK;
    }
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND) return PARLEY_OK;
    return slmdb_fail_mdb(inst, op, rc, "get");
}

/* ------------------------------------------------------------------------ */
/* Storage: scan                                                             */
/* ------------------------------------------------------------------------ */

static parley_status slmdb_scan(void *instance, parley_op *op, const parley_scan_request *request) {
    slmdb_instance *inst = (slmdb_instance *)instance;
    parley_scan_request req;
    unsigned char keybuf[SLMDB_MAX_KEY_BYTES];
    unsigned char prefix[SLMDB_MAX_PREFIX_BYTES];
    size_t prefix_len, known;
    uint32_t size;
    int reverse;
    uint32_t limit, emitted = 0;
    parley_bound_kind lower_kind, upper_kind;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    MDB_val key, val;
    parley_status st;
    int rc;

    slmdb_metric_add(inst, inst->reads_total, 1);
    if (request == NULL) return slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": scan: request is NULL");

    /* Copy the fields this plugin knows; missing (older) fields read as zero. */
    size = request->struct_size;
    known = size < sizeof req ? size : sizeof req;
    memset(&req, 0, sizeof req);
    memcpy(&req, request, known);
    req.struct_size = (uint32_t)known;
    if (!PARLEY_HAS_FIELD(&req, parley_scan_request, partition))
        return slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": scan: request struct_size %u is too small",
                          (unsigned)size);
    reverse = PARLEY_HAS_FIELD(&req, parley_scan_request, flags) && (req.flags & PARLEY_SCAN_REVERSE) != 0;
    lower_kind = PARLEY_HAS_FIELD(&req, parley_scan_request, lower_kind) ? req.lower_kind : PARLEY_BOUND_NONE;
    upper_kind = PARLEY_HAS_FIELD(&req, parley_scan_request, upper_kind) ? req.upper_kind : PARLEY_BOUND_NONE;
    limit = PARLEY_HAS_FIELD(&req, parley_scan_request, limit) ? req.limit : 0;

    if ((st = slmdb_check_prefix(inst, op, req.table, req.partition)) != PARLEY_OK) return st;
    if (PARLEY_HAS_FIELD(&req, parley_scan_request, flags) && (req.flags & ~(uint32_t)PARLEY_SCAN_REVERSE) != 0)
        return slmdb_fail(inst, op, PARLEY_E_UNSUPPORTED, SLMDB_NAME ": scan: unknown flags 0x%x", (unsigned)req.flags);
    if (lower_kind != PARLEY_BOUND_NONE && lower_kind != PARLEY_BOUND_INCLUSIVE &&
        lower_kind != PARLEY_BOUND_EXCLUSIVE)
        return slmdb_fail(inst, op, PARLEY_E_UNSUPPORTED, SLMDB_NAME ": scan: unknown lower bound kind %d",
                          (int)lower_kind);
    if (upper_kind != PARLEY_BOUND_NONE && upper_kind != PARLEY_BOUND_INCLUSIVE &&
        upper_kind != PARLEY_BOUND_EXCLUSIVE)
        return slmdb_fail(inst, op, PARLEY_E_UNSUPPORTED, SLMDB_NAME ": scan: unknown upper bound kind %d",
                          (int)upper_kind);
    if (lower_kind != PARLEY_BOUND_NONE && (st = slmdb_check_sort(inst, op, req.lower, "scan lower bound")) != PARLEY_OK)
        return st;
    if (upper_kind != PARLEY_BOUND_NONE && (st = slmdb_check_sort(inst, op, req.upper, "scan upper bound")) != PARLEY_OK)
        return st;

    prefix_len = slmdb_encode_prefix(prefix, req.table, req.partition);
    memcpy(keybuf, prefix, prefix_len);

    rc = mdb_txn_begin(inst->env, NULL, MDB_RDONLY, &txn);
    if (rc != MDB_SUCCESS) return slmdb_fail_mdb(inst, op, rc, "scan: begin read transaction");
    rc = mdb_cursor_open(txn, inst->dbi, &cur);
    if (rc != MDB_SUCCESS) {
        mdb_txn_abort(txn);
        return slmdb_fail_mdb(inst, op, rc, "scan: open cursor");
    }

    /* Position the cursor on the first candidate row (rc MDB_NOTFOUND = none). */
    if (!reverse) {
        parley_bytes start = {NULL, 0};
        if (lower_kind != PARLEY_BOUND_NONE) start = req.lower;
        key.mv_data = keybuf;
        key.mv_size = slmdb_append_sort(keybuf, prefix_len, start);
        rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
        if (rc == MDB_SUCCESS && lower_kind == PARLEY_BOUND_EXCLUSIVE && key.mv_size == prefix_len + start.len &&
            memcmp(key.mv_data, keybuf, key.mv_size) == 0)
            rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
    } else {
        size_t target_len;
        int want_equal_kept = 0;
        if (upper_kind == PARLEY_BOUND_NONE) {
            target_len = slmdb_prefix_successor(keybuf, prefix_len);
        } else {
            target_len = slmdb_append_sort(keybuf, prefix_len, req.upper);
            want_equal_kept = upper_kind == PARLEY_BOUND_INCLUSIVE;
        }
        if (target_len == 0) {
            rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
        } else {
            MDB_val target;
            target.mv_data = keybuf;
            target.mv_size = target_len;
            key = target;
            rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
            if (rc == MDB_NOTFOUND) {
                rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
            } else if (rc == MDB_SUCCESS) {
                int exact = key.mv_size == target.mv_size && memcmp(key.mv_data, target.mv_data, target.mv_size) == 0;
                if (!(exact && want_equal_kept)) rc = mdb_cursor_get(cur, &key, &val, MDB_PREV);
            }
        }
    }

    while (rc == MDB_SUCCESS) {
        const unsigned char *k = (const unsigned char *)key.mv_data;
        const unsigned char *sk;
        size_t sk_len;
        parley_bytes out_sort, out_value;

        /* Stop when the cursor leaves the partition. */
        if (key.mv_size < prefix_len || memcmp(k, prefix, prefix_len) != 0) break;
        sk = k + prefix_len;
        sk_len = key.mv_size - prefix_len;

        /* The far bound (the near one was applied when positioning). */
        if (!reverse) {
            if (upper_kind != PARLEY_BOUND_NONE) {
                int c = slmdb_compare(sk, sk_len, (const unsigned char *)slmdb_bytes_ptr(req.upper), req.upper.len);
                if (c > 0 || (c == 0 && upper_kind == PARLEY_BOUND_EXCLUSIVE)) break;
            }
        } else {
            if (lower_kind != PARLEY_BOUND_NONE) {
                int c = slmdb_compare(sk, sk_len, (const unsigned char *)slmdb_bytes_ptr(req.lower), req.lower.len);
                if (c < 0 || (c == 0 && lower_kind == PARLEY_BOUND_EXCLUSIVE)) break;
            }
        }

        out_sort.data = sk_len > 0 ? sk : NULL;
        out_sort.len = sk_len;
        out_value.data = (const uint8_t *)val.mv_data;
        out_value.len = val.mv_size;
        emitted++;
        if (inst->api->emit_row(op, out_sort, out_value) != 0) break;
        if (limit != 0 && emitted >= limit) break;

        rc = mdb_cursor_get(cur, &key, &val, reverse ? MDB_PREV : MDB_NEXT);
    }

    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return slmdb_fail_mdb(inst, op, rc, "scan");
    return PARLEY_OK;
}

/* ------------------------------------------------------------------------ */
/* Storage: apply                                                            */
/* ------------------------------------------------------------------------ */

static const char *slmdb_kind_name(parley_write_kind kind) {
    switch (kind) {
    case PARLEY_WRITE_PUT: return "put";
    case PARLEY_WRITE_DELETE: return "delete";
    case PARLEY_WRITE_PUT_IF_ABSENT: return "put-if-absent";
    case PARLEY_WRITE_COMPARE_AND_SET: return "compare-and-set";
    case PARLEY_WRITE_COUNTER_ADD: return "counter-add";
    }
    return "unknown";
}

/* Reports a failed batch condition for write index (the transaction is already aborted). */
static parley_status slmdb_conflict(const slmdb_instance *inst, parley_op *op, size_t index, parley_write_kind kind,
                                    const char *why) {
    parley_bytes empty = {NULL, 0};
    inst->api->emit_item(op, index, PARLEY_E_CONFLICT, 0, empty);
    return slmdb_fail(inst, op, PARLEY_E_CONFLICT, SLMDB_NAME ": write %zu (%s): %s; nothing was applied", index,
                      slmdb_kind_name(kind), why);
}

/* Copies element index of the writes array into *w, with w->struct_size set to the
 * number of bytes of it that are valid. Returns 0 when the element is too small. */
static int slmdb_read_write(const unsigned char *base, size_t index, size_t write_size, parley_write *w) {
    const unsigned char *elem = base + index * write_size;
    uint32_t size;
    size_t valid, known;
    memcpy(&size, elem, sizeof size);
    valid = size < write_size ? size : write_size;
    known = valid < sizeof *w ? valid : sizeof *w;
    memset(w, 0, sizeof *w);
    memcpy(w, elem, known);
    w->struct_size = (uint32_t)known;
    return PARLEY_HAS_FIELD(w, parley_write, sort);
}

static parley_status slmdb_apply(void *instance, parley_op *op, const parley_write *writes, size_t count,
                                 size_t write_size) {
    slmdb_instance *inst = (slmdb_instance *)instance;
    const unsigned char *base = (const unsigned char *)writes;
    slmdb_counter_result *counters = NULL;
    size_t counter_count = 0;
    MDB_txn *txn = NULL;
    parley_status st = PARLEY_OK;
    double started;
    size_t i;
    int rc;

    slmdb_metric_add(inst, inst->batches_total, 1);
    if (count == 0) return PARLEY_OK;
    if (writes == NULL) return slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": apply: writes is NULL");
    if (count > PARLEY_STORAGE_MAX_BATCH_WRITES)
        return slmdb_fail(inst, op, PARLEY_E_TOO_LARGE, SLMDB_NAME ": apply: %zu writes in one batch; the limit is %u",
                          count, (unsigned)PARLEY_STORAGE_MAX_BATCH_WRITES);
    if (write_size < offsetof(parley_write, sort) + sizeof(parley_bytes))
        return slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": apply: write_size %zu is too small", write_size);

    rc = mdb_txn_begin(inst->env, NULL, 0, &txn);
    if (rc != MDB_SUCCESS) return slmdb_fail_mdb(inst, op, rc, "apply: begin write transaction");

    for (i = 0; i < count; i++) {
        unsigned char keybuf[SLMDB_MAX_KEY_BYTES];
        parley_write w;
        MDB_val key, val, cur;
        size_t prefix_len;
        const char *kind_name;

        if (!slmdb_read_write(base, i, write_size, &w)) {
            st = slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": apply: write %zu: struct_size is too small", i);
            goto abort;
        }
        kind_name = slmdb_kind_name(w.kind);
        if ((st = slmdb_check_prefix(inst, op, w.table, w.partition)) != PARLEY_OK) goto abort;
        if ((st = slmdb_check_sort(inst, op, w.sort, "sort key")) != PARLEY_OK) goto abort;

        prefix_len = slmdb_encode_prefix(keybuf, w.table, w.partition);
        key.mv_data = keybuf;
        key.mv_size = slmdb_append_sort(keybuf, prefix_len, w.sort);

        if (w.kind == PARLEY_WRITE_PUT || w.kind == PARLEY_WRITE_PUT_IF_ABSENT ||
            w.kind == PARLEY_WRITE_COMPARE_AND_SET) {
            if (!PARLEY_HAS_FIELD(&w, parley_write, value)) {
                st = slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": apply: write %zu (%s): struct_size lacks value",
                                i, kind_name);
                goto abort;
            }
            if (!slmdb_bytes_valid(w.value)) {
                st = slmdb_fail(inst, op, PARLEY_E_INVALID,
                                SLMDB_NAME ": apply: write %zu (%s): value has NULL data and a length", i, kind_name);
                goto abort;
            }
            if (w.value.len > PARLEY_STORAGE_MAX_VALUE_BYTES) {
                st = slmdb_fail(inst, op, PARLEY_E_TOO_LARGE,
                                SLMDB_NAME ": apply: write %zu (%s): value is %zu bytes; the limit is %u", i, kind_name,
                                w.value.len, (unsigned)PARLEY_STORAGE_MAX_VALUE_BYTES);
                goto abort;
            }
            val.mv_data = (void *)slmdb_bytes_ptr(w.value);
            val.mv_size = w.value.len;
        }

        switch (w.kind) {
        case PARLEY_WRITE_PUT:
            rc = mdb_put(txn, inst->dbi, &key, &val, 0);
            break;

        case PARLEY_WRITE_DELETE:
            rc = mdb_del(txn, inst->dbi, &key, NULL);
            if (rc == MDB_NOTFOUND) rc = MDB_SUCCESS;
            break;

        case PARLEY_WRITE_PUT_IF_ABSENT:
            rc = mdb_put(txn, inst->dbi, &key, &val, MDB_NOOVERWRITE);
            if (rc == MDB_KEYEXIST) {
                mdb_txn_abort(txn);
                txn = NULL;
                st = slmdb_conflict(inst, op, i, w.kind, "the row exists");
                goto out;
            }
            break;

        case PARLEY_WRITE_COMPARE_AND_SET:
            if (!PARLEY_HAS_FIELD(&w, parley_write, expected) || !slmdb_bytes_valid(w.expected)) {
                st = slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": apply: write %zu (%s): invalid expected value",
                                i, kind_name);
                goto abort;
            }
            rc = mdb_get(txn, inst->dbi, &key, &cur);
            if (rc == MDB_NOTFOUND) {
                mdb_txn_abort(txn);
                txn = NULL;
                st = slmdb_conflict(inst, op, i, w.kind, "the row does not exist");
                goto out;
            }
            if (rc != MDB_SUCCESS) break;
            if (cur.mv_size != w.expected.len ||
                (cur.mv_size > 0 && memcmp(cur.mv_data, w.expected.data, cur.mv_size) != 0)) {
                mdb_txn_abort(txn);
                txn = NULL;
                st = slmdb_conflict(inst, op, i, w.kind, "the row holds another value");
                goto out;
            }
            rc = mdb_put(txn, inst->dbi, &key, &val, 0);
            break;

        case PARLEY_WRITE_COUNTER_ADD: {
            int64_t old_value = 0, new_value;
            unsigned char encoded[8];
            if (!PARLEY_HAS_FIELD(&w, parley_write, delta)) {
                st = slmdb_fail(inst, op, PARLEY_E_INVALID, SLMDB_NAME ": apply: write %zu (%s): struct_size lacks delta",
                                i, kind_name);
                goto abort;
            }
            rc = mdb_get(txn, inst->dbi, &key, &cur);
            if (rc == MDB_SUCCESS) {
                if (cur.mv_size != 8) {
                    st = slmdb_fail(inst, op, PARLEY_E_INVALID,
                                    SLMDB_NAME ": apply: write %zu (%s): the row holds %zu bytes, not an 8-byte counter; "
                                               "nothing was applied",
                                    i, kind_name, cur.mv_size);
                    goto abort;
                }
                old_value = slmdb_load_i64_le((const unsigned char *)cur.mv_data);
            } else if (rc != MDB_NOTFOUND) {
                break;
            }
            if ((w.delta > 0 && old_value > INT64_MAX - w.delta) || (w.delta < 0 && old_value < INT64_MIN - w.delta)) {
                st = slmdb_fail(inst, op, PARLEY_E_INVALID,
                                SLMDB_NAME ": apply: write %zu (%s): adding %lld to %lld overflows a signed 64-bit "
                                           "counter; nothing was applied",
                                i, kind_name, (long long)w.delta, (long long)old_value);
                goto abort;
            }
            new_value = old_value + w.delta;
            slmdb_store_i64_le(encoded, new_value);
            val.mv_data = encoded;
            val.mv_size = sizeof encoded;
            rc = mdb_put(txn, inst->dbi, &key, &val, 0);
            if (rc == MDB_SUCCESS) {
                if (counters == NULL) {
                    counters = (slmdb_counter_result *)malloc(count * sizeof *counters);
                    if (counters == NULL) {
                        st = slmdb_fail(inst, op, PARLEY_E_NOMEM, SLMDB_NAME ": apply: out of memory");
                        goto abort;
                    }
                }
                counters[counter_count].index = i;
                counters[counter_count].value = (uint64_t)new_value;
                counter_count++;
            }
            break;
        }

        default:
            st = slmdb_fail(inst, op, PARLEY_E_UNSUPPORTED, SLMDB_NAME ": apply: write %zu has unknown kind %d", i,
                            (int)w.kind);
            goto abort;
        }

        if (rc != MDB_SUCCESS) {
            char what[64];
            snprintf(what, sizeof what, "apply: write %zu (%s)", i, kind_name);
            mdb_txn_abort(txn);
            txn = NULL;
            st = slmdb_fail_mdb(inst, op, rc, what);
            goto out;
        }
    }

    started = slmdb_now_seconds();
    rc = mdb_txn_commit(txn); /* frees txn whatever the outcome */
    txn = NULL;
    if (rc != MDB_SUCCESS) {
        st = slmdb_fail_mdb(inst, op, rc, "apply: commit");
        goto out;
    }
    {
        double elapsed = slmdb_now_seconds() - started;
        slmdb_metric_observe(inst, inst->commit_seconds, elapsed > 0.0 ? elapsed : 0.0);
    }
    slmdb_metric_add(inst, inst->writes_total, (uint64_t)count);
    {
        parley_bytes empty = {NULL, 0};
        for (i = 0; i < counter_count; i++)
            inst->api->emit_item(op, counters[i].index, PARLEY_OK, counters[i].value, empty);
    }
    st = PARLEY_OK;
    goto out;

abort:
    if (txn != NULL) mdb_txn_abort(txn);
    txn = NULL;
out:
    free(counters);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Create / destroy                                                          */
/* ------------------------------------------------------------------------ */

static SLMDB_PRINTF(4, 5) parley_status slmdb_create_fail(char *error, size_t error_size, parley_status status,
                                                           const char *fmt, ...) {
    va_list ap;
    if (error != NULL && error_size > 0) {
        size_t len;
        va_start(ap, fmt);
        slmdb_vformat(error, error_size, &len, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* Parses a positive decimal integer that fits in size_t megabytes. */
static int slmdb_parse_map_size(const char *text, size_t *out) {
    unsigned long long v;
    char *end = NULL;
    const char *p = text;
    if (*p == '\0') return 0;
    for (; *p != '\0'; p++)
        if (*p < '0' || *p > '9') return 0;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0' || v == 0) return 0;
    if (v > (unsigned long long)(SIZE_MAX / (1024u * 1024u))) return 0;
    *out = (size_t)v;
    return 1;
}

/* Checks that the folder holding path exists and that path is not a folder;
 * *exists_out tells whether the database file exists already. */
static parley_status slmdb_check_path(const char *path, int *exists_out, char *error, size_t error_size) {
    struct stat sb;
    const char *slash = strrchr(path, '/');
    *exists_out = 0;
    if (slash != NULL && slash != path) {
        size_t dir_len = (size_t)(slash - path);
        char *dir = (char *)malloc(dir_len + 1);
        int r;
        if (dir == NULL) return slmdb_create_fail(error, error_size, PARLEY_E_NOMEM, SLMDB_NAME ": out of memory");
        memcpy(dir, path, dir_len);
        dir[dir_len] = '\0';
        r = stat(dir, &sb);
        if (r != 0 || !S_ISDIR(sb.st_mode)) {
            parley_status st = slmdb_create_fail(
                error, error_size, PARLEY_E_IO,
                SLMDB_NAME ": the folder '%s' for path '%s' does not exist (create it first): %s", dir, path,
                r != 0 ? strerror(errno) : "not a folder");
            free(dir);
            return st;
        }
        free(dir);
    }
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return slmdb_create_fail(error, error_size, PARLEY_E_INVALID,
                                     SLMDB_NAME ": path '%s' is a folder; set path to the database FILE, "
                                                "e.g. '%s/parley.lmdb'",
                                     path, path);
        *exists_out = 1;
    }
    return PARLEY_OK;
}

/* Makes the directory entries of a newly created database file durable. */
static int slmdb_sync_folder(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    size_t dir_len;
    int fd, r;
    if (slash == NULL) {
        dir_len = 1;
        path = ".";
    } else {
        dir_len = slash == path ? 1 : (size_t)(slash - path);
    }
    dir = (char *)malloc(dir_len + 1);
    if (dir == NULL) return ENOMEM;
    memcpy(dir, path, dir_len);
    dir[dir_len] = '\0';
#if defined(O_DIRECTORY)
    fd = open(dir, O_RDONLY | O_DIRECTORY);
#else
    fd = open(dir, O_RDONLY);
#endif
    free(dir);
    if (fd < 0) return errno;
    r = fsync(fd) == 0 ? 0 : errno;
    (void)close(fd);
    return r;
}

static void slmdb_destroy(void *instance) {
    slmdb_instance *inst = (slmdb_instance *)instance;
    if (inst == NULL) return;
    /* Committed transactions are already on disk; closing releases the map and locks. */
    if (inst->env != NULL) mdb_env_close(inst->env);
    free(inst);
}

/* Opens the main database and checks (or, for a new file, writes) the format marker. */
static parley_status slmdb_open_db(slmdb_instance *inst, const char *path, char *error, size_t error_size) {
    MDB_txn *txn = NULL;
    MDB_val key, val;
    MDB_stat ms;
    int rc;

    rc = mdb_txn_begin(inst->env, NULL, 0, &txn);
    if (rc != MDB_SUCCESS)
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": '%s': begin transaction: %s", path,
                                 mdb_strerror(rc));
    rc = mdb_dbi_open(txn, NULL, 0, &inst->dbi);
    if (rc != MDB_SUCCESS) {
        mdb_txn_abort(txn);
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": '%s': open database: %s", path,
                                 mdb_strerror(rc));
    }
    key.mv_data = (void *)slmdb_format_key;
    key.mv_size = sizeof slmdb_format_key;
    rc = mdb_get(txn, inst->dbi, &key, &val);
    if (rc == MDB_SUCCESS) {
        if (val.mv_size != sizeof slmdb_format_value - 1 ||
            memcmp(val.mv_data, slmdb_format_value, val.mv_size) != 0) {
            mdb_txn_abort(txn);
            return slmdb_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                     SLMDB_NAME ": '%s' has a data format this plugin does not know", path);
        }
        mdb_txn_abort(txn);
        return PARLEY_OK;
    }
    if (rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": '%s': read format marker: %s", path,
                                 mdb_strerror(rc));
    }
    rc = mdb_stat(txn, inst->dbi, &ms);
    if (rc != MDB_SUCCESS) {
        mdb_txn_abort(txn);
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": '%s': stat database: %s", path,
                                 mdb_strerror(rc));
    }
    if (ms.ms_entries != 0) {
        mdb_txn_abort(txn);
        return slmdb_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                 SLMDB_NAME ": '%s' is an LMDB database that was not written by this plugin", path);
    }
    val.mv_data = (void *)slmdb_format_value;
    val.mv_size = sizeof slmdb_format_value - 1;
    rc = mdb_put(txn, inst->dbi, &key, &val, 0);
    if (rc != MDB_SUCCESS) {
        mdb_txn_abort(txn);
        return slmdb_create_fail(error, error_size, rc == MDB_MAP_FULL ? PARLEY_E_TOO_LARGE : PARLEY_E_IO,
                                 SLMDB_NAME ": '%s': write format marker: %s", path, mdb_strerror(rc));
    }
    rc = mdb_txn_commit(txn);
    if (rc != MDB_SUCCESS)
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": '%s': commit format marker: %s", path,
                                 mdb_strerror(rc));
    return PARLEY_OK;
}

static parley_status slmdb_create(const parley_host_api *api, parley_host *host, void **instance_out, char *error,
                                  size_t error_size) {
    slmdb_instance *inst;
    const char *path, *map_text;
    size_t map_size_mb = (size_t)SLMDB_DEFAULT_MAP_SIZE_MB;
    MDB_envinfo info;
    parley_status st;
    int rc, dead = 0, existed = 0;

    if (error != NULL && error_size > 0) error[0] = '\0';
    if (instance_out == NULL)
        return slmdb_create_fail(error, error_size, PARLEY_E_INVALID, SLMDB_NAME ": instance_out is NULL");
    *instance_out = NULL;
    if (api == NULL) return slmdb_create_fail(error, error_size, PARLEY_E_INVALID, SLMDB_NAME ": host api is NULL");
    if (api->abi_major != PARLEY_ABI_MAJOR
#if PARLEY_ABI_MINOR > 0
        || api->abi_minor < PARLEY_ABI_MINOR
#endif
    )
        return slmdb_create_fail(error, error_size, PARLEY_E_UNSUPPORTED,
                                 SLMDB_NAME ": built for plugin ABI %d.%d, the host offers %u.%u", PARLEY_ABI_MAJOR,
                                 PARLEY_ABI_MINOR, (unsigned)api->abi_major, (unsigned)api->abi_minor);
    if (!PARLEY_HAS_FIELD(api, parley_host_api, emit_item) || api->config_get == NULL || api->set_error == NULL ||
        api->emit_row == NULL || api->emit_item == NULL)
        return slmdb_create_fail(error, error_size, PARLEY_E_UNSUPPORTED,
                                 SLMDB_NAME ": the host api lacks config_get, set_error, emit_row or emit_item");

    /* Configuration. */
    path = api->config_get(host, "path");
    if (path == NULL || path[0] == '\0')
        return slmdb_create_fail(error, error_size, PARLEY_E_INVALID,
                                 SLMDB_NAME ": configuration key 'path' is required: the database file, "
                                            "e.g. /var/lib/parley/parley.lmdb");
    map_text = api->config_get(host, "map_size_mb");
    if (map_text != NULL && !slmdb_parse_map_size(map_text, &map_size_mb))
        return slmdb_create_fail(error, error_size, PARLEY_E_INVALID,
                                 SLMDB_NAME ": configuration key 'map_size_mb' must be a positive integer "
                                            "(megabytes), got '%s'",
                                 map_text);
    if ((st = slmdb_check_path(path, &existed, error, error_size)) != PARLEY_OK) return st;

    inst = (slmdb_instance *)calloc(1, sizeof *inst);
    if (inst == NULL) return slmdb_create_fail(error, error_size, PARLEY_E_NOMEM, SLMDB_NAME ": out of memory");
    inst->api = api;
    inst->host = host;
    inst->map_size_mb = map_size_mb;
    inst->log = api->log;
    inst->metric_add = api->metric_add;
    inst->metric_observe = api->metric_observe;

    /* The environment. */
    rc = mdb_env_create(&inst->env);
    if (rc != MDB_SUCCESS) {
        inst->env = NULL;
        slmdb_destroy(inst);
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": mdb_env_create: %s", mdb_strerror(rc));
    }
    if ((size_t)mdb_env_get_maxkeysize(inst->env) < SLMDB_MAX_KEY_BYTES) {
        int max = mdb_env_get_maxkeysize(inst->env);
        slmdb_destroy(inst);
        return slmdb_create_fail(error, error_size, PARLEY_E_UNSUPPORTED,
                                 SLMDB_NAME ": this LMDB build allows %d-byte keys; %u are needed", max,
                                 (unsigned)SLMDB_MAX_KEY_BYTES);
    }
    rc = mdb_env_set_mapsize(inst->env, map_size_mb * 1024u * 1024u);
    if (rc != MDB_SUCCESS) {
        slmdb_destroy(inst);
        return slmdb_create_fail(error, error_size, PARLEY_E_INVALID,
                                 SLMDB_NAME ": configuration key 'map_size_mb' value %zu rejected by LMDB: %s",
                                 map_size_mb, mdb_strerror(rc));
    }
    rc = mdb_env_set_maxreaders(inst->env, SLMDB_MAX_READERS);
    if (rc != MDB_SUCCESS) {
        slmdb_destroy(inst);
        return slmdb_create_fail(error, error_size, PARLEY_E_IO, SLMDB_NAME ": mdb_env_set_maxreaders: %s",
                                 mdb_strerror(rc));
    }
    rc = mdb_env_open(inst->env, path, MDB_NOSUBDIR | MDB_NOTLS, 0600);
    if (rc != MDB_SUCCESS) {
        slmdb_destroy(inst); /* mdb_env_close is required after a failed open */
        return slmdb_create_fail(error, error_size,
                                 (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
                                     ? PARLEY_E_CORRUPT
                                     : PARLEY_E_IO,
                                 SLMDB_NAME ": cannot open database file '%s': %s", path, mdb_strerror(rc));
    }
    /* Free reader slots left behind by processes that died. */
    (void)mdb_reader_check(inst->env, &dead);

    if ((st = slmdb_open_db(inst, path, error, error_size)) != PARLEY_OK) {
        slmdb_destroy(inst);
        return st;
    }
    if (!existed && (rc = slmdb_sync_folder(path)) != 0) {
        slmdb_destroy(inst);
        return slmdb_create_fail(error, error_size, PARLEY_E_IO,
                                 SLMDB_NAME ": cannot sync the folder of new database file '%s': %s", path,
                                 strerror(rc));
    }

    /* Metrics (a NULL handle means the host refused it; updates are skipped). */
    if (api->metric_register != NULL) {
        inst->reads_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "reads_total",
                                                 "Storage read operations (get and scan calls)");
        inst->writes_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "writes_total",
                                                  "Storage writes committed (elements of applied batches)");
        inst->batches_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "batches_total",
                                                   "Storage write batches (apply calls)");
        inst->errors_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "errors_total",
                                                  "Storage calls that failed, conflicts included");
        inst->commit_seconds = api->metric_register(host, PARLEY_METRIC_HISTOGRAM, "commit_seconds",
                                                    "Seconds spent committing one write batch durably");
    }

    memset(&info, 0, sizeof info);
    if (mdb_env_info(inst->env, &info) != MDB_SUCCESS) info.me_mapsize = map_size_mb * 1024u * 1024u;
    {
        int major = 0, minor = 0, patch = 0;
        (void)mdb_version(&major, &minor, &patch);
        slmdb_log(inst, PARLEY_LOG_INFO,
                  SLMDB_NAME ": opened %s database '%s' (map size %zu MiB, map_size_mb = %zu, LMDB %d.%d.%d%s)",
                  existed ? "existing" : "new", path, info.me_mapsize / (1024u * 1024u), map_size_mb, major, minor,
                  patch, dead > 0 ? ", cleared stale reader slots" : "");
    }

    *instance_out = inst;
    return PARLEY_OK;
}

/* ------------------------------------------------------------------------ */
/* Descriptor                                                                */
/* ------------------------------------------------------------------------ */

static const parley_storage_vtable slmdb_storage_vtable = {
    sizeof(parley_storage_vtable),
    slmdb_get,
    slmdb_scan,
    slmdb_apply,
};

static const parley_plugin_descriptor slmdb_descriptor = {
    PARLEY_PLUGIN_MAGIC,
    PARLEY_ABI_MAJOR,
    PARLEY_ABI_MINOR,
    sizeof(parley_plugin_descriptor),
    PARLEY_KIND_STORAGE,
    SLMDB_NAME,
    "1.0.0",
    "Durable ordered key-value storage in one LMDB file (memory-mapped B+tree, single writer, lock-free readers)",
    NULL,
    slmdb_create,
    slmdb_destroy,
    &slmdb_storage_vtable,
    NULL,
    NULL,
    NULL,
};

PARLEY_PLUGIN_ENTRY(slmdb_descriptor)
