/*
 * memory_storage.c — an in-memory storage plugin built ONLY against the frozen
 * ABI v1.0 header in this directory (-I Fixtures/abi-v1.0). The ABI stability
 * test compiles it at test time and runs the full storage conformance suite
 * against it: a v1.0 plugin must keep working in every later v1.x host.
 *
 * Design:
 *   - Rows live in one sorted array ordered by (table, partition, sort key),
 *     each component compared as unsigned bytes with a shorter prefix first.
 *     Lookups and scan bounds use binary search. A rwlock guards the array.
 *   - get and scan finish synchronously under the read lock.
 *   - apply validates its arguments synchronously, then queues the batch and
 *     returns PARLEY_PENDING. One worker thread (started in create, joined in
 *     destroy) takes every queued batch, applies them one after the other under
 *     a single write-lock acquisition (a small group commit), emits their items
 *     and calls api->complete() exactly once per batch.
 *   - A batch is first staged (conditions checked, new values and key blocks
 *     allocated, array capacity reserved) without touching the rows; only when
 *     every write succeeded is it committed, by steps that cannot fail. So a
 *     batch is all-or-nothing, including on allocation failure.
 *   - All row memory comes from api->alloc / api->free.
 *
 * C11, -Wall -Wextra -Werror -pedantic -fvisibility=hidden; everything is
 * static except parley_plugin_entry.
 */
#define _POSIX_C_SOURCE 200809L

#include <parley/plugin.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define PLUGIN_NAME "storage-memory-v1-0"

/* ------------------------------------------------------------------------ */
/* Instance state                                                            */
/* ------------------------------------------------------------------------ */

typedef struct row {
    /* table | partition | sort, concatenated; owned (api->alloc). */
    uint8_t *key;
    uint32_t table_len;
    uint32_t partition_len;
    uint32_t sort_len;
    /* Owned (api->alloc); NULL when value_len is 0. */
    uint8_t *value;
    size_t value_len;
} row;

typedef struct job {
    struct job *next;
    parley_op *op;
    /* Borrowed: the host keeps them alive until complete(). */
    const parley_write *writes;
    size_t count;
    size_t write_size;
    parley_status status; /* set by the worker before complete() */
} job;

typedef struct memory_storage {
    const parley_host_api *api;
    parley_host *host;
    parley_metric *writes_total;

    pthread_rwlock_t lock;
    row *rows;
    size_t row_count;
    size_t row_capacity;

    pthread_mutex_t queue_lock;
    pthread_cond_t queue_cond;
    job *queue_head;
    job *queue_tail;
    int stopping;
    pthread_t worker;
} memory_storage;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* memcmp order with a shorter prefix first; safe for NULL data when len is 0. */
static int compare_bytes(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
    size_t n = a_len < b_len ? a_len : b_len;
    if (n > 0) {
        int c = memcmp(a, b, n);
        if (c != 0) return c < 0 ? -1 : 1;
    }
    if (a_len == b_len) return 0;
    return a_len < b_len ? -1 : 1;
}

static int bytes_equal(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
    return compare_bytes(a, a_len, b, b_len) == 0;
}

static void copy_bytes(uint8_t *dst, const uint8_t *src, size_t len) {
    if (len > 0) memcpy(dst, src, len);
}

#if defined(__GNUC__) || defined(__clang__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

static void op_error(const memory_storage *ms, parley_op *op, const char *format, ...) PRINTF_LIKE(3, 4);
static void log_info(const memory_storage *ms, const char *format, ...) PRINTF_LIKE(2, 3);

static void op_error(const memory_storage *ms, parley_op *op, const char *format, ...) {
    char message[256];
    va_list args;
    int n;
    va_start(args, format);
    n = vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (n < 0) return;
    if ((size_t)n >= sizeof message) n = (int)(sizeof message - 1);
    ms->api->set_error(op, message, (size_t)n);
}

static void log_info(const memory_storage *ms, const char *format, ...) {
    char message[512];
    va_list args;
    int n;
    if (ms->api->log == NULL) return;
    va_start(args, format);
    n = vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (n < 0) return;
    if ((size_t)n >= sizeof message) n = (int)(sizeof message - 1);
    ms->api->log(ms->host, PARLEY_LOG_INFO, message, (size_t)n);
}

