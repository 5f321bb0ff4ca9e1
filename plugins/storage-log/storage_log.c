/*
 * storage-log: a Parley storage plugin built as an append-only log, in plain C11.
 *
 * The data lives in a folder of segment files (00000001.log, 00000002.log, ...).
 * Every committed batch is appended to the newest ("active") segment as ONE
 * record, and each write the writer makes durable with one pwrite and one fdatasync (a group
 * of batch records, or one compaction step) starts with a group header record:
 *
 *     group   = [group header record] record*        (never spans two segments)
 *     record  = [u32 payload length][u32 CRC-32C of (length, payload)][payload]
 *     payload = [u8 flags][3 zero bytes][u32 op count] op*
 *     group header payload = [u8 flags = 0x02][3 zero bytes][u32 0]
 *                            [u64 group bytes, header included][u64 group sequence]
 *     (a group header's CRC is XORed with its segment's nonce: see slog_make_group_header)
 *     op      = [u8 kind][u8 table len][u16 partition len][u16 sort len]
 *               [u32 value length (put) or "since" segment id (delete)]
 *               [table][partition][sort][value (put only)]
 *
 * The group sequence grows by one per durable group (recovery restores it as the last one
 * replayed + 1), so within a segment it is exactly the previous group's + 1.
 *
 * All integers are little-endian. Conditional writes (put-if-absent,
 * compare-and-set, counter-add) are resolved by the writer thread and logged as
 * plain puts, so replay never evaluates a condition. Each segment starts with a
 * 32-byte header: the magic "parley-storage-log/1", a random non-zero u32 nonce, the
 * format version and the segment id.
 *
 * Memory holds only keys: a hash table of partitions (table, partition key),
 * each an ordered list of chunks of sorted entries (sort key, segment, value
 * offset, value length). Values are read from a read-only shared mapping of
 * their segment. Appending at the end of a partition (message sequences) costs
 * O(1); an insert in the middle moves at most one chunk of entries.
 *
 * Writes: apply() copies the batch and queues it for the one writer thread,
 * which evaluates every queued batch in order (a group), writes the successful
 * ones with one pwrite, syncs with one fdatasync, and only then publishes them
 * into the index under the write lock and completes them. Reads take the read
 * lock and complete synchronously.
 *
 * Recovery replays the segments in order, group by group, and replays a group only when its
 * header and all its records are valid and it ends inside the file. A power loss during a
 * group's write may keep any of its blocks, so in the newest segment a bad group (bad header,
 * bad record, or running past the end) is a torn write, never acknowledged, when no valid
 * group header starts anywhere after it in the file (after a failed write the writer never
 * writes another group). It is cut off whole, at its start. A bad group that a valid group
 * header follows, or one in any other segment, refuses the start. Then the
 * newest segment and the folder are synced, since replay may have read data a crashed
 * process wrote but never synced.
 *
 * Compaction: each segment counts its live bytes (ops the index points at).
 * When a sealed segment's dead share reaches compact_dead_ratio, the writer
 * thread copies its live rows (and the tombstones still needed) to the active
 * segment in bounded steps between groups (each step one group of one record), syncs, and
 * removes the segment. A step that cannot finish (no room, no memory, an I/O error) is
 * retried from the same place after SLOG_COMPACT_RETRY_NS; damage in the segment stops its
 * compaction until a restart.
 *
 * Tombstones carry "since": the oldest segment that may hold a put of the key
 * that the tombstone hides. Compaction drops a tombstone when no segment from
 * "since" up to (not including) the compacted one remains, or when the key has
 * been written again; otherwise it copies it forward. That keeps replay exact
 * without keeping deleted keys in memory.
 */
#define _GNU_SOURCE 1 /* flock, pthread_rwlockattr_setkind_np, syscall; everything else is POSIX */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h> /* SYS_getrandom */
#endif

#include <parley/plugin.h>

/* ------------------------------------------------------------------------ */
/* Constants                                                                 */
/* ------------------------------------------------------------------------ */

#define SLOG_NAME "storage-log"
#define SLOG_MESSAGE_BYTES 1024u

#define SLOG_MAGIC "parley-storage-log/1"
#define SLOG_MAGIC_LEN 20u
#define SLOG_MAGIC_PREFIX_LEN 19u /* "parley-storage-log/" */
#define SLOG_FORMAT_VERSION 1u
#define SLOG_HEADER_BYTES 32u
#define SLOG_LOCK_FILE "LOCK"

#define SLOG_RECORD_HEADER 8u
#define SLOG_PAYLOAD_HEADER 8u
#define SLOG_OP_HEADER 10u
#define SLOG_FLAG_COMPACTION 0x01u
#define SLOG_FLAG_GROUP 0x02u /* a group header record (see the top of the file) */
#define SLOG_GROUP_PAYLOAD 24u
#define SLOG_GROUP_HEADER (SLOG_RECORD_HEADER + SLOG_GROUP_PAYLOAD) /* 32 bytes */
/* The largest segment file recovery accepts, and so the largest group: 4 GiB. */
#define SLOG_MAX_SEGMENT ((uint64_t)1 << 32)

#define SLOG_OP_PUT 1u
#define SLOG_OP_DEL 2u      /* a tombstone written by a batch */
#define SLOG_OP_DEL_COPY 3u /* a tombstone copied forward by compaction (counts as live) */

/* The largest record (one batch) the plugin writes: 1 GiB. */
#define SLOG_MAX_RECORD ((uint64_t)1 << 30)
/* A group stops taking batches once it holds this many bytes of writes. */
#define SLOG_GROUP_MAX_BYTES ((size_t)64 << 20)

#define SLOG_DEFAULT_SEGMENT_MB 64u
#define SLOG_DEFAULT_GROUP_MAX 1024u
#define SLOG_DEFAULT_DEAD_RATIO 0.5

/* Compaction step bounds: bytes copied and bytes scanned per step. */
#define SLOG_STEP_COPY_BYTES ((size_t)4 << 20)
#define SLOG_STEP_SCAN_BYTES ((uint64_t)32 << 20)
/* Under load, at most one compaction step per this many nanoseconds. */
#define SLOG_STEP_INTERVAL_NS 10000000ull
/* A compaction step that could not finish (no room, no memory, an I/O error) is retried after this. */
#define SLOG_COMPACT_RETRY_NS 1000000000ull

/* Index shape. */
#define SLOG_INLINE_KEY 16u
#define SLOG_CHUNK_MAX 256u

/* "since"/"oldest" placeholder: the segment the current group will be written to. */
#define SLOG_PENDING_SEG UINT32_MAX

static const unsigned char slog_empty_byte = 0;

#if defined(__GNUC__) || defined(__clang__)
#define SLOG_PRINTF(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#else
#define SLOG_PRINTF(fmt_index, first_arg)
#endif

/* ------------------------------------------------------------------------ */
/* Types                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct slog_seg {
    uint32_t id;
    int fd;
    unsigned char *base; /* read-only shared mapping of map_len bytes */
    size_t map_len;
    uint64_t size; /* committed bytes in the file, header included */
    uint64_t live;      /* bytes of put ops the index points at */
    uint64_t tomb_live; /* bytes of tombstones copied forward by compaction (kept, so counted live) */
    uint32_t nonce; /* random, from the segment header: seeds the CRC of its group headers */
    int no_compact; /* this segment is damaged (found while compacting it); leave it */
    char path[1];   /* NUL-terminated, allocated to length */
} slog_seg;

typedef struct slog_entry {
    union {
        unsigned char in[SLOG_INLINE_KEY];
        unsigned char *ptr;
    } k;
    slog_seg *seg;
    uint32_t off; /* value offset in the segment */
    uint32_t vlen;
    uint32_t oldest; /* oldest segment that may hold a put of this key */
    uint16_t klen;
} slog_entry;

typedef struct slog_chunk {
    uint32_t n, cap;
    slog_entry e[];
} slog_chunk;

typedef struct slog_part {
    struct slog_part *next; /* hash chain */
    uint64_t hash;
    slog_chunk **chunks;
    slog_chunk *inline_chunks[1];
    uint32_t nchunks, chunks_cap;
    uint64_t rows;
    uint16_t plen;
    uint8_t tlen;
    unsigned char key[]; /* table bytes then partition bytes */
} slog_part;

typedef struct slog_pos {
    uint32_t ci, ei;
} slog_pos;

/* One write of a queued batch, copied out of the caller's arrays. */
typedef struct slog_wr {
    const unsigned char *table, *part, *sort, *value, *expected;
    uint64_t phash, khash;
    int64_t delta;
    uint32_t vlen, elen;
    uint16_t plen, slen;
    uint8_t tlen, kind;
} slog_wr;

typedef struct slog_batch {
    struct slog_batch *next;
    parley_op *op;
    size_t count;
    slog_wr *w;
    /* Outcome, filled by the writer. */
    parley_status status;
    int conflict;
    size_t fail_index;
    size_t rop_begin, rop_end;
    size_t ctr_begin, ctr_end;
    uint64_t record_bytes;
    char message[256];
} slog_batch;

/* A resolved write of a group: a plain put or delete. */
typedef struct slog_rop {
    const slog_wr *w;
    const unsigned char *val;
    uint32_t vlen;
    uint32_t oldest; /* put: the key's oldest; delete: since (SLOG_PENDING_SEG = target) */
    uint32_t val_off;
    int32_t next; /* overlay chain */
    uint8_t kind;
    unsigned char cval[8];
} slog_rop;

typedef struct slog_counter {
    size_t index;
    uint64_t value;
} slog_counter;

/* A live row or tombstone to copy during a compaction step (points into the old mapping). */
typedef struct slog_copy {
    const unsigned char *op; /* the op's bytes in the old segment */
    uint32_t op_len;
    uint32_t since; /* tombstones: since for the copy */
    uint32_t new_val_off;
} slog_copy;

typedef struct slog_instance {
    const parley_host_api *api;
    parley_host *host;
    char *folder;
    int lock_fd;
    uint64_t segment_bytes;
    size_t group_max;
    double dead_ratio;

    void (*log)(parley_host *, parley_log_level, const char *, size_t);
    void (*metric_add)(parley_metric *, uint64_t);
    void (*metric_set)(parley_metric *, double);
    void (*metric_observe)(parley_metric *, double);

    uint32_t crc_table[8][256];
    /* slog_crc_update (table) or slog_crc_update_hw (SSE4.2), chosen once in create(). */
    uint32_t (*crc_update)(const uint32_t t[8][256], uint32_t crc, const unsigned char *p, size_t n);

    /* Index (readers: rdlock; the writer thread mutates under wrlock). */
    pthread_rwlock_t lock;
    slog_part **buckets;
    size_t nbuckets, nparts;
    uint64_t index_rows;

    /* Segments, oldest first; the last is active. Writer thread only (after create). */
    slog_seg **segs;
    size_t nsegs, segs_cap;

    /* Queue. */
    pthread_mutex_t qmutex;
    pthread_cond_t qcond;
    slog_batch *qhead, *qtail;
    int stop;
    int failed; /* writes refused: see fail_message */
    char fail_message[512];
    pthread_t writer;
    int writer_started;

    /* Writer scratch. */
    unsigned char *gbuf;
    size_t gbuf_cap;

    /* Compaction in progress. */
    slog_seg *cseg;
    uint64_t crec;    /* offset of the current record in cseg */
    uint32_t cop;     /* ops of the current record already handled */
    uint64_t cop_off; /* offset of the next op in cseg */
    uint32_t crec_ops;
    uint64_t crec_end;
    uint64_t last_step_ns;
    uint64_t compact_retry_ns; /* no new compaction before this time (after a postponed step) */

    /* Sequence number of the next group written (writer thread; set by recovery to the last
     * replayed group's + 1). Advanced only when a group is durable, so a failed write, which
     * is cut back, leaves no gap. */
    uint64_t next_group_seq;

    parley_metric *reads_total, *writes_total, *batches_total, *commits_total, *errors_total, *compactions_total;
    parley_metric *g_segments, *g_live, *g_dead, *g_rows;
    parley_metric *commit_seconds;
} slog_instance;

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static int slog_bytes_valid(parley_bytes b) {
    return b.len == 0 || b.data != NULL;
}

static int slog_compare(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen) {
    size_t n = alen < blen ? alen : blen;
    if (n > 0) {
        int c = memcmp(a, b, n);
        if (c != 0) return c;
    }
    return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

static uint16_t slog_get16(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t slog_get32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void slog_put16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)(v & 0xFFu);
    p[1] = (unsigned char)(v >> 8);
}

static void slog_put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v & 0xFFu);
    p[1] = (unsigned char)((v >> 8) & 0xFFu);
    p[2] = (unsigned char)((v >> 16) & 0xFFu);
    p[3] = (unsigned char)(v >> 24);
}

static uint64_t slog_get64(const unsigned char *p) {
    return (uint64_t)slog_get32(p) | ((uint64_t)slog_get32(p + 4) << 32);
}

static void slog_put64(unsigned char *p, uint64_t v) {
    slog_put32(p, (uint32_t)(v & 0xFFFFFFFFu));
    slog_put32(p + 4, (uint32_t)(v >> 32));
}

static int64_t slog_load_i64_le(const unsigned char *p) {
    uint64_t u = 0;
    int i;
    for (i = 7; i >= 0; i--) u = (u << 8) | (uint64_t)p[i];
    if (u <= (uint64_t)INT64_MAX) return (int64_t)u;
    return -(int64_t)(~u) - 1;
}

static void slog_store_i64_le(unsigned char *p, int64_t v) {
    uint64_t u = (uint64_t)v;
    int i;
    for (i = 0; i < 8; i++) {
        p[i] = (unsigned char)(u & 0xFFu);
        u >>= 8;
    }
}

static uint64_t slog_now_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* CRC-32C (Castagnoli), slicing by 8. */
static void slog_crc_init(uint32_t t[8][256]) {
    uint32_t i, k;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        t[0][i] = c;
    }
    for (i = 0; i < 256; i++)
        for (k = 1; k < 8; k++) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
}

static uint32_t slog_crc_update(const uint32_t t[8][256], uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n >= 8) {
        uint32_t one = slog_get32(p) ^ crc;
        uint32_t two = slog_get32(p + 4);
        crc = t[7][one & 0xFFu] ^ t[6][(one >> 8) & 0xFFu] ^ t[5][(one >> 16) & 0xFFu] ^ t[4][one >> 24] ^
              t[3][two & 0xFFu] ^ t[2][(two >> 8) & 0xFFu] ^ t[1][(two >> 16) & 0xFFu] ^ t[0][two >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFFu];
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SLOG_NO_HW_CRC)
#define SLOG_HAVE_HW_CRC 1
/* CRC-32C with the SSE4.2 crc32 instruction: the same polynomial (Castagnoli, reflected), so
 * it gives exactly the table's result. Chosen at create() when the CPU has SSE4.2. Build with
 * -DSLOG_NO_HW_CRC to leave it out (the table is then used everywhere). */