static const parley_bytes empty_bytes = {NULL, 0};

/* ------------------------------------------------------------------------ */
/* The sorted row array                                                      */
/* ------------------------------------------------------------------------ */

/* How a probe's sort key compares: an exact key, or below / above every key of
 * the partition. */
enum { PROBE_EXACT = 0, PROBE_MIN = -1, PROBE_MAX = 1 };

typedef struct probe {
    parley_bytes table;
    parley_bytes partition;
    parley_bytes sort;
    int sort_kind;
} probe;

static int compare_row_probe(const row *r, const probe *p) {
    const uint8_t *t = r->key;
    const uint8_t *pk = r->key + r->table_len;
    const uint8_t *s = pk + r->partition_len;
    int c = compare_bytes(t, r->table_len, p->table.data, p->table.len);
    if (c != 0) return c;
    c = compare_bytes(pk, r->partition_len, p->partition.data, p->partition.len);
    if (c != 0) return c;
    if (p->sort_kind == PROBE_MIN) return 1;
    if (p->sort_kind == PROBE_MAX) return -1;
    return compare_bytes(s, r->sort_len, p->sort.data, p->sort.len);
}

/* The first index whose row is > probe (strict) or >= probe (not strict). */
static size_t first_index(const memory_storage *ms, const probe *p, int strict) {
    size_t lo = 0, hi = ms->row_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = compare_row_probe(&ms->rows[mid], p);
        if (strict ? c > 0 : c >= 0) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    return lo;
}

/* Index of the row with exactly this key, or SIZE_MAX; *insert_at gets the
 * position where it would go. */
static size_t find_row(const memory_storage *ms, parley_bytes table, parley_bytes partition,
                       parley_bytes sort, size_t *insert_at) {
    probe p;
    size_t i;
    p.table = table;
    p.partition = partition;
    p.sort = sort;
    p.sort_kind = PROBE_EXACT;
    i = first_index(ms, &p, 0);
    if (insert_at != NULL) *insert_at = i;
    if (i < ms->row_count && compare_row_probe(&ms->rows[i], &p) == 0) return i;
    return SIZE_MAX;
}

static parley_bytes row_sort(const row *r) {
    parley_bytes b;
    b.data = r->key + r->table_len + r->partition_len;
    b.len = r->sort_len;
    return b;
}

static parley_bytes row_value(const row *r) {
    parley_bytes b;
    b.data = r->value;
    b.len = r->value_len;
    return b;
}

/* ------------------------------------------------------------------------ */
/* Validation                                                                */
/* ------------------------------------------------------------------------ */

static parley_status check_key(const memory_storage *ms, parley_op *op, parley_bytes table,
                               parley_bytes partition, parley_bytes sort, const char *where) {
    if ((table.len > 0 && table.data == NULL) || (partition.len > 0 && partition.data == NULL) ||
        (sort.len > 0 && sort.data == NULL)) {
        op_error(ms, op, "%s: NULL key data with a non-zero length", where);
        return PARLEY_E_INVALID;
    }
    if (table.len > (size_t)PARLEY_STORAGE_MAX_TABLE_BYTES) {
        op_error(ms, op, "%s: table name is %zu bytes, the limit is %d", where, table.len,
                 (int)PARLEY_STORAGE_MAX_TABLE_BYTES);
        return PARLEY_E_TOO_LARGE;
    }
    if (partition.len > (size_t)PARLEY_STORAGE_MAX_PARTITION_BYTES) {
        op_error(ms, op, "%s: partition key is %zu bytes, the limit is %d", where, partition.len,
                 (int)PARLEY_STORAGE_MAX_PARTITION_BYTES);
        return PARLEY_E_TOO_LARGE;
    }
    if (sort.len > (size_t)PARLEY_STORAGE_MAX_SORT_BYTES) {
        op_error(ms, op, "%s: sort key is %zu bytes, the limit is %d", where, sort.len,
                 (int)PARLEY_STORAGE_MAX_SORT_BYTES);
        return PARLEY_E_TOO_LARGE;
    }
    return PARLEY_OK;
}