__attribute__((target("sse4.2"))) static uint32_t slog_crc_update_hw(const uint32_t t[8][256], uint32_t crc,
                                                                     const unsigned char *p, size_t n) {
    unsigned long long c = (unsigned long long)(uint32_t)~crc;
    unsigned int c32;
    (void)t;
    while (n >= 8) {
        unsigned long long v;
        memcpy(&v, p, 8); /* x86-64 is little-endian: the instruction takes the bytes in order */
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    c32 = (unsigned int)c;
    while (n-- > 0) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~(uint32_t)c32;
}
#endif

/* The CRC of a record: over its 4 length bytes, then the payload. */
static uint32_t slog_record_crc(const slog_instance *inst, const unsigned char *len_bytes, const unsigned char *payload,
                                size_t payload_len) {
    uint32_t c = inst->crc_update(inst->crc_table, 0, len_bytes, 4);
    return inst->crc_update(inst->crc_table, c, payload, payload_len);
}

/* In-memory hashing only (never stored). */
static uint64_t slog_mix(uint64_t h) {
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h;
}

static uint64_t slog_hash_bytes(uint64_t h, const unsigned char *p, size_t n) {
    uint64_t v;
    h ^= (uint64_t)n * 0x9E3779B97F4A7C15ull;
    while (n >= 8) {
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    v = 0;
    if (n > 0) memcpy(&v, p, n);
    h = (h ^ v ^ ((uint64_t)n << 56)) * 0x9E3779B97F4A7C15ull;
    return slog_mix(h);
}

static uint64_t slog_part_hash(const unsigned char *table, size_t tlen, const unsigned char *part, size_t plen) {
    uint64_t h = slog_hash_bytes(0x243F6A8885A308D3ull, table, tlen);
    return slog_hash_bytes(h, part, plen);
}

static uint64_t slog_key_hash(uint64_t phash, const unsigned char *sort, size_t slen) {
    return slog_hash_bytes(phash ^ 0x13198A2E03707344ull, sort, slen);
}

static void slog_vformat(char *buf, size_t size, size_t *len_out, const char *fmt, va_list ap) {
    int n = vsnprintf(buf, size, fmt, ap);
    if (n < 0) {
        buf[0] = '\0';
        *len_out = 0;
    } else {
        *len_out = (size_t)n < size ? (size_t)n : size - 1;
    }
}

static SLOG_PRINTF(3, 4) void slog_log(const slog_instance *inst, parley_log_level level, const char *fmt, ...) {
    char buf[SLOG_MESSAGE_BYTES];
    size_t len;
    va_list ap;
    if (inst->log == NULL) return;
    va_start(ap, fmt);
    slog_vformat(buf, sizeof buf, &len, fmt, ap);
    va_end(ap);
    inst->log(inst->host, level, buf, len);
}

static void slog_metric_add(const slog_instance *inst, parley_metric *metric, uint64_t delta) {
    if (metric != NULL && inst->metric_add != NULL && delta > 0) inst->metric_add(metric, delta);
}

static void slog_metric_set(const slog_instance *inst, parley_metric *metric, double value) {
    if (metric != NULL && inst->metric_set != NULL) inst->metric_set(metric, value);
}

static void slog_metric_observe(const slog_instance *inst, parley_metric *metric, double value) {
    if (metric != NULL && inst->metric_observe != NULL) inst->metric_observe(metric, value);
}

/* Attaches an error message to op (synchronous failures), counts it, logs backend failures. */
static SLOG_PRINTF(4, 5) parley_status slog_fail(const slog_instance *inst, parley_op *op, parley_status status,
                                                  const char *fmt, ...) {
    char buf[SLOG_MESSAGE_BYTES];
    size_t len;
    va_list ap;
    va_start(ap, fmt);
    slog_vformat(buf, sizeof buf, &len, fmt, ap);
    va_end(ap);
    if (op != NULL && inst->api->set_error != NULL) inst->api->set_error(op, buf, len);
    slog_metric_add(inst, inst->errors_total, 1);
    if (status == PARLEY_E_IO || status == PARLEY_E_CORRUPT || status == PARLEY_E_INTERNAL || status == PARLEY_E_NOMEM) {
        if (inst->log != NULL) inst->log(inst->host, PARLEY_LOG_ERROR, buf, len);
    }
    return status;
}

static SLOG_PRINTF(4, 5) parley_status slog_create_fail(char *error, size_t error_size, parley_status status,
                                                         const char *fmt, ...) {
    va_list ap;
    if (error != NULL && error_size > 0) {
        size_t len;
        va_start(ap, fmt);
        slog_vformat(error, error_size, &len, fmt, ap);
        va_end(ap);
    }
    return status;
}

static int slog_fsync_dir(const char *dir) {
    int fd, r;
#if defined(O_DIRECTORY)
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
#else
    fd = open(dir, O_RDONLY | O_CLOEXEC);
#endif
    if (fd < 0) return errno;
    r = fsync(fd) == 0 ? 0 : errno;
    (void)close(fd);
    return r;
}

static int slog_datasync(int fd) {
#if defined(__APPLE__)
    return fsync(fd) == 0 ? 0 : errno;
#else
    return fdatasync(fd) == 0 ? 0 : errno;
#endif
}

/* Writes all of buf at offset; returns 0 or an errno. */
static int slog_pwrite_all(int fd, const unsigned char *buf, size_t len, uint64_t offset) {
    while (len > 0) {
        size_t chunk = len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len;
        ssize_t n = pwrite(fd, buf, chunk, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) return EIO;
        buf += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Index: partitions and their chunked sorted entries                        */
/* ------------------------------------------------------------------------ */

static const unsigned char *slog_entry_key(const slog_entry *e) {
    return e->klen <= SLOG_INLINE_KEY ? e->k.in : e->k.ptr;
}

static void slog_entry_free_key(slog_entry *e) {
    if (e->klen > SLOG_INLINE_KEY) free(e->k.ptr);
}

/* Bytes an entry's put op occupies in its segment. */
static uint64_t slog_entry_op_bytes(const slog_part *p, const slog_entry *e) {
    return (uint64_t)SLOG_OP_HEADER + p->tlen + p->plen + e->klen + e->vlen;
}

static slog_part *slog_find_part(const slog_instance *inst, uint64_t hash, const unsigned char *table, size_t tlen,
                                 const unsigned char *part, size_t plen) {
    slog_part *p;
    if (inst->nbuckets == 0) return NULL;
    for (p = inst->buckets[hash & (inst->nbuckets - 1)]; p != NULL; p = p->next) {
        if (p->hash == hash && p->tlen == tlen && p->plen == plen && (tlen == 0 || memcmp(p->key, table, tlen) == 0) &&
            (plen == 0 || memcmp(p->key + tlen, part, plen) == 0))
            return p;
    }
    return NULL;
}

static int slog_grow_buckets(slog_instance *inst) {
    size_t n = inst->nbuckets == 0 ? 1024 : inst->nbuckets * 2, i;
    slog_part **b = (slog_part **)calloc(n, sizeof *b);
    if (b == NULL) return -1;
    for (i = 0; i < inst->nbuckets; i++) {
        slog_part *p = inst->buckets[i];
        while (p != NULL) {
            slog_part *next = p->next;
            size_t j = p->hash & (n - 1);
            p->next = b[j];
            b[j] = p;
            p = next;
        }
    }
    free(inst->buckets);
    inst->buckets = b;
    inst->nbuckets = n;
    return 0;
}

static slog_part *slog_create_part(slog_instance *inst, uint64_t hash, const unsigned char *table, size_t tlen,
                                   const unsigned char *part, size_t plen) {
    slog_part *p;
    size_t j;
    if (inst->nparts >= inst->nbuckets && slog_grow_buckets(inst) != 0) return NULL;
    p = (slog_part *)malloc(sizeof *p + tlen + plen);
    if (p == NULL) return NULL;
    memset(p, 0, sizeof *p);
    p->hash = hash;
    p->tlen = (uint8_t)tlen;
    p->plen = (uint16_t)plen;
    if (tlen > 0) memcpy(p->key, table, tlen);
    if (plen > 0) memcpy(p->key + tlen, part, plen);
    p->chunks = p->inline_chunks;
    p->chunks_cap = 1;
    j = hash & (inst->nbuckets - 1);
    p->next = inst->buckets[j];
    inst->buckets[j] = p;
    inst->nparts++;
    return p;
}

static void slog_free_part_contents(slog_part *p) {
    uint32_t i, j;
    for (i = 0; i < p->nchunks; i++) {
        for (j = 0; j < p->chunks[i]->n; j++) slog_entry_free_key(&p->chunks[i]->e[j]);
        free(p->chunks[i]);
    }
    if (p->chunks != p->inline_chunks) free(p->chunks);
}

static void slog_remove_part(slog_instance *inst, slog_part *p) {
    slog_part **pp = &inst->buckets[p->hash & (inst->nbuckets - 1)];
    while (*pp != NULL && *pp != p) pp = &(*pp)->next;
    if (*pp == p) *pp = p->next;
    slog_free_part_contents(p);
    free(p);
    inst->nparts--;
}

static int slog_entry_cmp(const slog_entry *e, const unsigned char *key, size_t klen) {
    return slog_compare(slog_entry_key(e), e->klen, key, klen);
}

/* The first position whose key is >= key (strict: > key); {nchunks, 0} when none. */
static slog_pos slog_bound(const slog_part *p, const unsigned char *key, size_t klen, int strict) {
    slog_pos pos;
    uint32_t lo = 0, hi = p->nchunks;
    const slog_chunk *c;
    /* First chunk whose last entry satisfies the bound. */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const slog_chunk *m = p->chunks[mid];
        int cmp = slog_entry_cmp(&m->e[m->n - 1], key, klen);
        if (strict ? cmp > 0 : cmp >= 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    pos.ci = lo;
    pos.ei = 0;
    if (lo == p->nchunks) return pos;
    c = p->chunks[lo];
    {
        uint32_t a = 0, b = c->n;
        while (a < b) {
            uint32_t mid = a + (b - a) / 2;
            int cmp = slog_entry_cmp(&c->e[mid], key, klen);
            if (strict ? cmp > 0 : cmp >= 0)
                b = mid;
            else
                a = mid + 1;
        }
        pos.ei = a;
    }
    return pos;
}

/* Finds key; sets *pos to where it is or would be inserted. */
static slog_entry *slog_part_find(const slog_part *p, const unsigned char *key, size_t klen, slog_pos *pos) {
    slog_pos at;
    if (p->nchunks > 0) {
        /* Fast path: beyond the last key (appends). */
        const slog_chunk *last = p->chunks[p->nchunks - 1];
        if (slog_entry_cmp(&last->e[last->n - 1], key, klen) < 0) {
            at.ci = p->nchunks;
            at.ei = 0;
            if (pos != NULL) *pos = at;
            return NULL;
        }
    }
    at = slog_bound(p, key, klen, 0);
    if (pos != NULL) *pos = at;
    if (at.ci < p->nchunks && slog_entry_cmp(&p->chunks[at.ci]->e[at.ei], key, klen) == 0)
        return &p->chunks[at.ci]->e[at.ei];
    return NULL;
}

static slog_chunk *slog_chunk_alloc(uint32_t cap) {
    slog_chunk *c = (slog_chunk *)malloc(sizeof *c + (size_t)cap * sizeof(slog_entry));
    if (c == NULL) return NULL;
    c->n = 0;
    c->cap = cap;
    return c;
}

/* Inserts a chunk pointer at index ci of p's chunk array. */
static int slog_insert_chunk(slog_part *p, uint32_t ci, slog_chunk *c) {
    if (p->nchunks == p->chunks_cap) {
        uint32_t cap = p->chunks_cap * 2;
        slog_chunk **a = (slog_chunk **)malloc((size_t)cap * sizeof *a);
        if (a == NULL) return -1;
        memcpy(a, p->chunks, (size_t)p->nchunks * sizeof *a);
        if (p->chunks != p->inline_chunks) free(p->chunks);
        p->chunks = a;
        p->chunks_cap = cap;
    }
    memmove(&p->chunks[ci + 1], &p->chunks[ci], (size_t)(p->nchunks - ci) * sizeof *p->chunks);
    p->chunks[ci] = c;
    p->nchunks++;
    return 0;
}

static int slog_chunk_reserve(slog_part *p, uint32_t ci) {
    slog_chunk *c = p->chunks[ci];
    if (c->n < c->cap) return 0;
    {
        uint32_t cap = c->cap * 2 > SLOG_CHUNK_MAX ? SLOG_CHUNK_MAX : c->cap * 2;
        slog_chunk *g = (slog_chunk *)realloc(c, sizeof *c + (size_t)cap * sizeof(slog_entry));
        if (g == NULL) return -1;
        g->cap = cap;
        p->chunks[ci] = g;
    }
    return 0;
}

/* Inserts e at pos (from slog_part_find). Returns 0, or -1 when out of memory (nothing changed). */
static int slog_part_insert(slog_part *p, slog_pos pos, const slog_entry *e) {
    slog_chunk *c;
    if (pos.ci == p->nchunks) {
        /* At the end: append to the last chunk, or start a new one. */
        if (p->nchunks > 0 && p->chunks[p->nchunks - 1]->n < SLOG_CHUNK_MAX) {
            uint32_t ci = p->nchunks - 1;
            if (slog_chunk_reserve(p, ci) != 0) return -1;
            c = p->chunks[ci];
            c->e[c->n++] = *e;
        } else {
            c = slog_chunk_alloc(p->nchunks == 0 ? 1 : SLOG_CHUNK_MAX / 4);
            if (c == NULL) return -1;
            if (slog_insert_chunk(p, p->nchunks, c) != 0) {
                free(c);
                return -1;
            }
            c->e[c->n++] = *e;
        }
        p->rows++;
        return 0;
    }
    /* Before the first entry of a chunk: the previous chunk's end is the same place. */
    if (pos.ei == 0 && pos.ci > 0 && p->chunks[pos.ci - 1]->n < SLOG_CHUNK_MAX) {
        uint32_t ci = pos.ci - 1;
        if (slog_chunk_reserve(p, ci) != 0) return -1;
        c = p->chunks[ci];
        c->e[c->n++] = *e;
        p->rows++;
        return 0;
    }
    c = p->chunks[pos.ci];
    if (c->n == SLOG_CHUNK_MAX) {
        /* Split: the upper half moves to a new chunk. */
        uint32_t half = c->n / 2;
        slog_chunk *r = slog_chunk_alloc(SLOG_CHUNK_MAX);
        if (r == NULL) return -1;
        if (slog_insert_chunk(p, pos.ci + 1, r) != 0) {
            free(r);
            return -1;
        }
        memcpy(r->e, &c->e[half], (size_t)(c->n - half) * sizeof(slog_entry));
        r->n = c->n - half;
        c->n = half;
        if (pos.ei > half) {
            pos.ci++;
            pos.ei -= half;
        }
    } else if (slog_chunk_reserve(p, pos.ci) != 0) {
        return -1;
    }
    c = p->chunks[pos.ci];
    memmove(&c->e[pos.ei + 1], &c->e[pos.ei], (size_t)(c->n - pos.ei) * sizeof(slog_entry));
    c->e[pos.ei] = *e;
    c->n++;
    p->rows++;
    return 0;
}

static void slog_part_remove(slog_part *p, slog_pos pos) {
    slog_chunk *c = p->chunks[pos.ci];
    slog_entry_free_key(&c->e[pos.ei]);
    memmove(&c->e[pos.ei], &c->e[pos.ei + 1], (size_t)(c->n - pos.ei - 1) * sizeof(slog_entry));
    c->n--;
    p->rows--;
    if (c->n == 0) {
        free(c);
        memmove(&p->chunks[pos.ci], &p->chunks[pos.ci + 1], (size_t)(p->nchunks - pos.ci - 1) * sizeof *p->chunks);
        p->nchunks--;
    }
}

static void slog_free_index(slog_instance *inst) {
    size_t i;
    for (i = 0; i < inst->nbuckets; i++) {
        slog_part *p = inst->buckets[i];
        while (p != NULL) {
            slog_part *next = p->next;
            slog_free_part_contents(p);
            free(p);
            p = next;
        }
    }
    free(inst->buckets);
    inst->buckets = NULL;
    inst->nbuckets = 0;
    inst->nparts = 0;
    inst->index_rows = 0;
}

/* Sets (table, partition, sort) to a value at (seg, off, vlen): the index side of a put.
 * Returns 0, or -1 when out of memory (nothing changed). */
static int slog_index_put(slog_instance *inst, uint64_t phash, const unsigned char *table, size_t tlen,
                          const unsigned char *part, size_t plen, const unsigned char *sort, size_t slen, slog_seg *seg,
                          uint32_t off, uint32_t vlen) {
    slog_part *p = slog_find_part(inst, phash, table, tlen, part, plen);
    slog_entry *e;
    slog_pos pos;
    uint64_t op_bytes = (uint64_t)SLOG_OP_HEADER + tlen + plen + slen + vlen;
    if (p == NULL) {
        p = slog_create_part(inst, phash, table, tlen, part, plen);
        if (p == NULL) return -1;
    }
    e = slog_part_find(p, sort, slen, &pos);
    if (e != NULL) {
        e->seg->live -= slog_entry_op_bytes(p, e);
        e->seg = seg;
        e->off = off;
        e->vlen = vlen;
    } else {
        slog_entry ne;
        memset(&ne, 0, sizeof ne);
        ne.klen = (uint16_t)slen;
        if (slen > SLOG_INLINE_KEY) {
            ne.k.ptr = (unsigned char *)malloc(slen);
            if (ne.k.ptr == NULL) {
                if (p->rows == 0) slog_remove_part(inst, p);
                return -1;
            }
            memcpy(ne.k.ptr, sort, slen);
        } else if (slen > 0) {
            memcpy(ne.k.in, sort, slen);
        }
        ne.seg = seg;
        ne.off = off;
        ne.vlen = vlen;
        ne.oldest = seg->id;
        if (slog_part_insert(p, pos, &ne) != 0) {
            slog_entry_free_key(&ne);
            if (p->rows == 0) slog_remove_part(inst, p);
            return -1;
        }
        inst->index_rows++;
    }
    seg->live += op_bytes;
    return 0;
}

/* Removes a key if present: the index side of a tombstone. */
static void slog_index_del(slog_instance *inst, uint64_t phash, const unsigned char *table, size_t tlen,
                           const unsigned char *part, size_t plen, const unsigned char *sort, size_t slen) {
    slog_part *p = slog_find_part(inst, phash, table, tlen, part, plen);
    slog_entry *e;
    slog_pos pos;
    if (p == NULL) return;
    e = slog_part_find(p, sort, slen, &pos);
    if (e == NULL) return;
    e->seg->live -= slog_entry_op_bytes(p, e);
    slog_part_remove(p, pos);
    inst->index_rows--;
    if (p->rows == 0) slog_remove_part(inst, p);
}

static slog_entry *slog_index_get(const slog_instance *inst, uint64_t phash, const unsigned char *table, size_t tlen,
                                  const unsigned char *part, size_t plen, const unsigned char *sort, size_t slen,
                                  slog_part **part_out) {
    slog_part *p = slog_find_part(inst, phash, table, tlen, part, plen);
    if (part_out != NULL) *part_out = p;
    if (p == NULL) return NULL;
    return slog_part_find(p, sort, slen, NULL);
}

/* ------------------------------------------------------------------------ */
/* Segments                                                                  */
/* ------------------------------------------------------------------------ */

static slog_seg *slog_seg_new(const char *folder, uint32_t id) {
    size_t len = strlen(folder) + 1 + 12 + 1;
    slog_seg *s = (slog_seg *)calloc(1, sizeof *s + len);
    if (s == NULL) return NULL;
    s->id = id;
    s->fd = -1;
    snprintf(s->path, len + 1, "%s/%08u.log", folder, (unsigned)id);
    return s;
}

static void slog_seg_close(slog_seg *s) {
    if (s == NULL) return;
    if (s->base != NULL) (void)munmap(s->base, s->map_len);
    if (s->fd >= 0) (void)close(s->fd);
    free(s);
}

static int slog_seg_map(slog_seg *s, size_t len) {
    void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, s->fd, 0);
    if (m == MAP_FAILED) return errno;
    s->base = (unsigned char *)m;
    s->map_len = len;
    return 0;
}

/* After replay has read a whole segment through its mapping, unmaps those pages from the
 * process (the kernel's page cache keeps them, and a later read maps them again). Without
 * this, the resident memory of the server includes every byte of the log read at start-up,
 * which looks like a leak to an operator watching RSS. */
static void slog_seg_drop_pages(slog_seg *s) {
    if (s->base != NULL) (void)madvise(s->base, s->map_len, MADV_DONTNEED);
}

static void slog_make_header(unsigned char *h, uint32_t id, uint32_t nonce) {
    memset(h, 0, SLOG_HEADER_BYTES);
    memcpy(h, SLOG_MAGIC, SLOG_MAGIC_LEN);
    slog_put32(h + 20, nonce);
    slog_put32(h + 24, SLOG_FORMAT_VERSION);
    slog_put32(h + 28, id);
}

/* A random, non-zero 32-bit nonce for a new segment's header (see slog_make_group_header):
 * from getrandom() where there is one, else /dev/urandom, else (neither works) a mix of the
 * clocks and the process id, which is still unknown to clients. */
static uint32_t slog_random_nonce(void) {
    unsigned char b[4];
    uint32_t v = 0;
    int got = 0;
#if defined(__linux__) && defined(SYS_getrandom)
    {
        long r;
        do r = syscall(SYS_getrandom, b, sizeof b, 0);
        while (r < 0 && errno == EINTR);
        got = r == (long)sizeof b;
    }
#endif
    if (!got) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            got = read(fd, b, sizeof b) == (ssize_t)sizeof b;
            (void)close(fd);
        }
    }
    if (got) {
        v = slog_get32(b);
    } else {
        struct timespec ts;
        uint64_t h = (uint64_t)getpid();
        if (clock_gettime(CLOCK_REALTIME, &ts) == 0) h = h * 1000003u ^ (uint64_t)ts.tv_sec ^ (uint64_t)ts.tv_nsec << 20;
        h ^= slog_now_ns();
        h ^= h >> 33;
        h *= 0xFF51AFD7ED558CCDull;
        h ^= h >> 33;
        v = (uint32_t)h;
    }
    return v != 0 ? v : 0x9E3779B9u;
}

/* Makes room in the segment array for one more segment. Returns 0 or -1 (out of memory). */
static int slog_segs_reserve(slog_instance *inst) {
    if (inst->nsegs == inst->segs_cap) {
        size_t cap = inst->segs_cap == 0 ? 16 : inst->segs_cap * 2;
        slog_seg **a = (slog_seg **)realloc(inst->segs, cap * sizeof *a);
        if (a == NULL) return -1;
        inst->segs = a;
        inst->segs_cap = cap;
    }
    return 0;
}

static int slog_segs_append(slog_instance *inst, slog_seg *s) {
    if (slog_segs_reserve(inst) != 0) return -1;
    inst->segs[inst->nsegs++] = s;
    return 0;
}

static slog_seg *slog_active(const slog_instance *inst) {
    return inst->segs[inst->nsegs - 1];
}

/* Creates segment id with room for at least `need` bytes after its header and makes
 * it the active one. Returns 0 or an errno (message in msg). */
static int slog_new_segment(slog_instance *inst, uint32_t id, uint64_t need, char *msg, size_t msg_size) {
    unsigned char header[SLOG_HEADER_BYTES];
    uint64_t cap = inst->segment_bytes;
    slog_seg *s;
    int r;
    if (SLOG_HEADER_BYTES + need > cap) cap = SLOG_HEADER_BYTES + need;
    if (slog_segs_reserve(inst) != 0) { /* first, so the append below cannot fail */
        snprintf(msg, msg_size, "out of memory");
        return ENOMEM;
    }
    s = slog_seg_new(inst->folder, id);
    if (s == NULL) {
        snprintf(msg, msg_size, "out of memory");
        return ENOMEM;
    }
    s->fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        r = errno;
        snprintf(msg, msg_size, "cannot create segment '%s': %s", s->path, strerror(r));
        slog_seg_close(s);
        return r;
    }
    s->nonce = slog_random_nonce();
    slog_make_header(header, id, s->nonce);
    if ((r = slog_pwrite_all(s->fd, header, sizeof header, 0)) != 0 || (r = slog_datasync(s->fd)) != 0 ||
        (r = slog_fsync_dir(inst->folder)) != 0) {
        snprintf(msg, msg_size, "cannot write the header of new segment '%s': %s", s->path, strerror(r));
        (void)unlink(s->path);
        slog_seg_close(s);
        return r;
    }
    if ((r = slog_seg_map(s, (size_t)cap)) != 0) {
        snprintf(msg, msg_size, "cannot map new segment '%s' (%llu bytes): %s", s->path, (unsigned long long)cap,
                 strerror(r));
        (void)unlink(s->path);
        slog_seg_close(s);
        return r;
    }
    s->size = SLOG_HEADER_BYTES;
    (void)slog_segs_append(inst, s);
    return 0;
}

/* Finds the first segment with id >= lo; returns its id if it is < hi, else 0. */
static uint32_t slog_first_seg_in(const slog_instance *inst, uint32_t lo, uint32_t hi) {
    size_t a = 0, b = inst->nsegs;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (inst->segs[mid]->id < lo)
            a = mid + 1;
        else
            b = mid;
    }
    if (a < inst->nsegs && inst->segs[a]->id < hi) return inst->segs[a]->id;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Records                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct slog_op_view {
    const unsigned char *start; /* op header */
    const unsigned char *table, *part, *sort, *value;
    uint32_t len; /* bytes of the whole op */
    uint32_t vlen;
    uint32_t since;
    uint16_t plen, slen;
    uint8_t tlen, kind;
} slog_op_view;

/* Decodes the op at p with `avail` bytes left in the payload; returns 0 or -1 if malformed. */
static int slog_decode_op(const unsigned char *p, uint64_t avail, slog_op_view *v) {
    uint64_t need;
    if (avail < SLOG_OP_HEADER) return -1;
    v->start = p;
    v->kind = p[0];
    v->tlen = p[1];
    v->plen = slog_get16(p + 2);
    v->slen = slog_get16(p + 4);
    if (v->kind == SLOG_OP_PUT) {
        v->vlen = slog_get32(p + 6);
        v->since = 0;
    } else if (v->kind == SLOG_OP_DEL || v->kind == SLOG_OP_DEL_COPY) {
        v->vlen = 0;
        v->since = slog_get32(p + 6);
    } else {
        return -1;
    }
    if (v->tlen > PARLEY_STORAGE_MAX_TABLE_BYTES || v->plen > PARLEY_STORAGE_MAX_PARTITION_BYTES ||
        v->slen > PARLEY_STORAGE_MAX_SORT_BYTES || v->vlen > PARLEY_STORAGE_MAX_VALUE_BYTES)
        return -1;
    need = (uint64_t)SLOG_OP_HEADER + v->tlen + v->plen + v->slen + v->vlen;
    if (need > avail) return -1;
    v->table = p + SLOG_OP_HEADER;
    v->part = v->table + v->tlen;
    v->sort = v->part + v->plen;
    v->value = v->sort + v->slen;
    v->len = (uint32_t)need;
    return 0;
}

/* Checks that a payload of len bytes is a payload header and exactly its ops. */
static int slog_payload_wellformed(const unsigned char *payload, uint32_t len, uint32_t *nops) {
    uint32_t n, i;
    uint64_t pos;
    if (len < SLOG_PAYLOAD_HEADER) return -1;
    if ((payload[0] & ~SLOG_FLAG_COMPACTION) != 0 || payload[1] != 0 || payload[2] != 0 || payload[3] != 0) return -1;
    n = slog_get32(payload + 4);
    pos = SLOG_PAYLOAD_HEADER;
    for (i = 0; i < n; i++) {
        slog_op_view v;
        if (slog_decode_op(payload + pos, len - pos, &v) != 0) return -1;
        pos += v.len;
    }
    if (pos != len) return -1;
    *nops = n;
    return 0;
}

/* Checks the record at off in a mapping of `size` valid bytes.
 * Returns 0 (valid; *payload_len, *nops set), 1 (short: runs past the end), 2 (bad CRC or length),
 * or 3 (CRC good but the contents are malformed). */
static int slog_check_record(const slog_instance *inst, const unsigned char *base, uint64_t size, uint64_t off,
                             uint32_t *payload_len, uint32_t *nops) {
    uint32_t len, crc, n;
    const unsigned char *payload;
    if (size - off < SLOG_RECORD_HEADER) return 1;
    len = slog_get32(base + off);
    crc = slog_get32(base + off + 4);
    if (len < SLOG_PAYLOAD_HEADER || len > SLOG_MAX_RECORD) return 2;
    if (size - off - SLOG_RECORD_HEADER < len) return 1;
    payload = base + off + SLOG_RECORD_HEADER;
    if (slog_record_crc(inst, base + off, payload, len) != crc) return 2;
    if (slog_payload_wellformed(payload, len, &n) != 0) return 3;
    *payload_len = len;
    *nops = n;
    return 0;
}

/* Group headers. Each unit the writer makes durable with one pwrite and one fdatasync (a group
 * of batch records, or one compaction step's record) starts with a group header record:
 *
 *     [u32 24][u32 CRC-32C ^ nonce][u8 flags = SLOG_FLAG_GROUP][3 zero bytes][u32 0 (no ops)]
 *     [u64 group bytes, this header included][u64 group sequence]
 *
 * The sequence starts at 1 and grows by one per durable group, so within a segment each
 * group's is exactly the previous one's + 1.
 *
 * Recovery searches the bytes after a bad group for another group header, so a client must
 * not be able to forge one. Keys can hold any bytes (a client id, stored raw in a sort key,
 * may hold zero bytes), so a client can place 32 bytes of its choosing in the log. That is why
 * the checksum of a group header (not of other records) is the record's CRC-32C XORed with
 * the segment's nonce: a random non-zero 32-bit value that the segment header holds (bytes 20
 * to 23), drawn when the segment is created and never shown to clients. A forged header
 * verifies only if it guesses the nonce, a chance of 2^-32 per forged header. The strict checks
 * below (flag, zero bytes, bounds, sequence) leave random bytes the same chance per offset. */
static void slog_make_group_header(const slog_instance *inst, uint32_t nonce, unsigned char *p, uint64_t group_bytes,
                                   uint64_t seq) {
    unsigned char *payload = p + SLOG_RECORD_HEADER;
    memset(payload, 0, SLOG_GROUP_PAYLOAD);
    payload[0] = SLOG_FLAG_GROUP;
    slog_put64(payload + 8, group_bytes);
    slog_put64(payload + 16, seq);
    slog_put32(p, SLOG_GROUP_PAYLOAD);
    slog_put32(p + 4, slog_record_crc(inst, p, payload, SLOG_GROUP_PAYLOAD) ^ nonce);
}

/* Checks for a valid group header at off in the first `size` bytes of a segment whose header
 * holds `nonce`. prev is the sequence of the previous group of the segment, 0 when there is
 * none; with exact, the sequence must be prev + 1, otherwise only greater than prev. The cheap
 * tests come first, so a byte-by-byte search costs little more than reading the bytes. Returns
 * 0 (valid; the group length and sequence set) or -1. */
static int slog_check_group_header(const slog_instance *inst, uint32_t nonce, const unsigned char *base, uint64_t size,
                                   uint64_t off, uint64_t prev, int exact, uint64_t *group_bytes, uint64_t *seq) {
    const unsigned char *payload = base + off + SLOG_RECORD_HEADER;
    uint64_t bytes, sq;
    if (off > size || size - off < SLOG_GROUP_HEADER) return -1;
    if (slog_get32(base + off) != SLOG_GROUP_PAYLOAD || payload[0] != SLOG_FLAG_GROUP || payload[1] != 0 ||
        payload[2] != 0 || payload[3] != 0 || slog_get32(payload + 4) != 0)
        return -1;
    bytes = slog_get64(payload + 8);
    sq = slog_get64(payload + 16);
    if (bytes < SLOG_GROUP_HEADER || bytes > SLOG_MAX_SEGMENT - SLOG_HEADER_BYTES) return -1;
    if (sq == 0 || sq <= prev || (exact && prev != 0 && sq != prev + 1)) return -1;
    if ((slog_record_crc(inst, base + off, payload, SLOG_GROUP_PAYLOAD) ^ nonce) != slog_get32(base + off + 4))
        return -1;
    *group_bytes = bytes;
    *seq = sq;
    return 0;
}

/* Looks for a valid group header after `from` in the first `size` bytes of a segment, with a
 * sequence greater than prev (not necessarily prev + 1: the groups in between may be the
 * damaged ones). Returns its offset, or 0 when there is none. Used after a bad group in the
 * newest segment to tell a torn last group (no group after it) from damage in the middle.
 * Only group headers count: a torn group's later records may well have reached the disk
 * intact. */
static uint64_t slog_find_group_header(const slog_instance *inst, uint32_t nonce, const unsigned char *base,
                                       uint64_t size, uint64_t from, uint64_t prev) {
    uint64_t off, bytes, seq;
    for (off = from + 1; off < size && size - off >= SLOG_GROUP_HEADER; off++) {
        if (base[off] != SLOG_GROUP_PAYLOAD || base[off + SLOG_RECORD_HEADER] != SLOG_FLAG_GROUP) continue;
        if (slog_check_group_header(inst, nonce, base, size, off, prev, 0, &bytes, &seq) == 0) return off;
    }
    return 0;
}

/* Checks the records of the group [start, end) (end <= the valid bytes) after its header.
 * Returns 0 when they are all valid, else the slog_check_record code of the first bad one,
 * with its offset in *bad_at. A record must end inside the group. */
static int slog_check_group_records(const slog_instance *inst, const unsigned char *base, uint64_t start,
                                    uint64_t end, uint64_t *bad_at) {
    uint64_t at = start + SLOG_GROUP_HEADER;
    while (at < end) {
        uint32_t plen = 0, nops = 0;
        int c = slog_check_record(inst, base, end, at, &plen, &nops);
        if (c != 0) {
            *bad_at = at;
            return c;
        }
        at += SLOG_RECORD_HEADER + plen;
    }
    return 0;
}

/* Applies one logged op to the index (replay). */
static int slog_replay_op(slog_instance *inst, slog_seg *s, const slog_op_view *v) {
    uint64_t phash = slog_part_hash(v->table, v->tlen, v->part, v->plen);
    if (v->kind == SLOG_OP_PUT)
        return slog_index_put(inst, phash, v->table, v->tlen, v->part, v->plen, v->sort, v->slen, s,
                              (uint32_t)(v->value - s->base), v->vlen);
    slog_index_del(inst, phash, v->table, v->tlen, v->part, v->plen, v->sort, v->slen);
    if (v->kind == SLOG_OP_DEL_COPY) s->tomb_live += v->len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Storage: get and scan                                                     */
/* ------------------------------------------------------------------------ */

static parley_status slog_check_prefix(const slog_instance *inst, parley_op *op, parley_bytes table,
                                       parley_bytes partition) {
    if (!slog_bytes_valid(table) || !slog_bytes_valid(partition))
        return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": table or partition has NULL data and a length");
    if (table.len > PARLEY_STORAGE_MAX_TABLE_BYTES)
        return slog_fail(inst, op, PARLEY_E_TOO_LARGE, SLOG_NAME ": table name is %zu bytes; the limit is %u",
                         table.len, (unsigned)PARLEY_STORAGE_MAX_TABLE_BYTES);
    if (partition.len > PARLEY_STORAGE_MAX_PARTITION_BYTES)
        return slog_fail(inst, op, PARLEY_E_TOO_LARGE, SLOG_NAME ": partition key is %zu bytes; the limit is %u",
                         partition.len, (unsigned)PARLEY_STORAGE_MAX_PARTITION_BYTES);
    return PARLEY_OK;
}

static parley_status slog_check_sort(const slog_instance *inst, parley_op *op, parley_bytes sort, const char *what) {
    if (!slog_bytes_valid(sort))
        return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": %s has NULL data and a length", what);
    if (sort.len > PARLEY_STORAGE_MAX_SORT_BYTES)
        return slog_fail(inst, op, PARLEY_E_TOO_LARGE, SLOG_NAME ": %s is %zu bytes; the limit is %u", what, sort.len,
                         (unsigned)PARLEY_STORAGE_MAX_SORT_BYTES);
    return PARLEY_OK;
}