static parley_status check_value(const memory_storage *ms, parley_op *op, parley_bytes value,
                                 const char *what, size_t index) {
    if (value.len > 0 && value.data == NULL) {
        op_error(ms, op, "write %zu: NULL %s data with a non-zero length", index, what);
        return PARLEY_E_INVALID;
    }
    if (value.len > (size_t)PARLEY_STORAGE_MAX_VALUE_BYTES) {
        op_error(ms, op, "write %zu: %s is %zu bytes, the limit is %u", index, what, value.len,
                 (unsigned)PARLEY_STORAGE_MAX_VALUE_BYTES);
        return PARLEY_E_TOO_LARGE;
    }
    return PARLEY_OK;
}

/* ------------------------------------------------------------------------ */
/* Reads (synchronous)                                                       */
/* ------------------------------------------------------------------------ */

static parley_status ms_get(void *instance, parley_op *op, parley_bytes table, parley_bytes partition,
                            parley_bytes sort) {
    memory_storage *ms = instance;
    parley_status st = check_key(ms, op, table, partition, sort, "get");
    size_t i;
    if (st != PARLEY_OK) return st;

    pthread_rwlock_rdlock(&ms->lock);
    i = find_row(ms, table, partition, sort, NULL);
    if (i != SIZE_MAX) {
        (void)ms->api->emit_row(op, row_sort(&ms->rows[i]), row_value(&ms->rows[i]));
    }
    pthread_rwlock_unlock(&ms->lock);
    return PARLEY_OK;
}

static int valid_bound_kind(parley_bound_kind kind) {
    return kind == PARLEY_BOUND_NONE || kind == PARLEY_BOUND_INCLUSIVE || kind == PARLEY_BOUND_EXCLUSIVE;
}

static parley_status ms_scan(void *instance, parley_op *op, const parley_scan_request *request) {
    memory_storage *ms = instance;
    probe p;
    size_t lo, hi, emitted = 0;
    uint32_t limit;
    int reverse;
    parley_status st;

    if (request == NULL || !PARLEY_HAS_FIELD(request, parley_scan_request, limit)) {
        op_error(ms, op, "scan: request is NULL or its struct_size is too small");
        return PARLEY_E_INVALID;
    }
    if ((request->flags & ~(uint32_t)PARLEY_SCAN_REVERSE) != 0) {
        op_error(ms, op, "scan: unknown flags 0x%x", (unsigned)(request->flags & ~(uint32_t)PARLEY_SCAN_REVERSE));
        return PARLEY_E_UNSUPPORTED;
    }
    if (!valid_bound_kind(request->lower_kind) || !valid_bound_kind(request->upper_kind)) {
        op_error(ms, op, "scan: unknown bound kind");
        return PARLEY_E_INVALID;
    }
    st = check_key(ms, op, request->table, request->partition,
                   request->lower_kind == PARLEY_BOUND_NONE ? empty_bytes : request->lower, "scan (lower bound)");
    if (st != PARLEY_OK) return st;
    st = check_key(ms, op, request->table, request->partition,
                   request->upper_kind == PARLEY_BOUND_NONE ? empty_bytes : request->upper, "scan (upper bound)");
    if (st != PARLEY_OK) return st;

    reverse = (request->flags & PARLEY_SCAN_REVERSE) != 0;
    limit = request->limit;
    p.table = request->table;
    p.partition = request->partition;

    pthread_rwlock_rdlock(&ms->lock);

    /* lo: the first row inside the lower bound. */
    switch (request->lower_kind) {
    case PARLEY_BOUND_INCLUSIVE:
        p.sort = request->lower;
        p.sort_kind = PROBE_EXACT;
        lo = first_index(ms, &p, 0);
        break;
    case PARLEY_BOUND_EXCLUSIVE:
        p.sort = request->lower;
        p.sort_kind = PROBE_EXACT;
        lo = first_index(ms, &p, 1);
        break;
    default:
        p.sort = empty_bytes;
        p.sort_kind = PROBE_MIN;
        lo = first_index(ms, &p, 0);
        break;
    }
    /* hi: one past the last row inside the upper bound. */
    switch (request->upper_kind) {
    case PARLEY_BOUND_INCLUSIVE:
        p.sort = request->upper;
        p.sort_kind = PROBE_EXACT;
        hi = first_index(ms, &p, 1);
        break;
    case PARLEY_BOUND_EXCLUSIVE:
        p.sort = request->upper;
        p.sort_kind = PROBE_EXACT;
        hi = first_index(ms, &p, 0);
        break;
    default:
        p.sort = empty_bytes;
        p.sort_kind = PROBE_MAX;
        hi = first_index(ms, &p, 0);
        break;
    }

    while (lo < hi && (limit == 0 || emitted < limit)) {
        const row *r = reverse ? &ms->rows[--hi] : &ms->rows[lo++];
        emitted++;
        if (ms->api->emit_row(op, row_sort(r), row_value(r)) != 0) break;
    }

    pthread_rwlock_unlock(&ms->lock);
    return PARLEY_OK;
}