static const unsigned char *slog_ptr(parley_bytes b) {
    return b.len == 0 ? &slog_empty_byte : b.data;
}

static int slog_emit_entry(const slog_instance *inst, parley_op *op, const slog_entry *e) {
    parley_bytes sort, value;
    sort.data = e->klen > 0 ? slog_entry_key(e) : NULL;
    sort.len = e->klen;
    value.data = e->seg->base + e->off;
    value.len = e->vlen;
    return inst->api->emit_row(op, sort, value);
}

static parley_status slog_get(void *instance, parley_op *op, parley_bytes table, parley_bytes partition,
                              parley_bytes sort) {
    slog_instance *inst = (slog_instance *)instance;
    parley_status st;
    uint64_t phash;
    slog_entry *e;

    slog_metric_add(inst, inst->reads_total, 1);
    if ((st = slog_check_prefix(inst, op, table, partition)) != PARLEY_OK) return st;
    if ((st = slog_check_sort(inst, op, sort, "sort key")) != PARLEY_OK) return st;
    phash = slog_part_hash(slog_ptr(table), table.len, slog_ptr(partition), partition.len);

    pthread_rwlock_rdlock(&inst->lock);
    e = slog_index_get(inst, phash, slog_ptr(table), table.len, slog_ptr(partition), partition.len, slog_ptr(sort),
                       sort.len, NULL);
    if (e != NULL) (void)slog_emit_entry(inst, op, e);
    pthread_rwlock_unlock(&inst->lock);
    return PARLEY_OK;
}