/* ------------------------------------------------------------------------ */
/* Writes: staging and commit (worker thread, under the write lock)          */
/* ------------------------------------------------------------------------ */

/* The state a batch gives one key, before it is committed. */
typedef struct stage {
    parley_bytes table;     /* borrowed from the batch */
    parley_bytes partition; /* borrowed from the batch */
    parley_bytes sort;      /* borrowed from the batch */
    int exists;
    uint8_t *value; /* owned until committed; NULL when value_len is 0 */
    size_t value_len;
    uint8_t *new_key; /* preallocated key block when the row is not stored yet */
} stage;

typedef struct batch {
    stage *stages;
    size_t stage_count;
    int64_t *counters; /* per write index: the value after a COUNTER_ADD */
} batch;

static const parley_write *write_at(const job *j, size_t i) {
    return (const parley_write *)(const void *)((const uint8_t *)j->writes + i * j->write_size);
}

static void batch_free(const memory_storage *ms, batch *b) {
    size_t i;
    for (i = 0; i < b->stage_count; i++) {
        ms->api->free(b->stages[i].value);
        ms->api->free(b->stages[i].new_key);
    }
    ms->api->free(b->stages);
    ms->api->free(b->counters);
    b->stages = NULL;
    b->counters = NULL;
    b->stage_count = 0;
}

/* The stage for the write's key, created from the stored row when new. */
static stage *stage_for(memory_storage *ms, batch *b, const parley_write *w) {
    size_t i;
    stage *s;
    for (i = b->stage_count; i > 0; i--) {
        s = &b->stages[i - 1];
        if (bytes_equal(s->table.data, s->table.len, w->table.data, w->table.len) &&
            bytes_equal(s->partition.data, s->partition.len, w->partition.data, w->partition.len) &&
            bytes_equal(s->sort.data, s->sort.len, w->sort.data, w->sort.len)) {
            return s;
        }
    }
    s = &b->stages[b->stage_count];
    memset(s, 0, sizeof *s);
    s->table = w->table;
    s->partition = w->partition;
    s->sort = w->sort;
    i = find_row(ms, w->table, w->partition, w->sort, NULL);
    if (i != SIZE_MAX) {
        const row *r = &ms->rows[i];
        s->exists = 1;
        if (r->value_len > 0) {
            s->value = ms->api->alloc(r->value_len);
            if (s->value == NULL) return NULL;
            copy_bytes(s->value, r->value, r->value_len);
        }
        s->value_len = r->value_len;
    } else {
        size_t key_len = w->table.len + w->partition.len + w->sort.len;
        s->new_key = ms->api->alloc(key_len > 0 ? key_len : 1);
        if (s->new_key == NULL) return NULL;
        copy_bytes(s->new_key, w->table.data, w->table.len);
        copy_bytes(s->new_key + w->table.len, w->partition.data, w->partition.len);
        copy_bytes(s->new_key + w->table.len + w->partition.len, w->sort.data, w->sort.len);
    }
    b->stage_count++;
    return s;
}

/* Replaces the staged value with a copy of data. */
static int stage_set(memory_storage *ms, stage *s, const uint8_t *data, size_t len) {
    uint8_t *copy = NULL;
    if (len > 0) {
        copy = ms->api->alloc(len);
        if (copy == NULL) return 0;
        copy_bytes(copy, data, len);
    }
    ms->api->free(s->value);
    s->value = copy;
    s->value_len = len;
    s->exists = 1;
    return 1;
}