static int slog_pos_less(slog_pos a, slog_pos b) {
    return a.ci < b.ci || (a.ci == b.ci && a.ei < b.ei);
}

static parley_status slog_scan(void *instance, parley_op *op, const parley_scan_request *request) {
    slog_instance *inst = (slog_instance *)instance;
    parley_scan_request req;
    size_t known;
    uint32_t size, limit, emitted = 0;
    int reverse;
    parley_bound_kind lower_kind, upper_kind;
    parley_status st;
    uint64_t phash;
    slog_part *p;

    slog_metric_add(inst, inst->reads_total, 1);
    if (request == NULL) return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": scan: request is NULL");
    size = request->struct_size;
    known = size < sizeof req ? size : sizeof req;
    memset(&req, 0, sizeof req);
    memcpy(&req, request, known);
    req.struct_size = (uint32_t)known;
    if (!PARLEY_HAS_FIELD(&req, parley_scan_request, partition))
        return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": scan: request struct_size %u is too small",
                         (unsigned)size);
    reverse = PARLEY_HAS_FIELD(&req, parley_scan_request, flags) && (req.flags & PARLEY_SCAN_REVERSE) != 0;
    lower_kind = PARLEY_HAS_FIELD(&req, parley_scan_request, lower_kind) ? req.lower_kind : PARLEY_BOUND_NONE;
    upper_kind = PARLEY_HAS_FIELD(&req, parley_scan_request, upper_kind) ? req.upper_kind : PARLEY_BOUND_NONE;
    limit = PARLEY_HAS_FIELD(&req, parley_scan_request, limit) ? req.limit : 0;

    if ((st = slog_check_prefix(inst, op, req.table, req.partition)) != PARLEY_OK) return st;
    if (PARLEY_HAS_FIELD(&req, parley_scan_request, flags) && (req.flags & ~(uint32_t)PARLEY_SCAN_REVERSE) != 0)
        return slog_fail(inst, op, PARLEY_E_UNSUPPORTED, SLOG_NAME ": scan: unknown flags 0x%x", (unsigned)req.flags);
    if (lower_kind != PARLEY_BOUND_NONE && lower_kind != PARLEY_BOUND_INCLUSIVE && lower_kind != PARLEY_BOUND_EXCLUSIVE)
        return slog_fail(inst, op, PARLEY_E_UNSUPPORTED, SLOG_NAME ": scan: unknown lower bound kind %d",
                         (int)lower_kind);
    if (upper_kind != PARLEY_BOUND_NONE && upper_kind != PARLEY_BOUND_INCLUSIVE && upper_kind != PARLEY_BOUND_EXCLUSIVE)
        return slog_fail(inst, op, PARLEY_E_UNSUPPORTED, SLOG_NAME ": scan: unknown upper bound kind %d",
                         (int)upper_kind);
    if (lower_kind != PARLEY_BOUND_NONE && (st = slog_check_sort(inst, op, req.lower, "scan lower bound")) != PARLEY_OK)
        return st;
    if (upper_kind != PARLEY_BOUND_NONE && (st = slog_check_sort(inst, op, req.upper, "scan upper bound")) != PARLEY_OK)
        return st;

    phash = slog_part_hash(slog_ptr(req.table), req.table.len, slog_ptr(req.partition), req.partition.len);
    pthread_rwlock_rdlock(&inst->lock);
    p = slog_find_part(inst, phash, slog_ptr(req.table), req.table.len, slog_ptr(req.partition), req.partition.len);
    if (p != NULL && p->nchunks > 0) {
        slog_pos start, end;
        if (lower_kind == PARLEY_BOUND_NONE) {
            start.ci = 0;
            start.ei = 0;
        } else {
            start = slog_bound(p, slog_ptr(req.lower), req.lower.len, lower_kind == PARLEY_BOUND_EXCLUSIVE);
        }
        if (upper_kind == PARLEY_BOUND_NONE) {
            end.ci = p->nchunks;
            end.ei = 0;
        } else {
            end = slog_bound(p, slog_ptr(req.upper), req.upper.len, upper_kind == PARLEY_BOUND_INCLUSIVE);
        }
        if (slog_pos_less(start, end)) {
            if (!reverse) {
                slog_pos at = start;
                while (slog_pos_less(at, end)) {
                    const slog_entry *e = &p->chunks[at.ci]->e[at.ei];
                    emitted++;
                    if (slog_emit_entry(inst, op, e) != 0) break;
                    if (limit != 0 && emitted >= limit) break;
                    if (++at.ei == p->chunks[at.ci]->n) {
                        at.ci++;
                        at.ei = 0;
                    }
                }
            } else {
                slog_pos at = end;
                for (;;) {
                    const slog_entry *e;
                    if (at.ei == 0) {
                        at.ci--;
                        at.ei = p->chunks[at.ci]->n - 1;
                    } else {
                        at.ei--;
                    }
                    if (slog_pos_less(at, start)) break;
                    e = &p->chunks[at.ci]->e[at.ei];
                    emitted++;
                    if (slog_emit_entry(inst, op, e) != 0) break;
                    if (limit != 0 && emitted >= limit) break;
                    if (!slog_pos_less(start, at)) break; /* just emitted start */
                }
            }
        }
    }
    pthread_rwlock_unlock(&inst->lock);
    return PARLEY_OK;
}

/* ------------------------------------------------------------------------ */
/* Storage: apply (validate, copy, queue)                                    */
/* ------------------------------------------------------------------------ */

static const char *slog_kind_name(int kind) {
    switch (kind) {
    case PARLEY_WRITE_PUT: return "put";
    case PARLEY_WRITE_DELETE: return "delete";
    case PARLEY_WRITE_PUT_IF_ABSENT: return "put-if-absent";
    case PARLEY_WRITE_COMPARE_AND_SET: return "compare-and-set";
    case PARLEY_WRITE_COUNTER_ADD: return "counter-add";
    }
    return "unknown";
}

static int slog_read_write(const unsigned char *base, size_t index, size_t write_size, parley_write *w) {
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

static parley_status slog_apply(void *instance, parley_op *op, const parley_write *writes, size_t count,
                                size_t write_size) {
    slog_instance *inst = (slog_instance *)instance;
    const unsigned char *base = (const unsigned char *)writes;
    parley_write w;
    slog_batch *b;
    unsigned char *buf;
    uint64_t data_bytes = 0, record_bytes = SLOG_RECORD_HEADER + SLOG_PAYLOAD_HEADER;
    size_t i, header_bytes;
    parley_status st;
    int failed;
    char why[512];

    slog_metric_add(inst, inst->batches_total, 1);
    if (count == 0) return PARLEY_OK;
    if (writes == NULL) return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": apply: writes is NULL");
    if (count > PARLEY_STORAGE_MAX_BATCH_WRITES)
        return slog_fail(inst, op, PARLEY_E_TOO_LARGE, SLOG_NAME ": apply: %zu writes in one batch; the limit is %u",
                         count, (unsigned)PARLEY_STORAGE_MAX_BATCH_WRITES);
    if (write_size < offsetof(parley_write, sort) + sizeof(parley_bytes))
        return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": apply: write_size %zu is too small", write_size);

    /* Pass 1: validate and size. */
    for (i = 0; i < count; i++) {
        const char *kind_name;
        uint64_t vlen = 0;
        if (!slog_read_write(base, i, write_size, &w))
            return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": apply: write %zu: struct_size is too small", i);
        kind_name = slog_kind_name((int)w.kind);
        if ((st = slog_check_prefix(inst, op, w.table, w.partition)) != PARLEY_OK) return st;
        if ((st = slog_check_sort(inst, op, w.sort, "sort key")) != PARLEY_OK) return st;
        switch (w.kind) {
        case PARLEY_WRITE_PUT:
        case PARLEY_WRITE_PUT_IF_ABSENT:
        case PARLEY_WRITE_COMPARE_AND_SET:
            if (!PARLEY_HAS_FIELD(&w, parley_write, value))
                return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": apply: write %zu (%s): struct_size lacks value",
                                 i, kind_name);
            if (!slog_bytes_valid(w.value))
                return slog_fail(inst, op, PARLEY_E_INVALID,
                                 SLOG_NAME ": apply: write %zu (%s): value has NULL data and a length", i, kind_name);
            if (w.value.len > PARLEY_STORAGE_MAX_VALUE_BYTES)
                return slog_fail(inst, op, PARLEY_E_TOO_LARGE,
                                 SLOG_NAME ": apply: write %zu (%s): value is %zu bytes; the limit is %u", i,
                                 kind_name, w.value.len, (unsigned)PARLEY_STORAGE_MAX_VALUE_BYTES);
            vlen = w.value.len;
            data_bytes += w.value.len;
            if (w.kind == PARLEY_WRITE_COMPARE_AND_SET) {
                if (!PARLEY_HAS_FIELD(&w, parley_write, expected) || !slog_bytes_valid(w.expected))
                    return slog_fail(inst, op, PARLEY_E_INVALID,
                                     SLOG_NAME ": apply: write %zu (%s): invalid expected value", i, kind_name);
                if (w.expected.len > PARLEY_STORAGE_MAX_VALUE_BYTES)
                    return slog_fail(inst, op, PARLEY_E_TOO_LARGE,
                                     SLOG_NAME ": apply: write %zu (%s): expected value is %zu bytes; the limit is %u",
                                     i, kind_name, w.expected.len, (unsigned)PARLEY_STORAGE_MAX_VALUE_BYTES);
                data_bytes += w.expected.len;
            }
            break;
        case PARLEY_WRITE_DELETE:
            break;
        case PARLEY_WRITE_COUNTER_ADD:
            if (!PARLEY_HAS_FIELD(&w, parley_write, delta))
                return slog_fail(inst, op, PARLEY_E_INVALID, SLOG_NAME ": apply: write %zu (%s): struct_size lacks delta",
                                 i, kind_name);
            vlen = 8;
            break;
        default:
            return slog_fail(inst, op, PARLEY_E_UNSUPPORTED, SLOG_NAME ": apply: write %zu has unknown kind %d", i,
                             (int)w.kind);
        }
        data_bytes += w.table.len + w.partition.len + w.sort.len;
        record_bytes += SLOG_OP_HEADER + w.table.len + w.partition.len + w.sort.len + vlen;
    }
    if (record_bytes > SLOG_MAX_RECORD)
        return slog_fail(inst, op, PARLEY_E_TOO_LARGE,
                         SLOG_NAME ": apply: the batch would be a %llu-byte log record; the limit is %llu bytes",
                         (unsigned long long)record_bytes, (unsigned long long)SLOG_MAX_RECORD);

    /* Pass 2: copy into one allocation. */
    header_bytes = sizeof(slog_batch) + count * sizeof(slog_wr);
    header_bytes = (header_bytes + 15u) & ~(size_t)15u;
    b = (slog_batch *)malloc(header_bytes + (size_t)data_bytes + 1);
    if (b == NULL) return slog_fail(inst, op, PARLEY_E_NOMEM, SLOG_NAME ": apply: out of memory copying the batch");
    memset(b, 0, sizeof *b);
    b->op = op;
    b->count = count;
    b->w = (slog_wr *)(void *)((unsigned char *)b + sizeof(slog_batch));
    b->record_bytes = record_bytes;
    buf = (unsigned char *)b + header_bytes;
    for (i = 0; i < count; i++) {
        slog_wr *x = &b->w[i];
        (void)slog_read_write(base, i, write_size, &w);
        memset(x, 0, sizeof *x);
        x->kind = (uint8_t)w.kind;
        x->tlen = (uint8_t)w.table.len;
        x->plen = (uint16_t)w.partition.len;
        x->slen = (uint16_t)w.sort.len;
        x->table = buf;
        if (w.table.len > 0) memcpy(buf, w.table.data, w.table.len);
        buf += w.table.len;
        x->part = buf;
        if (w.partition.len > 0) memcpy(buf, w.partition.data, w.partition.len);
        buf += w.partition.len;
        x->sort = buf;
        if (w.sort.len > 0) memcpy(buf, w.sort.data, w.sort.len);
        buf += w.sort.len;
        x->value = buf;
        if (w.kind == PARLEY_WRITE_PUT || w.kind == PARLEY_WRITE_PUT_IF_ABSENT || w.kind == PARLEY_WRITE_COMPARE_AND_SET) {
            x->vlen = (uint32_t)w.value.len;
            if (w.value.len > 0) memcpy(buf, w.value.data, w.value.len);
            buf += w.value.len;
        }
        x->expected = buf;
        if (w.kind == PARLEY_WRITE_COMPARE_AND_SET) {
            x->elen = (uint32_t)w.expected.len;
            if (w.expected.len > 0) memcpy(buf, w.expected.data, w.expected.len);
            buf += w.expected.len;
        }
        if (w.kind == PARLEY_WRITE_COUNTER_ADD) x->delta = w.delta;
        x->phash = slog_part_hash(x->table, x->tlen, x->part, x->plen);
        x->khash = slog_key_hash(x->phash, x->sort, x->slen);
    }

    pthread_mutex_lock(&inst->qmutex);
    failed = inst->failed || inst->stop;
    if (failed) snprintf(why, sizeof why, "%s", inst->failed ? inst->fail_message : "the plugin is shutting down");
    if (!failed) {
        if (inst->qtail != NULL)
            inst->qtail->next = b;
        else
            inst->qhead = b;
        inst->qtail = b;
        pthread_cond_signal(&inst->qcond);
    }
    pthread_mutex_unlock(&inst->qmutex);
    if (failed) {
        free(b);
        return slog_fail(inst, op, PARLEY_E_IO, SLOG_NAME ": writes are refused: %s", why);
    }
    return PARLEY_PENDING;
}