static void stage_delete(memory_storage *ms, stage *s) {
    ms->api->free(s->value);
    s->value = NULL;
    s->value_len = 0;
    s->exists = 0;
}

static int64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return (int64_t)v;
}

static void write_le64(uint8_t *p, int64_t value) {
    uint64_t v = (uint64_t)value;
    int i;
    for (i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v & 0xffu);
        v >>= 8;
    }
}

/* Grows the row array so that `extra` more rows fit without allocating. */
static int reserve_rows(memory_storage *ms, size_t extra) {
    size_t needed = ms->row_count + extra;
    size_t capacity;
    row *grown;
    if (needed <= ms->row_capacity) return 1;
    capacity = ms->row_capacity < 16 ? 16 : ms->row_capacity;
    while (capacity < needed) capacity *= 2;
    grown = ms->api->alloc(capacity * sizeof *grown);
    if (grown == NULL) return 0;
    if (ms->row_count > 0) memcpy(grown, ms->rows, ms->row_count * sizeof *grown);
    ms->api->free(ms->rows);
    ms->rows = grown;
    ms->row_capacity = capacity;
    return 1;
}

/* Moves every stage into the row array. Cannot fail: memory was prepared. */
static void commit(memory_storage *ms, batch *b) {
    size_t k;
    for (k = 0; k < b->stage_count; k++) {
        stage *s = &b->stages[k];
        size_t at;
        size_t i = find_row(ms, s->table, s->partition, s->sort, &at);
        if (s->exists) {
            row *r;
            if (i != SIZE_MAX) {
                r = &ms->rows[i];
                ms->api->free(r->value);
            } else {
                memmove(&ms->rows[at + 1], &ms->rows[at], (ms->row_count - at) * sizeof(row));
                ms->row_count++;
                r = &ms->rows[at];
                r->key = s->new_key;
                s->new_key = NULL;
                r->table_len = (uint32_t)s->table.len;
                r->partition_len = (uint32_t)s->partition.len;
                r->sort_len = (uint32_t)s->sort.len;
            }
            r->value = s->value;
            r->value_len = s->value_len;
            s->value = NULL;
            s->value_len = 0;
        } else if (i != SIZE_MAX) {
            ms->api->free(ms->rows[i].key);
            ms->api->free(ms->rows[i].value);
            memmove(&ms->rows[i], &ms->rows[i + 1], (ms->row_count - i - 1) * sizeof(row));
            ms->row_count--;
        }
    }
}

/* Applies one batch atomically; the caller holds the write lock. Emits the
 * batch's items and error; returns the status to complete with. */