/* ------------------------------------------------------------------------ */
/* The writer: group evaluation                                              */
/* ------------------------------------------------------------------------ */

typedef struct slog_group {
    slog_batch **batches;
    size_t nbatches, batches_cap;
    slog_rop *rops;
    size_t nrops, rops_cap;
    slog_counter *ctrs;
    size_t nctrs, ctrs_cap;
    int32_t *heads;
    size_t nheads; /* buckets in use this group (a power of two) */
    size_t heads_cap;
} slog_group;

typedef struct slog_state {
    int present;
    const unsigned char *val;
    uint32_t vlen;
    uint32_t oldest;
} slog_state;

static int slog_wr_same_key(const slog_wr *a, const slog_wr *b) {
    return a->khash == b->khash && a->tlen == b->tlen && a->plen == b->plen && a->slen == b->slen &&
           memcmp(a->table, b->table, a->tlen) == 0 && memcmp(a->part, b->part, a->plen) == 0 &&
           memcmp(a->sort, b->sort, a->slen) == 0;
}

/* The state of w's key: earlier writes of this group first, then the committed index. */
static slog_state slog_lookup(const slog_instance *inst, const slog_group *g, const slog_wr *w) {
    slog_state s;
    int32_t i;
    slog_entry *e;
    for (i = g->heads[w->khash & (g->nheads - 1)]; i >= 0; i = g->rops[i].next) {
        const slog_rop *r = &g->rops[i];
        if (slog_wr_same_key(r->w, w)) {
            s.present = r->kind == SLOG_OP_PUT;
            s.val = r->val;
            s.vlen = r->vlen;
            s.oldest = r->oldest;
            return s;
        }
    }
    e = slog_index_get(inst, w->phash, w->table, w->tlen, w->part, w->plen, w->sort, w->slen, NULL);
    if (e == NULL) {
        s.present = 0;
        s.val = NULL;
        s.vlen = 0;
        s.oldest = 0;
    } else {
        s.present = 1;
        s.val = e->seg->base + e->off;
        s.vlen = e->vlen;
        s.oldest = e->oldest;
    }
    return s;
}

static slog_rop *slog_push_rop(slog_group *g, const slog_wr *w, uint8_t kind) {
    slog_rop *r = &g->rops[g->nrops];
    size_t bucket = w->khash & (g->nheads - 1);
    memset(r, 0, sizeof *r);
    r->w = w;
    r->kind = kind;
    r->next = g->heads[bucket];
    g->heads[bucket] = (int32_t)g->nrops;
    g->nrops++;
    return r;
}

static void slog_rollback_batch(slog_group *g, slog_batch *b) {
    while (g->nrops > b->rop_begin) {
        slog_rop *r = &g->rops[g->nrops - 1];
        g->heads[r->w->khash & (g->nheads - 1)] = r->next;
        g->nrops--;
    }
    g->nctrs = b->ctr_begin;
}

static SLOG_PRINTF(4, 5) void slog_batch_fail(slog_batch *b, parley_status status, int conflict, const char *fmt,
                                              ...) {
    va_list ap;
    size_t len;
    b->status = status;
    b->conflict = conflict;
    va_start(ap, fmt);
    slog_vformat(b->message, sizeof b->message, &len, fmt, ap);
    va_end(ap);
}

/* Evaluates batch b against the committed index and the group's earlier effects. */
static void slog_eval_batch(slog_instance *inst, slog_group *g, slog_batch *b) {
    size_t i;
    b->rop_begin = g->nrops;
    b->ctr_begin = g->nctrs;
    b->status = PARLEY_OK;
    for (i = 0; i < b->count; i++) {
        const slog_wr *w = &b->w[i];
        slog_state s = slog_lookup(inst, g, w);
        slog_rop *r;
        switch (w->kind) {
        case PARLEY_WRITE_PUT:
            r = slog_push_rop(g, w, SLOG_OP_PUT);
            r->val = w->value;
            r->vlen = w->vlen;
            r->oldest = s.present ? s.oldest : SLOG_PENDING_SEG;
            break;
        case PARLEY_WRITE_DELETE:
            if (s.present) {
                r = slog_push_rop(g, w, SLOG_OP_DEL);
                r->oldest = s.oldest;
            }
            break;
        case PARLEY_WRITE_PUT_IF_ABSENT:
            if (s.present) {
                b->fail_index = i;
                slog_batch_fail(b, PARLEY_E_CONFLICT, 1,
                                SLOG_NAME ": write %zu (put-if-absent): the row exists; nothing was applied", i);
                goto failed;
            }
            r = slog_push_rop(g, w, SLOG_OP_PUT);
            r->val = w->value;
            r->vlen = w->vlen;
            r->oldest = SLOG_PENDING_SEG;
            break;
        case PARLEY_WRITE_COMPARE_AND_SET:
            if (!s.present) {
                b->fail_index = i;
                slog_batch_fail(b, PARLEY_E_CONFLICT, 1,
                                SLOG_NAME ": write %zu (compare-and-set): the row does not exist; nothing was applied",
                                i);
                goto failed;
            }
            if (s.vlen != w->elen || (s.vlen > 0 && memcmp(s.val, w->expected, s.vlen) != 0)) {
                b->fail_index = i;
                slog_batch_fail(b, PARLEY_E_CONFLICT, 1,
                                SLOG_NAME ": write %zu (compare-and-set): the row holds another value; nothing was "
                                          "applied",
                                i);
                goto failed;
            }
            r = slog_push_rop(g, w, SLOG_OP_PUT);
            r->val = w->value;
            r->vlen = w->vlen;
            r->oldest = s.oldest;
            break;
        case PARLEY_WRITE_COUNTER_ADD: {
            int64_t old_value = 0, new_value;
            if (s.present) {
                if (s.vlen != 8) {
                    b->fail_index = i;
                    slog_batch_fail(b, PARLEY_E_INVALID, 0,
                                    SLOG_NAME ": write %zu (counter-add): the row holds %u bytes, not an 8-byte "
                                              "counter; nothing was applied",
                                    i, (unsigned)s.vlen);
                    goto failed;
                }
                old_value = slog_load_i64_le(s.val);
            }
            if ((w->delta > 0 && old_value > INT64_MAX - w->delta) || (w->delta < 0 && old_value < INT64_MIN - w->delta)) {
                b->fail_index = i;
                slog_batch_fail(b, PARLEY_E_INVALID, 0,
                                SLOG_NAME ": write %zu (counter-add): adding %lld to %lld overflows a signed 64-bit "
                                          "counter; nothing was applied",
                                i, (long long)w->delta, (long long)old_value);
                goto failed;
            }
            new_value = old_value + w->delta;
            r = slog_push_rop(g, w, SLOG_OP_PUT);
            slog_store_i64_le(r->cval, new_value);
            r->val = r->cval;
            r->vlen = 8;
            r->oldest = s.present ? s.oldest : SLOG_PENDING_SEG;
            g->ctrs[g->nctrs].index = i;
            g->ctrs[g->nctrs].value = (uint64_t)new_value;
            g->nctrs++;
            break;
        }
        /* No default: apply() queued only the kinds above. */
        }
    }
    b->rop_end = g->nrops;
    b->ctr_end = g->nctrs;
    return;
failed:
    slog_rollback_batch(g, b);
    b->rop_end = b->rop_begin;
    b->ctr_end = b->ctr_begin;
}

static int slog_gbuf_reserve(slog_instance *inst, size_t need) {
    if (need <= inst->gbuf_cap) return 0;
    {
        size_t cap = inst->gbuf_cap == 0 ? ((size_t)1 << 20) : inst->gbuf_cap;
        unsigned char *nb;
        while (cap < need) cap *= 2;
        nb = (unsigned char *)malloc(cap);
        if (nb == NULL) return -1;
        free(inst->gbuf);
        inst->gbuf = nb;
        inst->gbuf_cap = cap;
    }
    return 0;
}

/* Makes sure the active segment has room for `need` more bytes, rolling over if not. */
static int slog_ensure_room(slog_instance *inst, uint64_t need, char *msg, size_t msg_size) {
    slog_seg *a = slog_active(inst);
    if (a->size + need <= a->map_len) return 0;
    if (a->id == 99999999u) {
        snprintf(msg, msg_size, "segment ids are exhausted");
        return ENOSPC;
    }
    return slog_new_segment(inst, a->id + 1, need, msg, msg_size);
}

/* Cuts a segment back to `size` (after a failed write, or a torn group at recovery) and syncs
 * it. Returns 0 or an errno. */
static int slog_truncate_back(slog_seg *a, uint64_t size) {
    int r = 0;
    while (ftruncate(a->fd, (off_t)size) != 0) {
        if (errno == EINTR) continue;
        r = errno;
        break;
    }
    if (r == 0) r = slog_datasync(a->fd);
    return r;
}

static void slog_set_failed(slog_instance *inst, const char *why) {
    pthread_mutex_lock(&inst->qmutex);
    inst->failed = 1;
    snprintf(inst->fail_message, sizeof inst->fail_message, "%s", why);
    pthread_mutex_unlock(&inst->qmutex);
    slog_log(inst, PARLEY_LOG_ERROR, SLOG_NAME ": refusing further writes: %s", why);
}

/* Makes a group durable: writes the first len bytes of gbuf at base_off in target with one
 * pwrite, then one fdatasync. On failure the segment is cut back to base_off, so no group
 * ever follows a failed one; if even that fails, every further write is refused (`what_group`
 * names the group in that message). Returns 0, or the errno of the failure with a description
 * in msg and *maybe_kept set when the group may still be replayed after a restart (its write
 * completed, its sync failed and it could not be cut back). */
static int slog_write_group(slog_instance *inst, slog_seg *target, size_t len, uint64_t base_off,
                            const char *what_group, char *msg, size_t msg_size, int *maybe_kept) {
    const char *what = "write";
    int r = slog_pwrite_all(target->fd, inst->gbuf, len, base_off), t;
    *maybe_kept = 0;
    if (r == 0) {
        what = "fdatasync";
        r = slog_datasync(target->fd);
    }
    if (r == 0) return 0;
    snprintf(msg, msg_size, "%s of %zu bytes to '%s' failed: %s", what, len, target->path, strerror(r));
    t = slog_truncate_back(target, base_off);
    if (t != 0) {
        char why[512];
        /* A write that failed left an incomplete group at the end, which recovery cuts off. */
        *maybe_kept = strcmp(what, "fdatasync") == 0;
        snprintf(why, sizeof why,
                 "after a failed %s of %s, '%s' could not be cut back to %llu bytes (%s); restart the server so "
                 "recovery can check the log",
                 what, what_group, target->path, (unsigned long long)base_off, strerror(t));
        slog_set_failed(inst, why);
    }
    return r;
}

static void slog_update_gauges(slog_instance *inst) {
    uint64_t total = 0, live = 0;
    size_t i;
    for (i = 0; i < inst->nsegs; i++) {
        total += inst->segs[i]->size - SLOG_HEADER_BYTES;
        live += inst->segs[i]->live + inst->segs[i]->tomb_live;
    }
    slog_metric_set(inst, inst->g_segments, (double)inst->nsegs);
    slog_metric_set(inst, inst->g_live, (double)live);
    slog_metric_set(inst, inst->g_dead, (double)(total > live ? total - live : 0));
    slog_metric_set(inst, inst->g_rows, (double)inst->index_rows);
}

/* Writes an op header: kind, key lengths, then the value length (a put) or "since" (a delete). */
static void slog_write_op_header(unsigned char *p, uint8_t kind, const slog_wr *w, uint32_t vlen_or_since) {
    p[0] = kind;
    p[1] = w->tlen;
    slog_put16(p + 2, w->plen);
    slog_put16(p + 4, w->slen);
    slog_put32(p + 6, vlen_or_since);
}

/* Runs one group: evaluate, write, sync, publish, complete. */
static void slog_run_group(slog_instance *inst, slog_group *g) {
    size_t i, total_writes = 0, nheads = 16;
    uint64_t total_bytes = 0;
    uint64_t started = slog_now_ns();
    parley_status group_status = PARLEY_OK;
    char msg[512];
    slog_seg *target = NULL;
    uint64_t base_off = 0;

    msg[0] = '\0';
    for (i = 0; i < g->nbatches; i++) total_writes += g->batches[i]->count;
    while (nheads < total_writes * 2) nheads *= 2;
    if (g->rops_cap < total_writes) {
        size_t cap = total_writes < 4096 ? 4096 : total_writes;
        slog_rop *nr = (slog_rop *)realloc(g->rops, cap * sizeof *nr);
        slog_counter *nc = (slog_counter *)realloc(g->ctrs, cap * sizeof *nc);
        if (nr != NULL) g->rops = nr;
        if (nc != NULL) g->ctrs = nc;
        if (nr == NULL || nc == NULL) {
            group_status = PARLEY_E_NOMEM;
            snprintf(msg, sizeof msg, SLOG_NAME ": out of memory evaluating a group of %zu batches", g->nbatches);
            goto complete;
        }
        g->rops_cap = cap;
        g->ctrs_cap = cap;
    }
    if (g->heads_cap < nheads) {
        int32_t *nh = (int32_t *)realloc(g->heads, nheads * sizeof *nh);
        if (nh == NULL) {
            group_status = PARLEY_E_NOMEM;
            snprintf(msg, sizeof msg, SLOG_NAME ": out of memory evaluating a group of %zu batches", g->nbatches);
            goto complete;
        }
        g->heads = nh;
        g->heads_cap = nheads;
    }
    /* Exactly nheads buckets, sized to this group (cheap to clear). */
    memset(g->heads, 0xFF, nheads * sizeof *g->heads);
    g->nheads = nheads;
    {
        g->nrops = 0;
        g->nctrs = 0;
        for (i = 0; i < g->nbatches; i++) {
            slog_batch *b = g->batches[i];
            slog_eval_batch(inst, g, b);
            if (b->status == PARLEY_OK && b->rop_end > b->rop_begin) {
                uint64_t rb = SLOG_RECORD_HEADER + SLOG_PAYLOAD_HEADER;
                size_t j;
                for (j = b->rop_begin; j < b->rop_end; j++) {
                    const slog_rop *r = &g->rops[j];
                    rb += SLOG_OP_HEADER + r->w->tlen + r->w->plen + r->w->slen + (r->kind == SLOG_OP_PUT ? r->vlen : 0);
                }
                b->record_bytes = rb;
                total_bytes += rb;
            } else {
                b->record_bytes = 0;
            }
        }
    }
    if (total_bytes == 0) goto complete; /* nothing to write: failed conditions and no-op deletes only */
    total_bytes += SLOG_GROUP_HEADER;

    /* Where the group goes: all of it in the active segment (a group never spans segments). */
    {
        char why[256];
        int r = slog_ensure_room(inst, total_bytes, why, sizeof why);
        if (r != 0) {
            snprintf(msg, sizeof msg, SLOG_NAME ": cannot start a new segment: %s; nothing was applied", why);
            slog_log(inst, PARLEY_LOG_ERROR, "%s", msg);
            group_status = PARLEY_E_IO;
            goto complete;
        }
    }
    target = slog_active(inst);
    base_off = target->size;
    if (slog_gbuf_reserve(inst, (size_t)total_bytes) != 0) {
        group_status = PARLEY_E_NOMEM;
        snprintf(msg, sizeof msg, SLOG_NAME ": out of memory building a %llu-byte group; nothing was applied",
                 (unsigned long long)total_bytes);
        goto complete;
    }
    /* Serialize: the group header, then one record per successful batch. */
    {
        unsigned char *out = inst->gbuf + SLOG_GROUP_HEADER;
        slog_make_group_header(inst, target->nonce, inst->gbuf, total_bytes, inst->next_group_seq);
        for (i = 0; i < g->nbatches; i++) {
            slog_batch *b = g->batches[i];
            unsigned char *rec = out, *payload;
            size_t j;
            uint32_t plen;
            if (b->status != PARLEY_OK || b->record_bytes == 0) continue;
            payload = rec + SLOG_RECORD_HEADER;
            memset(payload, 0, SLOG_PAYLOAD_HEADER);
            slog_put32(payload + 4, (uint32_t)(b->rop_end - b->rop_begin));
            out = payload + SLOG_PAYLOAD_HEADER;
            for (j = b->rop_begin; j < b->rop_end; j++) {
                slog_rop *r = &g->rops[j];
                const slog_wr *w = r->w;
                if (r->kind == SLOG_OP_PUT) {
                    slog_write_op_header(out, SLOG_OP_PUT, w, r->vlen);
                } else {
                    uint32_t since = r->oldest == SLOG_PENDING_SEG ? target->id : r->oldest;
                    slog_write_op_header(out, SLOG_OP_DEL, w, since);
                }
                out += SLOG_OP_HEADER;
                if (w->tlen > 0) memcpy(out, w->table, w->tlen);
                out += w->tlen;
                if (w->plen > 0) memcpy(out, w->part, w->plen);
                out += w->plen;
                if (w->slen > 0) memcpy(out, w->sort, w->slen);
                out += w->slen;
                if (r->kind == SLOG_OP_PUT) {
                    r->val_off = (uint32_t)(base_off + (uint64_t)(out - inst->gbuf));
                    if (r->vlen > 0) memcpy(out, r->val, r->vlen);
                    out += r->vlen;
                }
            }
            plen = (uint32_t)(out - payload);
            slog_put32(rec, plen);
            slog_put32(rec + 4, slog_record_crc(inst, rec, payload, plen));
        }
    }
    /* One write, one sync. */
    {
        char what[400];
        int kept = 0;
        if (slog_write_group(inst, target, (size_t)total_bytes, base_off, "a group commit", what, sizeof what,
                             &kept) != 0) {
            group_status = PARLEY_E_IO;
            if (kept)
                snprintf(msg, sizeof msg,
                         SLOG_NAME ": %s, and the segment could not be cut back; the batches failed, but they may be "
                                   "kept after a restart",
                         what);
            else
                snprintf(msg, sizeof msg, SLOG_NAME ": %s; nothing was applied", what);
            slog_log(inst, PARLEY_LOG_ERROR, "%s", msg);
            goto complete;
        }
    }
    inst->next_group_seq++;
    slog_metric_observe(inst, inst->commit_seconds, (double)(slog_now_ns() - started) / 1e9);
    slog_metric_add(inst, inst->commits_total, 1);

    /* Publish. */
    pthread_rwlock_wrlock(&inst->lock);
    target->size = base_off + total_bytes;
    for (i = 0; i < g->nbatches; i++) {
        slog_batch *b = g->batches[i];
        size_t j;
        if (b->status != PARLEY_OK) continue;
        for (j = b->rop_begin; j < b->rop_end; j++) {
            const slog_rop *r = &g->rops[j];
            const slog_wr *w = r->w;
            if (r->kind == SLOG_OP_PUT) {
                if (slog_index_put(inst, w->phash, w->table, w->tlen, w->part, w->plen, w->sort, w->slen, target,
                                   r->val_off, r->vlen) != 0) {
                    pthread_rwlock_unlock(&inst->lock);
                    slog_set_failed(inst, "out of memory indexing committed data; restart the server");
                    group_status = PARLEY_E_NOMEM;
                    snprintf(msg, sizeof msg,
                             SLOG_NAME ": out of memory indexing a committed group; the batch may be durable but is "
                                       "not visible until a restart");
                    goto complete;
                }
            } else {
                slog_index_del(inst, w->phash, w->table, w->tlen, w->part, w->plen, w->sort, w->slen);
            }
        }
    }
    pthread_rwlock_unlock(&inst->lock);

complete:
    for (i = 0; i < g->nbatches; i++) {
        slog_batch *b = g->batches[i];
        parley_bytes empty = {NULL, 0};
        if (group_status != PARLEY_OK) {
            inst->api->set_error(b->op, msg, strlen(msg));
            slog_metric_add(inst, inst->errors_total, 1);
            inst->api->complete(b->op, group_status);
        } else if (b->status != PARLEY_OK) {
            if (b->conflict) inst->api->emit_item(b->op, b->fail_index, PARLEY_E_CONFLICT, 0, empty);
            inst->api->set_error(b->op, b->message, strlen(b->message));
            slog_metric_add(inst, inst->errors_total, 1);
            inst->api->complete(b->op, b->status);
        } else {
            size_t j;
            for (j = b->ctr_begin; j < b->ctr_end; j++)
                inst->api->emit_item(b->op, g->ctrs[j].index, PARLEY_OK, g->ctrs[j].value, empty);
            slog_metric_add(inst, inst->writes_total, (uint64_t)b->count);
            inst->api->complete(b->op, PARLEY_OK);
        }
        free(b);
    }
    g->nbatches = 0;
    if (inst->gbuf_cap > ((size_t)64 << 20)) {
        free(inst->gbuf);
        inst->gbuf = NULL;
        inst->gbuf_cap = 0;
    }
    slog_update_gauges(inst);
}

/* ------------------------------------------------------------------------ */
/* The writer: compaction                                                    */
/* ------------------------------------------------------------------------ */

static slog_seg *slog_pick_compaction(const slog_instance *inst) {
    size_t i;
    slog_seg *best = NULL;
    double best_share = 0.0;
    if (inst->nsegs < 2) return NULL;
    for (i = 0; i + 1 < inst->nsegs; i++) {
        slog_seg *s = inst->segs[i];
        uint64_t total = s->size - SLOG_HEADER_BYTES;
        double share;
        if (s->no_compact) continue;
        if (total == 0) {
            share = 1.0;
        } else {
            uint64_t kept = s->live + s->tomb_live;
            uint64_t dead = total > kept ? total - kept : 0;
            share = (double)dead / (double)total;
        }
        if (share >= inst->dead_ratio && share > best_share) {
            best = s;
            best_share = share;
        }
    }
    return best;
}

/* Gives up compacting cseg until a restart: for damage found in it, or an internal error. */
static void slog_compaction_abort(slog_instance *inst, const char *why) {
    slog_log(inst, PARLEY_LOG_ERROR, SLOG_NAME ": compaction of '%s' stopped: %s; the segment is kept",
             inst->cseg->path, why);
    inst->cseg->no_compact = 1;
    inst->cseg = NULL;
}

/* Where a compaction step starts in cseg, so that a step that cannot finish (no room for a new
 * segment, no memory, an I/O error in its write) is done again later from the same place. */
typedef struct slog_cpos {
    uint64_t crec, cop_off, crec_end;
    uint32_t cop, crec_ops;
} slog_cpos;

static void slog_compaction_save(const slog_instance *inst, slog_cpos *p) {
    p->crec = inst->crec;
    p->cop_off = inst->cop_off;
    p->crec_end = inst->crec_end;
    p->cop = inst->cop;
    p->crec_ops = inst->crec_ops;
}

/* Puts cseg's position back to where the step started and retries it after
 * SLOG_COMPACT_RETRY_NS. The step's scan changed nothing the retry depends on (it only lowers
 * an entry's "oldest", which the retry lowers the same way). */
static void slog_compaction_postpone(slog_instance *inst, const slog_cpos *p, const char *why) {
    slog_log(inst, PARLEY_LOG_WARNING, SLOG_NAME ": compaction step of '%s' postponed: %s", inst->cseg->path, why);
    inst->crec = p->crec;
    inst->cop_off = p->cop_off;
    inst->crec_end = p->crec_end;
    inst->cop = p->cop;
    inst->crec_ops = p->crec_ops;
    inst->compact_retry_ns = slog_now_ns() + SLOG_COMPACT_RETRY_NS;
}

/* Removes the fully copied segment cseg. */
static void slog_compaction_finish(slog_instance *inst) {
    slog_seg *s = inst->cseg;
    size_t i;
    int r;
    if (s->live != 0) {
        char why[128];
        snprintf(why, sizeof why, "%llu live bytes remain after copying (internal error)",
                 (unsigned long long)s->live);
        slog_compaction_abort(inst, why);
        return;
    }
    if (unlink(s->path) != 0) {
        char why[256];
        snprintf(why, sizeof why, "cannot remove the file: %s", strerror(errno));
        slog_compaction_abort(inst, why);
        return;
    }
    if ((r = slog_fsync_dir(inst->folder)) != 0)
        slog_log(inst, PARLEY_LOG_WARNING, SLOG_NAME ": fsync of folder '%s' after removing '%s' failed: %s",
                 inst->folder, s->path, strerror(r));
    pthread_rwlock_wrlock(&inst->lock);
    for (i = 0; i < inst->nsegs; i++)
        if (inst->segs[i] == s) break;
    if (i < inst->nsegs) {
        memmove(&inst->segs[i], &inst->segs[i + 1], (inst->nsegs - i - 1) * sizeof *inst->segs);
        inst->nsegs--;
    }
    pthread_rwlock_unlock(&inst->lock);
    slog_log(inst, PARLEY_LOG_DEBUG, SLOG_NAME ": compacted and removed '%s'", s->path);
    slog_seg_close(s);
    inst->cseg = NULL;
    slog_metric_add(inst, inst->compactions_total, 1);
}

/* One bounded step of compaction. */
static void slog_compaction_step(slog_instance *inst) {
    slog_seg *s = inst->cseg;
    slog_copy *copies = NULL;
    size_t ncopies = 0, copies_cap = 0, i;
    uint64_t copy_bytes = 0, scanned = 0, rec_bytes;
    slog_cpos start;
    char msg[512];

    if (s == NULL) {
        s = slog_pick_compaction(inst);
        if (s == NULL) return;
        inst->cseg = s;
        inst->crec = SLOG_HEADER_BYTES;
        inst->crec_ops = 0;
        inst->cop = 0;
        inst->cop_off = 0;
        inst->crec_end = SLOG_HEADER_BYTES;
        slog_log(inst, PARLEY_LOG_DEBUG, SLOG_NAME ": compacting '%s' (%llu of %llu bytes live)", s->path,
                 (unsigned long long)s->live, (unsigned long long)(s->size - SLOG_HEADER_BYTES));
    }
    inst->last_step_ns = slog_now_ns();
    slog_compaction_save(inst, &start);

    /* Collect what must be copied. */
    while (copy_bytes < SLOG_STEP_COPY_BYTES && scanned < SLOG_STEP_SCAN_BYTES) {
        slog_op_view v;
        if (inst->cop == inst->crec_ops) {
            /* Next record. */
            uint32_t plen = 0, nops = 0;
            uint64_t gbytes = 0, gseq = 0;
            int c;
            inst->crec = inst->crec_end;
            if (inst->crec >= s->size) break;
            if (slog_check_group_header(inst, s->nonce, s->base, s->size, inst->crec, 0, 0, &gbytes, &gseq) == 0) {
                /* A group header (recovery or this writer has checked the group): no ops. */
                inst->crec_ops = 0;
                inst->cop = 0;
                inst->crec_end = inst->crec + SLOG_GROUP_HEADER;
                scanned += SLOG_GROUP_HEADER;
                continue;
            }
            c = slog_check_record(inst, s->base, s->size, inst->crec, &plen, &nops);
            if (c != 0) {
                char why[256];
                free(copies);
                snprintf(why, sizeof why, "the record at offset %llu is damaged (found while compacting)",
                         (unsigned long long)inst->crec);
                slog_compaction_abort(inst, why);
                return;
            }
            inst->crec_ops = nops;
            inst->cop = 0;
            inst->cop_off = inst->crec + SLOG_RECORD_HEADER + SLOG_PAYLOAD_HEADER;
            inst->crec_end = inst->crec + SLOG_RECORD_HEADER + plen;
            scanned += SLOG_RECORD_HEADER + SLOG_PAYLOAD_HEADER;
            continue;
        }
        (void)slog_decode_op(s->base + inst->cop_off, inst->crec_end - inst->cop_off, &v);
        inst->cop++;
        inst->cop_off += v.len;
        scanned += v.len;
        {
            uint64_t phash = slog_part_hash(v.table, v.tlen, v.part, v.plen);
            slog_entry *e = slog_index_get(inst, phash, v.table, v.tlen, v.part, v.plen, v.sort, v.slen, NULL);
            uint32_t since = 0;
            int copy = 0;
            if (v.kind == SLOG_OP_PUT) {
                copy = e != NULL && e->seg == s && e->off == (uint32_t)(v.value - s->base);
            } else if (e != NULL) {
                /* Written again since: the tombstone is superseded. Older puts of the key stay
                 * hidden by the newer put; the next tombstone must reach back as far. */
                if (v.since < e->oldest) e->oldest = v.since;
            } else {
                since = slog_first_seg_in(inst, v.since, s->id);
                copy = since != 0;
            }
            if (copy) {
                if (ncopies == copies_cap) {
                    size_t cap = copies_cap == 0 ? 256 : copies_cap * 2;
                    slog_copy *nc = (slog_copy *)realloc(copies, cap * sizeof *nc);
                    if (nc == NULL) {
                        free(copies);
                        slog_compaction_postpone(inst, &start, "out of memory");
                        return;
                    }
                    copies = nc;
                    copies_cap = cap;
                }
                copies[ncopies].op = v.start;
                copies[ncopies].op_len = v.len;
                copies[ncopies].since = since;
                copies[ncopies].new_val_off = 0;
                ncopies++;
                copy_bytes += v.len;
            }
        }
    }

    if (ncopies > 0) {
        slog_seg *target;
        uint64_t base_off;
        unsigned char *rec, *payload, *out;
        int r;
        /* One group of one record: the group header, then the copies. */
        rec_bytes = SLOG_GROUP_HEADER + SLOG_RECORD_HEADER + SLOG_PAYLOAD_HEADER + copy_bytes;
        if ((r = slog_ensure_room(inst, rec_bytes, msg, sizeof msg)) != 0 ||
            slog_gbuf_reserve(inst, (size_t)rec_bytes) != 0) {
            free(copies);
            slog_compaction_postpone(inst, &start, r != 0 ? msg : "out of memory");
            return;
        }
        target = slog_active(inst);
        base_off = target->size;
        rec = inst->gbuf + SLOG_GROUP_HEADER;
        payload = rec + SLOG_RECORD_HEADER;
        memset(payload, 0, SLOG_PAYLOAD_HEADER);
        payload[0] = SLOG_FLAG_COMPACTION;
        slog_put32(payload + 4, (uint32_t)ncopies);
        out = payload + SLOG_PAYLOAD_HEADER;
        for (i = 0; i < ncopies; i++) {
            memcpy(out, copies[i].op, copies[i].op_len);
            if (out[0] != SLOG_OP_PUT) {
                out[0] = SLOG_OP_DEL_COPY;
                slog_put32(out + 6, copies[i].since);
            } else {
                copies[i].new_val_off =
                    (uint32_t)(base_off + (uint64_t)(out - inst->gbuf) + SLOG_OP_HEADER + out[1] + slog_get16(out + 2) +
                               slog_get16(out + 4));
            }
            out += copies[i].op_len;
        }
        slog_put32(rec, (uint32_t)(out - payload));
        slog_put32(rec + 4, slog_record_crc(inst, rec, payload, (size_t)(out - payload)));
        slog_make_group_header(inst, target->nonce, inst->gbuf, rec_bytes, inst->next_group_seq);
        {
            int kept = 0;
            if (slog_write_group(inst, target, (size_t)rec_bytes, base_off, "a compaction step", msg, sizeof msg,
                                 &kept) != 0) {
                /* An I/O error (a full disk, EIO) is no damage of the segment: try the step again
                 * later. (If the segment could not be cut back, writes are now refused, and so is
                 * compaction.) */
                free(copies);
                slog_compaction_postpone(inst, &start, msg);
                return;
            }
        }
        inst->next_group_seq++;
        /* Publish: the copies become the rows' locations. */
        pthread_rwlock_wrlock(&inst->lock);
        target->size = base_off + rec_bytes;
        for (i = 0; i < ncopies; i++) {
            const unsigned char *op = copies[i].op;
            slog_op_view v;
            (void)slog_decode_op(op, copies[i].op_len, &v);
            if (v.kind == SLOG_OP_PUT) {
                uint64_t phash = slog_part_hash(v.table, v.tlen, v.part, v.plen);
                slog_part *p;
                slog_entry *e = slog_index_get(inst, phash, v.table, v.tlen, v.part, v.plen, v.sort, v.slen, &p);
                if (e != NULL && e->seg == s) {
                    uint64_t ob = slog_entry_op_bytes(p, e);
                    s->live -= ob;
                    target->live += ob;
                    e->seg = target;
                    e->off = copies[i].new_val_off;
                }
            } else {
                target->tomb_live += v.len;
            }
        }
        pthread_rwlock_unlock(&inst->lock);
    }
    free(copies);
    if (inst->cop == inst->crec_ops && inst->crec_end >= s->size) slog_compaction_finish(inst);
    slog_update_gauges(inst);
}