static parley_status apply_batch(memory_storage *ms, const job *j) {
    batch b;
    size_t i;
    parley_status st = PARLEY_OK;

    memset(&b, 0, sizeof b);
    if (j->count == 0) return PARLEY_OK;
    b.stages = ms->api->alloc(j->count * sizeof *b.stages);
    b.counters = ms->api->alloc(j->count * sizeof *b.counters);
    if (b.stages == NULL || b.counters == NULL) {
        batch_free(ms, &b);
        op_error(ms, j->op, "apply: out of memory");
        return PARLEY_E_NOMEM;
    }

    for (i = 0; i < j->count && st == PARLEY_OK; i++) {
        const parley_write *w = write_at(j, i);
        stage *s = stage_for(ms, &b, w);
        if (s == NULL) {
            op_error(ms, j->op, "apply: out of memory");
            st = PARLEY_E_NOMEM;
            break;
        }
        switch (w->kind) {
        case PARLEY_WRITE_PUT:
            if (!stage_set(ms, s, w->value.data, w->value.len)) st = PARLEY_E_NOMEM;
            break;
        case PARLEY_WRITE_DELETE:
            stage_delete(ms, s);
            break;
        case PARLEY_WRITE_PUT_IF_ABSENT:
            if (s->exists) {
                ms->api->emit_item(j->op, i, PARLEY_E_CONFLICT, 0, empty_bytes);
                op_error(ms, j->op, "apply: write %zu (put-if-absent) found an existing row", i);
                st = PARLEY_E_CONFLICT;
            } else if (!stage_set(ms, s, w->value.data, w->value.len)) {
                st = PARLEY_E_NOMEM;
            }
            break;
        case PARLEY_WRITE_COMPARE_AND_SET:
            if (!s->exists || !bytes_equal(s->value, s->value_len, w->expected.data, w->expected.len)) {
                ms->api->emit_item(j->op, i, PARLEY_E_CONFLICT, 0, empty_bytes);
                op_error(ms, j->op, "apply: write %zu (compare-and-set) found %s", i,
                         s->exists ? "a different value" : "no row");
                st = PARLEY_E_CONFLICT;
            } else if (!stage_set(ms, s, w->value.data, w->value.len)) {
                st = PARLEY_E_NOMEM;
            }
            break;
        case PARLEY_WRITE_COUNTER_ADD: {
            uint8_t encoded[8];
            int64_t current = 0;
            if (s->exists) {
                if (s->value_len != 8) {
                    op_error(ms, j->op, "apply: write %zu (counter-add) found a %zu-byte value, not 8 bytes", i,
                             s->value_len);
                    st = PARLEY_E_INVALID;
                    break;
                }
                current = read_le64(s->value);
            }
            if ((w->delta > 0 && current > INT64_MAX - w->delta) ||
                (w->delta < 0 && current < INT64_MIN - w->delta)) {
                op_error(ms, j->op, "apply: write %zu (counter-add) overflows int64", i);
                st = PARLEY_E_INVALID;
                break;
            }
            b.counters[i] = current + w->delta;
            write_le64(encoded, b.counters[i]);
            if (!stage_set(ms, s, encoded, sizeof encoded)) st = PARLEY_E_NOMEM;
            break;
        }
        default:
            /* apply() checked the kinds already. */
            op_error(ms, j->op, "apply: write %zu has unknown kind %d", i, (int)w->kind);
            st = PARLEY_E_INTERNAL;
            break;
        }
        if (st == PARLEY_E_NOMEM) op_error(ms, j->op, "apply: out of memory");
    }

    if (st == PARLEY_OK && !reserve_rows(ms, b.stage_count)) {
        op_error(ms, j->op, "apply: out of memory");
        st = PARLEY_E_NOMEM;
    }
    if (st == PARLEY_OK) {
        commit(ms, &b);
        for (i = 0; i < j->count; i++) {
            if (write_at(j, i)->kind == PARLEY_WRITE_COUNTER_ADD) {
                ms->api->emit_item(j->op, i, PARLEY_OK, (uint64_t)b.counters[i], empty_bytes);
            }
        }
        if (ms->writes_total != NULL && ms->api->metric_add != NULL) {
            ms->api->metric_add(ms->writes_total, (uint64_t)j->count);
        }
    }
    batch_free(ms, &b);
    return st;
}

/* ------------------------------------------------------------------------ */
/* The worker thread                                                         */
/* ------------------------------------------------------------------------ */