static int slog_compaction_pending(const slog_instance *inst) {
    if (inst->failed) return 0;
    if (inst->compact_retry_ns != 0 && slog_now_ns() < inst->compact_retry_ns) return 0;
    if (inst->cseg != NULL) return 1;
    return slog_pick_compaction(inst) != NULL;
}

/* When compaction waits for compact_retry_ns (after a postponed step) and has work then, that
 * time (CLOCK_MONOTONIC nanoseconds); otherwise 0. */
static uint64_t slog_compaction_retry_at(const slog_instance *inst) {
    if (inst->failed || inst->compact_retry_ns == 0 || slog_now_ns() >= inst->compact_retry_ns) return 0;
    if (inst->cseg == NULL && slog_pick_compaction(inst) == NULL) return 0;
    return inst->compact_retry_ns;
}

/* ------------------------------------------------------------------------ */
/* The writer thread                                                         */
/* ------------------------------------------------------------------------ */

static void *slog_writer_main(void *arg) {
    slog_instance *inst = (slog_instance *)arg;
    slog_group g;
    memset(&g, 0, sizeof g);
    for (;;) {
        int work_compaction;
        uint64_t retry_at;
        size_t taken_bytes = 0;
        pthread_mutex_lock(&inst->qmutex);
        for (;;) {
            work_compaction = !inst->stop && slog_compaction_pending(inst);
            if (inst->qhead != NULL || inst->stop || work_compaction) break;
            retry_at = slog_compaction_retry_at(inst);
            if (retry_at != 0) {
                /* A postponed compaction step: resume it then, even if no write arrives. */
                struct timespec until;
                until.tv_sec = (time_t)(retry_at / 1000000000ull);
                until.tv_nsec = (long)(retry_at % 1000000000ull);
                (void)pthread_cond_timedwait(&inst->qcond, &inst->qmutex, &until);
            } else {
                pthread_cond_wait(&inst->qcond, &inst->qmutex);
            }
        }
        if (inst->qhead == NULL && inst->stop) {
            pthread_mutex_unlock(&inst->qmutex);
            break;
        }
        /* Take a group. */
        while (inst->qhead != NULL && g.nbatches < inst->group_max &&
               (g.nbatches == 0 || taken_bytes + inst->qhead->record_bytes <= SLOG_GROUP_MAX_BYTES)) {
            slog_batch *b = inst->qhead;
            if (g.nbatches == g.batches_cap) {
                size_t cap = g.batches_cap == 0 ? 64 : g.batches_cap * 2;
                slog_batch **nb = (slog_batch **)realloc(g.batches, cap * sizeof *nb);
                if (nb == NULL) break;
                g.batches = nb;
                g.batches_cap = cap;
            }
            inst->qhead = b->next;
            if (inst->qhead == NULL) inst->qtail = NULL;
            b->next = NULL;
            g.batches[g.nbatches++] = b;
            taken_bytes += (size_t)b->record_bytes;
        }
        pthread_mutex_unlock(&inst->qmutex);

        if (g.nbatches > 0) {
            if (inst->failed) {
                size_t i;
                for (i = 0; i < g.nbatches; i++) {
                    slog_batch *b = g.batches[i];
                    char m[640];
                    snprintf(m, sizeof m, SLOG_NAME ": writes are refused: %s", inst->fail_message);
                    inst->api->set_error(b->op, m, strlen(m));
                    slog_metric_add(inst, inst->errors_total, 1);
                    inst->api->complete(b->op, PARLEY_E_IO);
                    free(b);
                }
                g.nbatches = 0;
                continue;
            }
            slog_run_group(inst, &g);
        }
        /* Compaction between groups: always when idle, otherwise paced. (stop is set by
         * destroy() under qmutex; failed only by this thread.) */
        if (!inst->failed) {
            int idle, stop;
            pthread_mutex_lock(&inst->qmutex);
            idle = inst->qhead == NULL;
            stop = inst->stop;
            pthread_mutex_unlock(&inst->qmutex);
            if (!stop && slog_compaction_pending(inst) &&
                (idle || slog_now_ns() - inst->last_step_ns >= SLOG_STEP_INTERVAL_NS))
                slog_compaction_step(inst);
        }
    }
    free(g.batches);
    free(g.rops);
    free(g.ctrs);
    free(g.heads);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Create / destroy                                                          */
/* ------------------------------------------------------------------------ */

static void slog_destroy(void *instance) {
    slog_instance *inst = (slog_instance *)instance;
    size_t i;
    if (inst == NULL) return;
    if (inst->writer_started) {
        pthread_mutex_lock(&inst->qmutex);
        inst->stop = 1;
        pthread_cond_broadcast(&inst->qcond);
        pthread_mutex_unlock(&inst->qmutex);
        (void)pthread_join(inst->writer, NULL);
    }
    if (inst->writer_started) slog_log(inst, PARLEY_LOG_INFO, SLOG_NAME ": closed '%s'", inst->folder);
    slog_free_index(inst);
    for (i = 0; i < inst->nsegs; i++) slog_seg_close(inst->segs[i]);
    free(inst->segs);
    free(inst->gbuf);
    if (inst->lock_fd >= 0) (void)close(inst->lock_fd); /* releases the flock */
    pthread_rwlock_destroy(&inst->lock);
    pthread_mutex_destroy(&inst->qmutex);
    pthread_cond_destroy(&inst->qcond);
    free(inst->folder);
    free(inst);
}

/* Parses a decimal integer in [lo, hi]. */
static int slog_parse_uint(const char *text, unsigned long lo, unsigned long hi, unsigned long *out) {
    unsigned long long v;
    char *end = NULL;
    const char *p;
    if (text == NULL || *text == '\0') return 0;
    for (p = text; *p != '\0'; p++)
        if (*p < '0' || *p > '9') return 0;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno != 0 || end == NULL || *end != '\0' || v < lo || v > hi) return 0;
    *out = (unsigned long)v;
    return 1;
}

static int slog_parse_ratio(const char *text, double *out) {
    char *end = NULL;
    double v;
    if (text == NULL || *text == '\0') return 0;
    errno = 0;
    v = strtod(text, &end);
    if (errno != 0 || end == NULL || *end != '\0' || !(v >= 0.1 - 1e-9 && v <= 0.9 + 1e-9)) return 0;
    *out = v;
    return 1;
}

static int slog_seg_name_id(const char *name, uint32_t *id) {
    size_t i;
    uint32_t v = 0;
    if (strlen(name) != 12 || strcmp(name + 8, ".log") != 0) return 0;
    for (i = 0; i < 8; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        v = v * 10u + (uint32_t)(name[i] - '0');
    }
    if (v == 0) return 0;
    *id = v;
    return 1;
}

static int slog_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* Creates the folder if needed (mode 0700) and takes the lock. */
static parley_status slog_open_folder(slog_instance *inst, char *error, size_t error_size) {
    struct stat sb;
    char *lock_path;
    size_t n;
    if (stat(inst->folder, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return slog_create_fail(error, error_size, PARLEY_E_INVALID,
                                    SLOG_NAME ": path '%s' is not a folder; storage-log keeps its segment files in a "
                                              "folder (set path to a folder, which is created if missing)",
                                    inst->folder);
    } else if (errno == ENOENT) {
        if (mkdir(inst->folder, 0700) != 0) {
            int e = errno;
            if (e == ENOENT)
                return slog_create_fail(error, error_size, PARLEY_E_IO,
                                        SLOG_NAME ": cannot create folder '%s': its parent folder does not exist "
                                                  "(create it first)",
                                        inst->folder);
            return slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot create folder '%s': %s",
                                    inst->folder, strerror(e));
        }
        {
            /* Make the new folder's entry durable in its parent. */
            char *parent = strdup(inst->folder);
            char *slash = parent != NULL ? strrchr(parent, '/') : NULL;
            if (parent != NULL) {
                if (slash == NULL)
                    (void)slog_fsync_dir(".");
                else {
                    if (slash == parent) slash[1] = '\0';
                    else *slash = '\0';
                    (void)slog_fsync_dir(parent);
                }
                free(parent);
            }
        }
    } else {
        return slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot open folder '%s': %s",
                                inst->folder, strerror(errno));
    }
    n = strlen(inst->folder) + sizeof(SLOG_LOCK_FILE) + 2;
    lock_path = (char *)malloc(n);
    if (lock_path == NULL) return slog_create_fail(error, error_size, PARLEY_E_NOMEM, SLOG_NAME ": out of memory");
    snprintf(lock_path, n, "%s/%s", inst->folder, SLOG_LOCK_FILE);
    inst->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (inst->lock_fd < 0) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot open lock file '%s': %s",
                                            lock_path, strerror(errno));
        free(lock_path);
        return st;
    }
    while (flock(inst->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        parley_status st;
        if (e == EINTR) continue;
        if (e == EWOULDBLOCK)
            st = slog_create_fail(error, error_size, PARLEY_E_BUSY,
                                  SLOG_NAME ": folder '%s' is in use by another process or plugin instance (its lock "
                                            "file '%s' is locked); only one may open it at a time",
                                  inst->folder, lock_path);
        else
            st = slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot lock '%s': %s", lock_path,
                                  strerror(e));
        free(lock_path);
        return st;
    }
    free(lock_path);
    return PARLEY_OK;
}

/* Lists the segment ids in the folder, refusing foreign files. */
static parley_status slog_list_segments(slog_instance *inst, uint32_t **ids_out, size_t *n_out, char *error,
                                        size_t error_size) {
    DIR *d = opendir(inst->folder);
    struct dirent *de;
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    *ids_out = NULL;
    *n_out = 0;
    if (d == NULL)
        return slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot list folder '%s': %s",
                                inst->folder, strerror(errno));
    while ((de = readdir(d)) != NULL) {
        uint32_t id;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 || strcmp(de->d_name, SLOG_LOCK_FILE) == 0)
            continue;
        if (!slog_seg_name_id(de->d_name, &id)) {
            parley_status st = slog_create_fail(
                error, error_size, PARLEY_E_CORRUPT,
                SLOG_NAME ": folder '%s' holds '%s', which is not a storage-log file; refusing to use a folder with "
                          "foreign files (point path at an empty or storage-log folder)",
                inst->folder, de->d_name);
            free(ids);
            closedir(d);
            return st;
        }
        if (n == cap) {
            size_t ncap = cap == 0 ? 64 : cap * 2;
            uint32_t *ni = (uint32_t *)realloc(ids, ncap * sizeof *ni);
            if (ni == NULL) {
                free(ids);
                closedir(d);
                return slog_create_fail(error, error_size, PARLEY_E_NOMEM, SLOG_NAME ": out of memory");
            }
            ids = ni;
            cap = ncap;
        }
        ids[n++] = id;
    }
    closedir(d);
    if (n > 1) qsort(ids, n, sizeof *ids, slog_cmp_u32);
    *ids_out = ids;
    *n_out = n;
    return PARLEY_OK;
}

/* Opens, checks and replays segment id; last says whether it is the newest. */
/* Advice in the messages that refuse the start. Compaction copies old live rows and
 * tombstones forward into newer segments and deletes the originals, so cutting the log (or
 * moving segments away) loses more than the batches written after the damage. */
#define SLOG_RESTORE_ADVICE "Restore the folder from a backup."
#define SLOG_LOSES_ALSO                                                                                                \
    "since compaction copies older rows and deletions forward into newer segments, this can also lose rows written "  \
    "long before the damage and undo deletions (deleted rows, such as revoked tokens, come back)"
/* Arguments: the offset twice. */
#define SLOG_TRUNCATE_ADVICE                                                                                           \
    "Only as a last resort, with the server stopped and the folder copied aside, truncate the file to %llu bytes: "   \
    "that loses every batch from offset %llu on and, " SLOG_LOSES_ALSO
#define SLOG_MOVE_AWAY_ADVICE                                                                                          \
    "Only as a last resort, with the server stopped and the folder copied aside, move this file and every later one " \
    "away: that loses every batch in them and, " SLOG_LOSES_ALSO