static void *worker_main(void *arg) {
    memory_storage *ms = arg;
    for (;;) {
        job *jobs;
        job *j;
        pthread_mutex_lock(&ms->queue_lock);
        while (ms->queue_head == NULL && !ms->stopping) pthread_cond_wait(&ms->queue_cond, &ms->queue_lock);
        jobs = ms->queue_head;
        ms->queue_head = NULL;
        ms->queue_tail = NULL;
        if (jobs == NULL && ms->stopping) {
            pthread_mutex_unlock(&ms->queue_lock);
            break;
        }
        pthread_mutex_unlock(&ms->queue_lock);

        /* Group commit: every queued batch under one write-lock acquisition; a
         * failed batch does not affect the others. */
        pthread_rwlock_wrlock(&ms->lock);
        for (j = jobs; j != NULL; j = j->next) {
            j->status = apply_batch(ms, j);
        }
        pthread_rwlock_unlock(&ms->lock);

        while (jobs != NULL) {
            j = jobs;
            jobs = j->next;
            ms->api->complete(j->op, j->status);
            ms->api->free(j);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* apply: validate, queue, return PARLEY_PENDING                             */
/* ------------------------------------------------------------------------ */

static parley_status ms_apply(void *instance, parley_op *op, const parley_write *writes, size_t count,
                              size_t write_size) {
    memory_storage *ms = instance;
    size_t i;
    job *j;

    if (count > (size_t)PARLEY_STORAGE_MAX_BATCH_WRITES) {
        op_error(ms, op, "apply: %zu writes, the limit is %d", count,
                 (int)PARLEY_STORAGE_MAX_BATCH_WRITES);
        return PARLEY_E_TOO_LARGE;
    }
    if (count > 0 && (writes == NULL || write_size < sizeof(parley_write))) {
        op_error(ms, op, "apply: writes is NULL or write_size %zu is below %zu", write_size, sizeof(parley_write));
        return PARLEY_E_INVALID;
    }
    for (i = 0; i < count; i++) {
        const parley_write *w = (const parley_write *)(const void *)((const uint8_t *)writes + i * write_size);
        char where[48];
        parley_status st;
        if (!PARLEY_HAS_FIELD(w, parley_write, delta)) {
            op_error(ms, op, "apply: write %zu has struct_size %u, below %zu", i, (unsigned)w->struct_size,
                     sizeof(parley_write));
            return PARLEY_E_INVALID;
        }
        if ((int)w->kind < (int)PARLEY_WRITE_PUT || (int)w->kind > (int)PARLEY_WRITE_COUNTER_ADD) {
            op_error(ms, op, "apply: write %zu has unknown kind %d", i, (int)w->kind);
            return PARLEY_E_UNSUPPORTED;
        }
        snprintf(where, sizeof where, "apply: write %zu", i);
        st = check_key(ms, op, w->table, w->partition, w->sort, where);
        if (st != PARLEY_OK) return st;
        if (w->kind == PARLEY_WRITE_PUT || w->kind == PARLEY_WRITE_PUT_IF_ABSENT ||
            w->kind == PARLEY_WRITE_COMPARE_AND_SET) {
            st = check_value(ms, op, w->value, "value", i);
            if (st != PARLEY_OK) return st;
        }
        if (w->kind == PARLEY_WRITE_COMPARE_AND_SET) {
            st = check_value(ms, op, w->expected, "expected value", i);
            if (st != PARLEY_OK) return st;
        }
    }

    j = ms->api->alloc(sizeof *j);
    if (j == NULL) {
        op_error(ms, op, "apply: out of memory");
        return PARLEY_E_NOMEM;
    }
    j->next = NULL;
    j->op = op;
    j->writes = writes;
    j->count = count;
    j->write_size = write_size;
    j->status = PARLEY_OK;

    pthread_mutex_lock(&ms->queue_lock);
    if (ms->queue_tail != NULL) {
        ms->queue_tail->next = j;
    } else {
        ms->queue_head = j;
    }
    ms->queue_tail = j;
    pthread_cond_signal(&ms->queue_cond);
    pthread_mutex_unlock(&ms->queue_lock);
    return PARLEY_PENDING;
}

/* ------------------------------------------------------------------------ */
/* create / destroy                                                          */
/* ------------------------------------------------------------------------ */

static void write_error(char *error, size_t error_size, const char *message) {
    if (error == NULL || error_size == 0) return;
    snprintf(error, error_size, "%s", message);
}

static parley_status ms_create(const parley_host_api *api, parley_host *host, void **instance_out, char *error,
                               size_t error_size) {
    memory_storage *ms;
    const char *greeting = NULL;
    char message[160];

    if (api == NULL || instance_out == NULL) {
        write_error(error, error_size, PLUGIN_NAME ": create called without a host api or instance_out");
        return PARLEY_E_INVALID;
    }
    if (api->abi_major != PARLEY_ABI_MAJOR) {
        snprintf(message, sizeof message,
                 PLUGIN_NAME ": built for plugin ABI major %d, but the host offers ABI %u.%u", PARLEY_ABI_MAJOR,
                 (unsigned)api->abi_major, (unsigned)api->abi_minor);
        write_error(error, error_size, message);
        return PARLEY_E_UNSUPPORTED;
    }
    if (!PARLEY_HAS_FIELD(api, parley_host_api, emit_blob_info) || api->alloc == NULL || api->free == NULL ||
        api->complete == NULL || api->set_error == NULL || api->emit_row == NULL || api->emit_item == NULL) {
        write_error(error, error_size, PLUGIN_NAME ": the host api table is incomplete for ABI 1.0");
        return PARLEY_E_UNSUPPORTED;
    }

    ms = api->alloc(sizeof *ms);
    if (ms == NULL) {
        write_error(error, error_size, PLUGIN_NAME ": out of memory");
        return PARLEY_E_NOMEM;
    }
    memset(ms, 0, sizeof *ms);
    ms->api = api;
    ms->host = host;

    if (pthread_rwlock_init(&ms->lock, NULL) != 0) {
        api->free(ms);
        write_error(error, error_size, PLUGIN_NAME ": cannot create the row lock");
        return PARLEY_E_INTERNAL;
    }
    if (pthread_mutex_init(&ms->queue_lock, NULL) != 0) {
        pthread_rwlock_destroy(&ms->lock);
        api->free(ms);
        write_error(error, error_size, PLUGIN_NAME ": cannot create the queue lock");
        return PARLEY_E_INTERNAL;
    }
    if (pthread_cond_init(&ms->queue_cond, NULL) != 0) {
        pthread_mutex_destroy(&ms->queue_lock);
        pthread_rwlock_destroy(&ms->lock);
        api->free(ms);
        write_error(error, error_size, PLUGIN_NAME ": cannot create the queue condition");
        return PARLEY_E_INTERNAL;
    }
    if (pthread_create(&ms->worker, NULL, worker_main, ms) != 0) {
        pthread_cond_destroy(&ms->queue_cond);
        pthread_mutex_destroy(&ms->queue_lock);
        pthread_rwlock_destroy(&ms->lock);
        api->free(ms);
        write_error(error, error_size, PLUGIN_NAME ": cannot start the worker thread");
        return PARLEY_E_INTERNAL;
    }

    if (api->metric_register != NULL) {
        ms->writes_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "writes_total",
                                                "Writes applied by committed batches.");
    }
    if (api->config_get != NULL) greeting = api->config_get(host, "greeting");
    log_info(ms, PLUGIN_NAME " 1.0.0 started (built against plugin ABI %d.%d, host %s ABI %u.%u)",
             PARLEY_ABI_MAJOR, PARLEY_ABI_MINOR, api->host_version != NULL ? api->host_version : "?",
             (unsigned)api->abi_major, (unsigned)api->abi_minor);
    if (greeting != NULL) log_info(ms, PLUGIN_NAME " greeting: %s", greeting);

    *instance_out = ms;
    return PARLEY_OK;
}

static void ms_destroy(void *instance) {
    memory_storage *ms = instance;
    size_t i;
    if (ms == NULL) return;

    pthread_mutex_lock(&ms->queue_lock);
    ms->stopping = 1;
    pthread_cond_signal(&ms->queue_cond);
    pthread_mutex_unlock(&ms->queue_lock);
    pthread_join(ms->worker, NULL);

    for (i = 0; i < ms->row_count; i++) {
        ms->api->free(ms->rows[i].key);
        ms->api->free(ms->rows[i].value);
    }
    ms->api->free(ms->rows);
    pthread_cond_destroy(&ms->queue_cond);
    pthread_mutex_destroy(&ms->queue_lock);
    pthread_rwlock_destroy(&ms->lock);
    ms->api->free(ms);
}

/* ------------------------------------------------------------------------ */
/* Tables and the entry point                                                */
/* ------------------------------------------------------------------------ */

static const parley_storage_vtable memory_storage_vtable = {
    sizeof(parley_storage_vtable),
    ms_get,
    ms_scan,
    ms_apply,
};

static const parley_plugin_descriptor memory_storage_descriptor = {
    PARLEY_PLUGIN_MAGIC,
    PARLEY_ABI_MAJOR,
    PARLEY_ABI_MINOR,
    sizeof(parley_plugin_descriptor),
    PARLEY_KIND_STORAGE,
    PLUGIN_NAME,
    "1.0.0",
    "In-memory storage built against the frozen plugin ABI v1.0 header (ABI stability test fixture).",
    NULL,
    ms_create,
    ms_destroy,
    &memory_storage_vtable,
    NULL,
    NULL,
    NULL,
};

PARLEY_PLUGIN_ENTRY(memory_storage_descriptor)