static parley_status slog_load_segment(slog_instance *inst, uint32_t id, int last, char *error, size_t error_size) {
    slog_seg *s = slog_seg_new(inst->folder, id);
    struct stat sb;
    unsigned char header[SLOG_HEADER_BYTES], expect[SLOG_HEADER_BYTES];
    uint64_t size, off, prev_seq;
    size_t map_len;
    int r;
    if (s == NULL) return slog_create_fail(error, error_size, PARLEY_E_NOMEM, SLOG_NAME ": out of memory");
    s->fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &sb) != 0) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot open segment '%s': %s",
                                            s->path, strerror(errno));
        slog_seg_close(s);
        return st;
    }
    if (!S_ISREG(sb.st_mode)) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                            SLOG_NAME ": '%s' is not a regular file", s->path);
        slog_seg_close(s);
        return st;
    }
    size = (uint64_t)sb.st_size;
    memset(header, 0, sizeof header);
    if (size > 0) {
        size_t want = size < SLOG_HEADER_BYTES ? (size_t)size : SLOG_HEADER_BYTES;
        ssize_t got = pread(s->fd, header, want, 0);
        if (got != (ssize_t)want) {
            parley_status st = slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot read '%s': %s",
                                                s->path, got < 0 ? strerror(errno) : "short read");
            slog_seg_close(s);
            return st;
        }
    }
    if (size < SLOG_HEADER_BYTES) {
        /* A segment whose creation was cut short: only acceptable as the newest. It holds no
         * group yet, so it gets a fresh nonce (bytes 20 to 23 are not compared). */
        size_t k;
        int same = last;
        slog_make_header(expect, id, 0);
        for (k = 0; same && k < (size_t)size; k++)
            if ((k < 20 || k > 23) && header[k] != expect[k]) same = 0;
        if (!same) {
            parley_status st = slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                                SLOG_NAME ": segment '%s' is %llu bytes, shorter than its header; the "
                                                          "log is damaged",
                                                s->path, (unsigned long long)size);
            slog_seg_close(s);
            return st;
        }
        slog_log(inst, PARLEY_LOG_WARNING, SLOG_NAME ": segment '%s' has a partial header (%llu bytes, a crash while "
                                                     "it was created); rewriting the header",
                 s->path, (unsigned long long)size);
        slog_make_header(expect, id, slog_random_nonce());
        if ((r = slog_pwrite_all(s->fd, expect, sizeof expect, 0)) != 0 || (r = slog_datasync(s->fd)) != 0) {
            parley_status st = slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot repair '%s': %s",
                                                s->path, strerror(r));
            slog_seg_close(s);
            return st;
        }
        size = SLOG_HEADER_BYTES;
        memcpy(header, expect, sizeof header);
    }
    if (memcmp(header, SLOG_MAGIC, SLOG_MAGIC_PREFIX_LEN) != 0) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                            SLOG_NAME ": '%s' is not a storage-log segment, or its header is damaged "
                                                      "(wrong magic)",
                                            s->path);
        slog_seg_close(s);
        return st;
    }
    if (slog_get32(header + 24) > SLOG_FORMAT_VERSION) {
        /* Only with the magic prefix intact does a higher version field mean a newer plugin. */
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                            SLOG_NAME ": '%s' was written by a newer version of storage-log (format "
                                                      "%u; this plugin reads format %u); upgrade the plugin",
                                            s->path, (unsigned)slog_get32(header + 24), SLOG_FORMAT_VERSION);
        slog_seg_close(s);
        return st;
    }
    s->nonce = slog_get32(header + 20);
    slog_make_header(expect, id, s->nonce);
    if (s->nonce == 0 || memcmp(header, expect, SLOG_HEADER_BYTES) != 0) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                            SLOG_NAME ": the header of '%s' is damaged or not this plugin's (format "
                                                      "%u, segment id %u; expected format %u, segment id %u)",
                                            s->path, (unsigned)slog_get32(header + 24),
                                            (unsigned)slog_get32(header + 28), SLOG_FORMAT_VERSION, (unsigned)id);
        slog_seg_close(s);
        return st;
    }
    if (size > ((uint64_t)1 << 32)) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                            SLOG_NAME ": segment '%s' is larger than 4 GiB", s->path);
        slog_seg_close(s);
        return st;
    }
    map_len = (size_t)size;
    if (last && size < inst->segment_bytes) map_len = (size_t)inst->segment_bytes;
    if ((r = slog_seg_map(s, map_len)) != 0) {
        parley_status st = slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": cannot map '%s': %s", s->path,
                                            strerror(r));
        slog_seg_close(s);
        return st;
    }
    s->size = SLOG_HEADER_BYTES;
    if (slog_segs_append(inst, s) != 0) {
        slog_seg_close(s);
        return slog_create_fail(error, error_size, PARLEY_E_NOMEM, SLOG_NAME ": out of memory");
    }

    /* Replay, group by group. A group is replayed only when its header and every record in it
     * are valid and it ends inside the file. The last group of the newest segment may be torn
     * (a power loss can keep any subset of its blocks): it is cut off whole, since none of it
     * was acknowledged. A bad group that any valid group header follows, anywhere later in the
     * file, is damage: after a failed write the writer cuts the segment back (or refuses every
     * further write), so it never writes a group after one that did not complete. */
    off = SLOG_HEADER_BYTES;
    prev_seq = 0;
    while (off < size) {
        uint64_t gbytes = 0, gseq = 0, end, bad_at = 0, pos, next;
        uint32_t plen = 0, nops = 0, i;
        int c;
        if (slog_check_group_header(inst, s->nonce, s->base, size, off, prev_seq, 1, &gbytes, &gseq) != 0) {
            if (slog_check_record(inst, s->base, size, off, &plen, &nops) == 0)
                return slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                        SLOG_NAME ": segment '%s' has a valid record at offset %llu where a group "
                                                  "header must be (a file written by an early build of storage-log, "
                                                  "or damage); refusing to start. " SLOG_RESTORE_ADVICE,
                                        s->path, (unsigned long long)off);
            if (!last)
                return slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                        SLOG_NAME ": segment '%s' is damaged at offset %llu (bad group header) and it "
                                                  "is not the newest segment; refusing to start. " SLOG_RESTORE_ADVICE
                                                  " " SLOG_MOVE_AWAY_ADVICE,
                                        s->path, (unsigned long long)off);
            next = slog_find_group_header(inst, s->nonce, s->base, size, off, prev_seq);
            if (next != 0)
                return slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                        SLOG_NAME ": segment '%s' is damaged at offset %llu (bad group header), but a "
                                                  "valid group follows it at offset %llu, so this is not a write cut "
                                                  "short by a crash; refusing to start rather than drop acknowledged "
                                                  "data. " SLOG_RESTORE_ADVICE " " SLOG_TRUNCATE_ADVICE,
                                        s->path, (unsigned long long)off, (unsigned long long)next,
                                        (unsigned long long)off, (unsigned long long)off);
            slog_log(inst, PARLEY_LOG_WARNING,
                     SLOG_NAME ": '%s': the last %llu bytes (from offset %llu) are an incomplete group (bad group "
                               "header), probably cut short by a crash or power loss; they were never acknowledged "
                               "and are removed",
                     s->path, (unsigned long long)(size - off), (unsigned long long)off);
            goto cut;
        }
        end = off + gbytes;
        c = end > size ? 1 : slog_check_group_records(inst, s->base, off, end, &bad_at);
        if (end > size) bad_at = size;
        if (c == 3)
            return slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                    SLOG_NAME ": segment '%s' has a malformed record at offset %llu (its checksum is "
                                              "good); refusing to start. " SLOG_RESTORE_ADVICE,
                                    s->path, (unsigned long long)bad_at);
        if (c != 0) {
            const char *what = end > size ? "the group runs past the end of the file"
                                          : (c == 1 ? "a record runs past the end of its group" : "bad checksum");
            if (!last)
                return slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                        SLOG_NAME ": segment '%s' is damaged at offset %llu (%s; in the group at "
                                                  "offset %llu) and it is not the newest segment; refusing to "
                                                  "start. " SLOG_RESTORE_ADVICE " " SLOG_MOVE_AWAY_ADVICE,
                                        s->path, (unsigned long long)bad_at, what, (unsigned long long)off);
            /* Any valid group header later in the file, not only one exactly at this group's end:
             * the same damage may have hit the next group's header too. */
            next = slog_find_group_header(inst, s->nonce, s->base, size, off, gseq);
            if (next != 0)
                return slog_create_fail(error, error_size, PARLEY_E_CORRUPT,
                                        SLOG_NAME ": segment '%s' is damaged at offset %llu (%s; in the group at "
                                                  "offset %llu), but a valid group follows it at offset %llu, so "
                                                  "this is not a write cut short by a crash; refusing to start rather "
                                                  "than drop acknowledged data. " SLOG_RESTORE_ADVICE
                                                  " " SLOG_TRUNCATE_ADVICE,
                                        s->path, (unsigned long long)bad_at, what, (unsigned long long)off,
                                        (unsigned long long)next, (unsigned long long)off, (unsigned long long)off);
            slog_log(inst, PARLEY_LOG_WARNING,
                     SLOG_NAME ": '%s': the last group (from offset %llu, %llu bytes to the end of the file) is "
                               "incomplete (%s at offset %llu), probably cut short by a crash or power loss; it was "
                               "never acknowledged and is removed",
                     s->path, (unsigned long long)off, (unsigned long long)(size - off), what,
                     (unsigned long long)bad_at);
            goto cut;
        }
        /* Valid: replay its records. */
        pos = off + SLOG_GROUP_HEADER;
        while (pos < end) {
            uint64_t rec_end;
            (void)slog_check_record(inst, s->base, end, pos, &plen, &nops);
            rec_end = pos + SLOG_RECORD_HEADER + plen;
            pos += SLOG_RECORD_HEADER + SLOG_PAYLOAD_HEADER;
            for (i = 0; i < nops; i++) {
                slog_op_view v;
                (void)slog_decode_op(s->base + pos, rec_end - pos, &v);
                if (slog_replay_op(inst, s, &v) != 0)
                    return slog_create_fail(error, error_size, PARLEY_E_NOMEM,
                                            SLOG_NAME ": out of memory loading the index from '%s'", s->path);
                pos += v.len;
            }
            pos = rec_end;
        }
        prev_seq = gseq;
        inst->next_group_seq = gseq + 1;
        off = end;
        s->size = off;
    }
    s->size = size;
    slog_seg_drop_pages(s);
    return PARLEY_OK;

cut:
    if ((r = slog_truncate_back(s, off)) != 0)
        return slog_create_fail(error, error_size, PARLEY_E_IO,
                                SLOG_NAME ": cannot cut the incomplete group off '%s' at offset %llu: %s", s->path,
                                (unsigned long long)off, strerror(r));
    s->size = off;
    slog_seg_drop_pages(s);
    return PARLEY_OK;
}

static parley_status slog_create(const parley_host_api *api, parley_host *host, void **instance_out, char *error,
                                 size_t error_size) {
    slog_instance *inst;
    const char *path, *text;
    unsigned long segment_mb = SLOG_DEFAULT_SEGMENT_MB, group_max = SLOG_DEFAULT_GROUP_MAX;
    double ratio = SLOG_DEFAULT_DEAD_RATIO;
    uint32_t *ids = NULL;
    size_t nids = 0, i;
    parley_status st;
    uint64_t started = slog_now_ns();

    if (error != NULL && error_size > 0) error[0] = '\0';
    if (instance_out == NULL)
        return slog_create_fail(error, error_size, PARLEY_E_INVALID, SLOG_NAME ": instance_out is NULL");
    *instance_out = NULL;
    if (api == NULL) return slog_create_fail(error, error_size, PARLEY_E_INVALID, SLOG_NAME ": host api is NULL");
    if (api->abi_major != PARLEY_ABI_MAJOR
#if PARLEY_ABI_MINOR > 0
        || api->abi_minor < PARLEY_ABI_MINOR
#endif
    )
        return slog_create_fail(error, error_size, PARLEY_E_UNSUPPORTED,
                                SLOG_NAME ": built for plugin ABI %d.%d, the host offers %u.%u", PARLEY_ABI_MAJOR,
                                PARLEY_ABI_MINOR, (unsigned)api->abi_major, (unsigned)api->abi_minor);
    if (!PARLEY_HAS_FIELD(api, parley_host_api, emit_item) || api->config_get == NULL || api->set_error == NULL ||
        api->emit_row == NULL || api->emit_item == NULL || api->complete == NULL)
        return slog_create_fail(error, error_size, PARLEY_E_UNSUPPORTED,
                                SLOG_NAME ": the host api lacks config_get, set_error, emit_row, emit_item or complete");

    path = api->config_get(host, "path");
    if (path == NULL || path[0] == '\0')
        return slog_create_fail(error, error_size, PARLEY_E_INVALID,
                                SLOG_NAME ": configuration key 'path' is required: the folder for the log, e.g. "
                                          "/var/lib/parley/storage-log.db");
    text = api->config_get(host, "segment_mb");
    if (text != NULL && !slog_parse_uint(text, 1, 4096, &segment_mb))
        return slog_create_fail(error, error_size, PARLEY_E_INVALID,
                                SLOG_NAME ": configuration key 'segment_mb' must be an integer from 1 to 4096 "
                                          "(megabytes), got '%s'",
                                text);
    text = api->config_get(host, "group_commit_max_batches");
    if (text != NULL && !slog_parse_uint(text, 1, 65536, &group_max))
        return slog_create_fail(error, error_size, PARLEY_E_INVALID,
                                SLOG_NAME ": configuration key 'group_commit_max_batches' must be an integer from 1 to "
                                          "65536, got '%s'",
                                text);
    text = api->config_get(host, "compact_dead_ratio");
    if (text != NULL && !slog_parse_ratio(text, &ratio))
        return slog_create_fail(error, error_size, PARLEY_E_INVALID,
                                SLOG_NAME ": configuration key 'compact_dead_ratio' must be a number from 0.1 to 0.9, "
                                          "got '%s'",
                                text);

    inst = (slog_instance *)calloc(1, sizeof *inst);
    if (inst == NULL) return slog_create_fail(error, error_size, PARLEY_E_NOMEM, SLOG_NAME ": out of memory");
    inst->api = api;
    inst->host = host;
    inst->lock_fd = -1;
    inst->next_group_seq = 1;
    inst->segment_bytes = (uint64_t)segment_mb << 20;
    inst->group_max = group_max;
    inst->dead_ratio = ratio;
    inst->log = api->log;
    inst->metric_add = api->metric_add;
    inst->metric_set = api->metric_set;
    inst->metric_observe = api->metric_observe;
    slog_crc_init(inst->crc_table);
    inst->crc_update = slog_crc_update;
#if defined(SLOG_HAVE_HW_CRC)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) inst->crc_update = slog_crc_update_hw;
#endif
    {
        pthread_rwlockattr_t attr;
        pthread_rwlockattr_init(&attr);
#if defined(__GLIBC__)
        /* Readers must not starve the writer's short publish step. */
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
        pthread_rwlock_init(&inst->lock, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
    pthread_mutex_init(&inst->qmutex, NULL);
    {
        /* Timed waits (compaction retries) count in CLOCK_MONOTONIC, like slog_now_ns(). */
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        (void)pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&inst->qcond, &attr);
        pthread_condattr_destroy(&attr);
    }
    inst->folder = strdup(path);
    if (inst->folder == NULL) {
        slog_destroy(inst);
        return slog_create_fail(error, error_size, PARLEY_E_NOMEM, SLOG_NAME ": out of memory");
    }
    {
        /* "dir/" and "dir" are the same folder. */
        size_t n = strlen(inst->folder);
        while (n > 1 && inst->folder[n - 1] == '/') inst->folder[--n] = '\0';
    }

    if ((st = slog_open_folder(inst, error, error_size)) != PARLEY_OK) {
        slog_destroy(inst);
        return st;
    }
    if ((st = slog_list_segments(inst, &ids, &nids, error, error_size)) != PARLEY_OK) {
        slog_destroy(inst);
        return st;
    }
    for (i = 0; i < nids; i++) {
        if ((st = slog_load_segment(inst, ids[i], i + 1 == nids, error, error_size)) != PARLEY_OK) {
            free(ids);
            slog_destroy(inst);
            return st;
        }
    }
    free(ids);
    if (inst->nsegs > 0) {
        /* A process that crashed may have left a group written but not yet synced in the newest
         * segment (or a segment created without its folder entry synced). Replay has just made
         * that data readable, so make it durable before serving it; otherwise a power loss could
         * take back rows readers have seen, and a later rollover would leave the torn record in
         * a segment that is no longer the newest, which refuses the start. */
        slog_seg *newest = slog_active(inst);
        int r = slog_datasync(newest->fd);
        if (r == 0) r = slog_fsync_dir(inst->folder);
        if (r != 0) {
            slog_destroy(inst);
            return slog_create_fail(error, error_size, PARLEY_E_IO,
                                    SLOG_NAME ": cannot sync '%s' and its folder after loading it: %s", path,
                                    strerror(r));
        }
    }
    if (inst->nsegs == 0) {
        char msg[512];
        int r = slog_new_segment(inst, 1, 0, msg, sizeof msg);
        if (r != 0) {
            slog_destroy(inst);
            return slog_create_fail(error, error_size, PARLEY_E_IO, SLOG_NAME ": %s", msg);
        }
    }

    if (api->metric_register != NULL) {
        inst->reads_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "reads_total",
                                                 "Storage read operations (get and scan calls)");
        inst->writes_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "writes_total",
                                                  "Storage writes committed (elements of applied batches)");
        inst->batches_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "batches_total",
                                                   "Storage write batches (apply calls)");
        inst->commits_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "commits_total",
                                                   "Group commits: one write and one fdatasync each");
        inst->errors_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "errors_total",
                                                  "Storage calls that failed, conflicts included");
        inst->compactions_total = api->metric_register(host, PARLEY_METRIC_COUNTER, "compactions_total",
                                                       "Segments compacted and removed");
        inst->g_segments = api->metric_register(host, PARLEY_METRIC_GAUGE, "segments", "Segment files in the log");
        inst->g_live = api->metric_register(host, PARLEY_METRIC_GAUGE, "live_bytes",
                                            "Bytes of the log that hold current rows");
        inst->g_dead = api->metric_register(host, PARLEY_METRIC_GAUGE, "dead_bytes",
                                            "Bytes of the log that compaction can reclaim");
        inst->g_rows = api->metric_register(host, PARLEY_METRIC_GAUGE, "index_rows", "Rows in the in-memory index");
        inst->commit_seconds = api->metric_register(host, PARLEY_METRIC_HISTOGRAM, "commit_seconds",
                                                    "Seconds spent writing and syncing one group of batches");
    }
    slog_update_gauges(inst);

    if (pthread_create(&inst->writer, NULL, slog_writer_main, inst) != 0) {
        slog_destroy(inst);
        return slog_create_fail(error, error_size, PARLEY_E_INTERNAL, SLOG_NAME ": cannot start the writer thread");
    }
    inst->writer_started = 1;

    {
        uint64_t total = 0, live = 0;
        for (i = 0; i < inst->nsegs; i++) {
            total += inst->segs[i]->size - SLOG_HEADER_BYTES;
            live += inst->segs[i]->live + inst->segs[i]->tomb_live;
        }
        slog_log(inst, PARLEY_LOG_INFO,
                 SLOG_NAME ": opened '%s': %zu segment(s), %llu rows, %llu of %llu bytes live, loaded in %.3f s "
                           "(segment_mb = %lu, group_commit_max_batches = %lu, compact_dead_ratio = %.2f)",
                 inst->folder, inst->nsegs, (unsigned long long)inst->index_rows, (unsigned long long)live,
                 (unsigned long long)total, (double)(slog_now_ns() - started) / 1e9, segment_mb, group_max, ratio);
    }
    *instance_out = inst;
    return PARLEY_OK;
}

/* ------------------------------------------------------------------------ */
/* Descriptor                                                                */
/* ------------------------------------------------------------------------ */

static const parley_storage_vtable slog_storage_vtable = {
    sizeof(parley_storage_vtable),
    slog_get,
    slog_scan,
    slog_apply,
};

static const parley_plugin_descriptor slog_descriptor = {
    PARLEY_PLUGIN_MAGIC,
    PARLEY_ABI_MAJOR,
    PARLEY_ABI_MINOR,
    sizeof(parley_plugin_descriptor),
    PARLEY_KIND_STORAGE,
    SLOG_NAME,
    "1.0.0",
    "Durable ordered key-value storage as an append-only log with an in-memory key index (group commit, one "
    "fdatasync per group, background compaction)",
    NULL,
    slog_create,
    slog_destroy,
    &slog_storage_vtable,
    NULL,
    NULL,
    NULL,
};

PARLEY_PLUGIN_ENTRY(slog_descriptor)
