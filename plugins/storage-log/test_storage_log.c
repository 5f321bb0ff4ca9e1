/*
 * Tests of storage-log that the Swift suites cannot reach: both CRC-32C paths, the
 * syncs made at start, injected write / sync failures, and power losses in the middle of a
 * compaction write and of the first group of a new segment (a snapshot of the folder taken
 * with the group half on disk, recovered on its own). It includes the plugin's
 * source, so it sees its static functions, and routes pwrite, fdatasync, fsync and ftruncate
 * through wrappers that record or fail them. Not part of the plugin build; run it with
 *
 *     make test          (or: cc -std=c11 -I../../include test_storage_log.c -lpthread && ./a.out)
 *
 * Exits 0 when every test passes.
 */
#define _GNU_SOURCE 1
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <errno.h>
#include <stddef.h>

static ssize_t test_pwrite(int fd, const void *buf, size_t n, off_t off);
static int test_fdatasync(int fd);
static int test_fsync(int fd);
static int test_ftruncate(int fd, off_t len);
#define pwrite test_pwrite
#define fdatasync test_fdatasync
#define fsync test_fsync
#define ftruncate test_ftruncate
#include "storage_log.c"
#undef pwrite
#undef fdatasync
#undef fsync
#undef ftruncate

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every folder of this run lives in one scratch folder (mkdtemp under $TMPDIR or /tmp), removed
 * at the end; a test binary running at the same time has its own. */
static char scratch[512];

/* Makes the folder scratch/name (fresh) and writes its path to out. */
static int make_folder(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", scratch, name);
    return mkdir(out, 0700);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* ---- syscall wrappers ---------------------------------------------------- */

/* State shared by the writer thread (in the wrappers) and the tests: atomics, or synced_lock. */
#define MAX_SYNCED 64
static pthread_mutex_t synced_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stat synced[MAX_SYNCED]; /* files fdatasync'd or fsync'd, by device and inode */
static int nsynced;
/* Fail the next N calls with EIO (fail_compaction_pwrite: the next N compaction writes). */
static int fail_pwrite, fail_fdatasync, fail_ftruncate, fail_compaction_pwrite;
static int compaction_writes_failed; /* compaction writes failed by fail_compaction_pwrite */

/* Takes one of the N failures left in *counter, if any. */
static int take_failure(int *counter) {
    int n = __atomic_load_n(counter, __ATOMIC_ACQUIRE);
    while (n > 0)
        if (__atomic_compare_exchange_n(counter, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 1;
    return 0;
}

/* Power-loss snapshots: when tear_mode matches a group write, the wrapper writes only some
 * blocks of it, copies the folder to tear_copy (the disk as a power loss would leave it),
 * and then writes the group in full, as if nothing happened. */
#define TEAR_COMPACTION 1 /* the next compaction write; its first half (group header) lost */
#define TEAR_NEW_SEGMENT 2 /* the next group at the start of a segment; its middle lost */
static int tear_mode, tear_new_segments;
static const char *tear_folder, *tear_copy; /* set before tear_mode */
static int torn;               /* set once a snapshot was taken */
static int completed;          /* operations completed (the writer thread completes them in order) */
static int completed_at_tear;  /* ... when the snapshot was taken */

static void tear(int fd, const unsigned char *b, size_t n, off_t off) {
    char cmd[1400];
    if (__atomic_load_n(&tear_mode, __ATOMIC_ACQUIRE) == TEAR_COMPACTION) {
        (void)pwrite(fd, b + n / 2, n - n / 2, off + (off_t)(n / 2));
    } else {
        (void)pwrite(fd, b, 32, off);
        (void)pwrite(fd, b + n - 16, 16, off + (off_t)n - 16);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s'", tear_copy, tear_folder, tear_copy);
    if (system(cmd) != 0) fprintf(stderr, "snapshot failed\n");
    __atomic_store_n(&completed_at_tear, __atomic_load_n(&completed, __ATOMIC_ACQUIRE), __ATOMIC_RELAXED);
    __atomic_store_n(&tear_mode, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&torn, 1, __ATOMIC_RELEASE);
}

static void note_synced(int fd) {
    pthread_mutex_lock(&synced_lock);
    if (nsynced < MAX_SYNCED && fstat(fd, &synced[nsynced]) == 0) nsynced++;
    pthread_mutex_unlock(&synced_lock);
}

static void forget_synced(void) {
    pthread_mutex_lock(&synced_lock);
    nsynced = 0;
    pthread_mutex_unlock(&synced_lock);
}

static ssize_t test_pwrite(int fd, const void *buf, size_t n, off_t off) {
    const unsigned char *b = (const unsigned char *)buf;
    int compaction = off > 0 && n > SLOG_GROUP_HEADER + 8 + 8 && b[8] == SLOG_FLAG_GROUP &&
                     b[SLOG_GROUP_HEADER + 8] == SLOG_FLAG_COMPACTION;
    int mode = __atomic_load_n(&tear_mode, __ATOMIC_ACQUIRE);
    if (take_failure(&fail_pwrite) || (compaction && take_failure(&fail_compaction_pwrite))) {
        if (compaction) __atomic_add_fetch(&compaction_writes_failed, 1, __ATOMIC_ACQ_REL);
        /* Write part of it first, as a real failure may. */
        if (n > 1) (void)pwrite(fd, buf, n / 2, off);
        errno = compaction ? ENOSPC : EIO;
        return -1;
    }
    if (mode != 0 && off > 0 && n > SLOG_GROUP_HEADER + 8 + 8) {
        if (mode == TEAR_COMPACTION && compaction) tear(fd, b, n, off);
        /* (not the first segment's first group: a rollover's) */
        if (mode == TEAR_NEW_SEGMENT && off == SLOG_HEADER_BYTES &&
            __atomic_fetch_add(&tear_new_segments, 1, __ATOMIC_ACQ_REL) > 0)
            tear(fd, b, n, off);
    }
    return pwrite(fd, buf, n, off);
}

static int test_fdatasync(int fd) {
    if (take_failure(&fail_fdatasync)) {
        errno = EIO;
        return -1;
    }
    note_synced(fd);
    return fdatasync(fd);
}

static int test_ftruncate(int fd, off_t len) {
    if (take_failure(&fail_ftruncate)) {
        errno = EIO;
        return -1;
    }
    return ftruncate(fd, len);
}

static int test_fsync(int fd) {
    note_synced(fd);
    return fsync(fd);
}

static int was_synced(const char *path) {
    struct stat sb;
    int i, found = 0;
    if (stat(path, &sb) != 0) return 0;
    pthread_mutex_lock(&synced_lock);
    for (i = 0; i < nsynced; i++)
        if (synced[i].st_dev == sb.st_dev && synced[i].st_ino == sb.st_ino) found = 1;
    pthread_mutex_unlock(&synced_lock);
    return found;
}

/* ---- a minimal host ------------------------------------------------------ */

struct parley_op {
    int done;
    parley_status status;
    int rows;
    unsigned char value[256];
    size_t value_len;
    char error[1100];
};

static const char *config_path, *config_segment_mb;
static const char *h_config(parley_host *h, const char *key) {
    (void)h;
    if (strcmp(key, "segment_mb") == 0) return config_segment_mb;
    return strcmp(key, "path") == 0 ? config_path : NULL;
}
static void h_log(parley_host *h, parley_log_level level, const char *m, size_t n) {
    (void)h;
    if (level >= PARLEY_LOG_WARNING) fprintf(stderr, "  [plugin log] %.*s\n", (int)n, m);
}
static void h_complete(parley_op *op, parley_status st) {
    __atomic_add_fetch(&completed, 1, __ATOMIC_ACQ_REL);
    op->status = st;
    __atomic_store_n(&op->done, 1, __ATOMIC_RELEASE);
}
static void h_set_error(parley_op *op, const char *m, size_t n) {
    if (n >= sizeof op->error) n = sizeof op->error - 1;
    memcpy(op->error, m, n);
    op->error[n] = '\0';
}
static int h_emit_row(parley_op *op, parley_bytes sort, parley_bytes value) {
    (void)sort;
    op->rows++;
    op->value_len = value.len < sizeof op->value ? value.len : sizeof op->value;
    if (op->value_len > 0) memcpy(op->value, value.data, op->value_len);
    return 0;
}
static void h_emit_item(parley_op *op, size_t i, int32_t outcome, uint64_t v, parley_bytes d) {
    (void)op, (void)i, (void)outcome, (void)v, (void)d;
}

static parley_host_api api;
static int failures;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                      \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
            failures++;                                                                                                \
        }                                                                                                              \
    } while (0)

static void *open_store(const char *folder) {
    void *inst = NULL;
    char error[1024];
    config_path = folder;
    if (slog_create(&api, NULL, &inst, error, sizeof error) != PARLEY_OK) {
        fprintf(stderr, "create failed: %s\n", error);
        exit(1);
    }
    return inst;
}

/* Starts a store that must fail to start; returns its message (static buffer). */
static const char *create_error(const char *folder) {
    static char error[1024];
    void *inst = NULL;
    config_path = folder;
    error[0] = '\0';
    if (slog_create(&api, NULL, &inst, error, sizeof error) == PARLEY_OK) {
        slog_destroy(inst);
        return "(started)";
    }
    return error;
}

static parley_bytes bytes_of(const char *s) {
    parley_bytes b;
    b.data = (const unsigned char *)s;
    b.len = strlen(s);
    return b;
}

/* Applies one put and waits for it (the writer thread completes it). */
static parley_status put(void *inst, const char *key, const char *value, char *error_out) {
    parley_op op;
    parley_write w;
    parley_status st;
    memset(&op, 0, sizeof op);
    memset(&w, 0, sizeof w);
    w.struct_size = sizeof w;
    w.kind = PARLEY_WRITE_PUT;
    w.table = bytes_of("t");
    w.partition = bytes_of("p");
    w.sort = bytes_of(key);
    w.value = bytes_of(value);
    st = slog_apply(inst, &op, &w, 1, sizeof w);
    if (st == PARLEY_PENDING) {
        while (!__atomic_load_n(&op.done, __ATOMIC_ACQUIRE)) usleep(200);
        st = op.status;
    }
    if (error_out != NULL) memcpy(error_out, op.error, sizeof op.error);
    return st;
}

/* The value of key, or NULL when absent (static buffer). */
static const char *get(void *inst, const char *key) {
    static char out[300];
    parley_op op;
    memset(&op, 0, sizeof op);
    if (slog_get(inst, &op, bytes_of("t"), bytes_of("p"), bytes_of(key)) != PARLEY_OK) return "<error>";
    if (op.rows == 0) return NULL;
    memcpy(out, op.value, op.value_len);
    out[op.value_len] = '\0';
    return out;
}

static uint64_t file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* ---- tests --------------------------------------------------------------- */

static void test_crc(void) {
    static uint32_t table_rw[8][256];
    const uint32_t(*table)[256] = (const uint32_t(*)[256])table_rw;
    unsigned char buf[1024 + 8];
    const unsigned char *check = (const unsigned char *)"123456789";
    size_t len, align, i;
    uint32_t seed = 12345;
    slog_crc_init(table_rw);
    CHECK(slog_crc_update(table, 0, check, 9) == 0xE3069283u, "table CRC-32C of \"123456789\" is %08x",
          (unsigned)slog_crc_update(table, 0, check, 9));
    for (i = 0; i < sizeof buf; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (unsigned char)(seed >> 16);
    }
#if defined(SLOG_HAVE_HW_CRC)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("sse4.2")) {
        printf("  (this CPU lacks SSE4.2: only the table path was tested)\n");
        return;
    }
    CHECK(slog_crc_update_hw(table, 0, check, 9) == 0xE3069283u, "SSE4.2 CRC-32C of \"123456789\" is %08x",
          (unsigned)slog_crc_update_hw(table, 0, check, 9));
    for (align = 0; align < 8; align++)
        for (len = 0; len <= 1024; len++) {
            uint32_t a = slog_crc_update(table, 0, buf + align, len), b = slog_crc_update_hw(table, 0, buf + align, len);
            /* and chained, as slog_record_crc does */
            uint32_t c = slog_crc_update(table, slog_crc_update(table, 0, buf, 4), buf + align, len);
            uint32_t d = slog_crc_update_hw(table, slog_crc_update_hw(table, 0, buf, 4), buf + align, len);
            if (a != b || c != d) {
                CHECK(0, "CRC paths differ at length %zu, alignment %zu", len, align);
                return;
            }
        }
    {
        /* The instance picks the hardware path on this CPU. */
        char folder[600];
        slog_instance *inst;
        CHECK(make_folder(folder, sizeof folder, "crc") == 0, "mkdir");
        inst = (slog_instance *)open_store(folder);
        CHECK(inst->crc_update == slog_crc_update_hw, "create() did not choose the SSE4.2 CRC");
        slog_destroy(inst);
    }
#else
    (void)len, (void)align;
    printf("  (no SSE4.2 path in this build: only the table path was tested)\n");
#endif
}

/* After a restart, the newest segment and the folder are synced before any read. */
static void test_start_syncs_newest_segment(void) {
    char folder[600], seg[700];
    void *inst;
    CHECK(make_folder(folder, sizeof folder, "sync") == 0, "mkdir");
    inst = open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK, "put");
    slog_destroy(inst);
    /* Stand-in for a crashed process: a group written to the file but never synced. Here it
     * is synced already, but the restart cannot know that and must sync it again. */
    forget_synced();
    inst = open_store(folder);
    snprintf(seg, sizeof seg, "%s/00000001.log", folder);
    CHECK(was_synced(seg), "create() did not fdatasync the newest segment it replayed");
    CHECK(was_synced(folder), "create() did not fsync the folder");
    CHECK(get(inst, "a") != NULL && strcmp(get(inst, "a"), "one") == 0, "row a after restart");
    slog_destroy(inst);
}

/* Resident memory of this process in KiB (VmRSS), or 0 if unknown. */
static long rss_kib(void) {
    char line[256];
    long kib = 0;
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL) return 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0) kib = strtol(line + 6, NULL, 10);
    fclose(f);
    return kib;
}

/* Replay reads every byte of the log through the mappings; those pages must not stay in
 * the process's resident memory afterwards (they stay in the page cache). */
static void test_replay_leaves_the_log_out_of_resident_memory(void) {
    static char big[(1 << 20) + 1];
    char folder[600], key[32];
    void *inst;
    long before, after;
    int i;
    CHECK(make_folder(folder, sizeof folder, "rss") == 0, "mkdir");
    memset(big, 'v', sizeof big - 1);
    inst = open_store(folder);
    for (i = 0; i < 48; i++) {
        snprintf(key, sizeof key, "big-%02d", i);
        CHECK(put(inst, key, big, NULL) == PARLEY_OK, "put %d", i);
    }
    slog_destroy(inst);
    before = rss_kib();
    inst = open_store(folder);
    after = rss_kib();
    CHECK(before > 0 && after - before < 16 * 1024, "resident memory grew by %ld KiB replaying a 48 MiB log",
          after - before);
    slog_destroy(inst);
}

/* A failed write or sync fails the batch, publishes nothing and cuts the file back. */
static void test_write_failures(void) {
    char folder[600], seg[700], error[1100];
    void *inst;
    uint64_t before;
    const char *v;
    CHECK(make_folder(folder, sizeof folder, "fail") == 0, "mkdir");
    snprintf(seg, sizeof seg, "%s/00000001.log", folder);
    inst = open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK, "put");
    before = file_size(seg);

    __atomic_store_n(&fail_pwrite, 1, __ATOMIC_RELEASE);
    CHECK(put(inst, "a", "two", error) == PARLEY_E_IO, "a failed pwrite must fail the batch");
    CHECK(strstr(error, "nothing was applied") != NULL, "message: %s", error);
    v = get(inst, "a");
    CHECK(v != NULL && strcmp(v, "one") == 0, "after a failed pwrite the old value stays, got %s", v ? v : "(none)");
    CHECK(file_size(seg) == before, "segment not cut back after a failed pwrite: %llu != %llu",
          (unsigned long long)file_size(seg), (unsigned long long)before);

    __atomic_store_n(&fail_fdatasync, 1, __ATOMIC_RELEASE);
    CHECK(put(inst, "b", "three", error) == PARLEY_E_IO, "a failed fdatasync must fail the batch");
    CHECK(strstr(error, "nothing was applied") != NULL, "message: %s", error);
    CHECK(get(inst, "b") == NULL, "a batch whose sync failed must not be visible");
    CHECK(file_size(seg) == before, "segment not cut back after a failed fdatasync");

    CHECK(put(inst, "b", "four", NULL) == PARLEY_OK, "writes go on after failures");
    slog_destroy(inst);
    inst = open_store(folder);
    v = get(inst, "a");
    CHECK(v != NULL && strcmp(v, "one") == 0, "a after restart");
    v = get(inst, "b");
    CHECK(v != NULL && strcmp(v, "four") == 0, "b after restart");
    slog_destroy(inst);
}

/* Walks every segment of a folder group by group: each file is its header and whole groups
 * (a group never runs past its file), each group header is valid, every record in a group is
 * valid, and sequences grow by one within a segment. Returns the number of groups, or -1. */
static int check_groups(const char *folder) {
    slog_instance *inst = (slog_instance *)calloc(1, sizeof *inst);
    DIR *d = opendir(folder);
    struct dirent *de;
    int groups = 0, ok = 1;
    slog_crc_init(inst->crc_table);
    inst->crc_update = slog_crc_update;
    while (ok && d != NULL && (de = readdir(d)) != NULL) {
        char path[700];
        FILE *f;
        unsigned char *buf;
        uint64_t size, off = SLOG_HEADER_BYTES, prev = 0, bytes, seq, bad_at = 0;
        uint32_t nonce;
        if (strstr(de->d_name, ".log") == NULL) continue;
        snprintf(path, sizeof path, "%s/%s", folder, de->d_name);
        size = file_size(path);
        buf = (unsigned char *)malloc((size_t)size + 1);
        f = fopen(path, "rb");
        if (f == NULL || fread(buf, 1, (size_t)size, f) != size) ok = 0;
        if (f != NULL) fclose(f);
        nonce = ok && size >= SLOG_HEADER_BYTES ? slog_get32(buf + 20) : 0;
        while (ok && off < size) {
            if (slog_check_group_header(inst, nonce, buf, size, off, prev, 1, &bytes, &seq) != 0) {
                CHECK(0, "%s: no valid group header at offset %llu", path, (unsigned long long)off);
                ok = 0;
            } else if (off + bytes > size || slog_check_group_records(inst, buf, off, off + bytes, &bad_at) != 0) {
                CHECK(0, "%s: the group at offset %llu is incomplete or bad", path, (unsigned long long)off);
                ok = 0;
            } else {
                groups++;
                prev = seq;
                off += bytes;
            }
        }
        free(buf);
    }
    if (d != NULL) closedir(d);
    free(inst);
    return ok ? groups : -1;
}

static void value_of(char *out, size_t size, int round, int key) {
    int n = snprintf(out, size, "r%05d k%02d ", round, key);
    memset(out + n, 'x', size - 1 - (size_t)n);
    out[size - 1] = '\0';
}

/* Checks that keys PREFIX00 to PREFIX(count-1) hold round's values after compaction. */
static void check_values(void *inst, const char *prefix, int count, int round) {
    char key[16], expect[2000];
    int k;
    for (k = 0; k < count; k++) {
        const char *got;
        snprintf(key, sizeof key, "%s%02d", prefix, k);
        value_of(expect, sizeof expect, round, k);
        got = get(inst, key);
        CHECK(got != NULL && strncmp(got, expect, 200) == 0, "key %s after compaction is %.12s", key,
              got != NULL ? got : "(none)");
    }
}

/* Writes rounds of 20 keys (2 KB values) in 1 MiB segments until the snapshot is taken, then
 * recovers the snapshot: it holds exactly the puts acknowledged before it, and takes writes. */
static void run_tear(const char *name, int mode) {
    char folder[600], copy[700], key[8], v[2000], expect[2000];
    void *inst;
    int i, round = 0, k, at_tear;
    CHECK(make_folder(folder, sizeof folder, name) == 0, "mkdir");
    snprintf(copy, sizeof copy, "%s-crash", folder);
    config_segment_mb = "1";
    inst = open_store(folder);
    tear_folder = folder;
    tear_copy = copy;
    __atomic_store_n(&torn, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&tear_new_segments, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&completed, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&tear_mode, mode, __ATOMIC_RELEASE);
    for (i = 0; i < 20000 && !__atomic_load_n(&torn, __ATOMIC_ACQUIRE); i++) {
        round = i / 20;
        snprintf(key, sizeof key, "k%02d", i % 20);
        value_of(v, sizeof v, round, i % 20);
        if (put(inst, key, v, NULL) != PARLEY_OK) {
            CHECK(0, "%s: put %d failed", name, i);
            break;
        }
    }
    __atomic_store_n(&tear_mode, 0, __ATOMIC_RELEASE);
    CHECK(__atomic_load_n(&torn, __ATOMIC_ACQUIRE), "%s: no snapshot was taken after %d puts", name, i);
    slog_destroy(inst);
    CHECK(check_groups(folder) > 0, "%s: the live folder is not made of whole groups", name);
    if (!__atomic_load_n(&torn, __ATOMIC_ACQUIRE)) return;
    at_tear = __atomic_load_n(&completed_at_tear, __ATOMIC_ACQUIRE);

    inst = open_store(copy);
    for (k = 0; k < 20; k++) {
        /* The last put of key k among the first completed_at_tear puts. */
        int last = ((at_tear - 1 - k) / 20) * 20 + k;
        const char *got;
        snprintf(key, sizeof key, "k%02d", k);
        got = get(inst, key);
        if (at_tear <= k) {
            CHECK(got == NULL, "%s: key %s was never acknowledged before the crash", name, key);
            continue;
        }
        value_of(expect, sizeof expect, last / 20, k);
        CHECK(got != NULL && strncmp(got, expect, 200) == 0, "%s: key %s after the crash is %.12s, expected %.12s",
              name, key, got != NULL ? got : "(none)", expect);
    }
    value_of(v, sizeof v, 99999, 0);
    CHECK(put(inst, "k00", v, NULL) == PARLEY_OK, "%s: put after recovery", name);
    slog_destroy(inst);
    CHECK(check_groups(copy) > 0, "%s: the recovered folder is not made of whole groups", name);
    inst = open_store(copy);
    CHECK(get(inst, "k00") != NULL && strncmp(get(inst, "k00"), v, 200) == 0, "%s: put after recovery kept", name);
    slog_destroy(inst);
    config_segment_mb = NULL;
}

/* Group sequences: consecutive, restored at start-up, and a gap makes a header invalid. */
static void test_group_sequence(void) {
    char folder[600], seg[700];
    slog_instance *inst;
    uint64_t bytes = 0, seq = 0;
    CHECK(make_folder(folder, sizeof folder, "seq") == 0, "mkdir");
    snprintf(seg, sizeof seg, "%s/00000001.log", folder);
    inst = (slog_instance *)open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK && put(inst, "b", "two", NULL) == PARLEY_OK, "puts");
    CHECK(inst->next_group_seq == 3, "next sequence after two groups is %llu", (unsigned long long)inst->next_group_seq);
    slog_destroy(inst);
    inst = (slog_instance *)open_store(folder);
    CHECK(inst->next_group_seq == 3, "next sequence after a restart is %llu", (unsigned long long)inst->next_group_seq);
    CHECK(put(inst, "c", "three", NULL) == PARLEY_OK, "put");
    {
        const unsigned char *b = inst->segs[0]->base;
        uint32_t nonce = inst->segs[0]->nonce;
        uint64_t size = inst->segs[0]->size, off = SLOG_HEADER_BYTES, prev = 0, n = 0;
        while (off < size && slog_check_group_header(inst, nonce, b, size, off, prev, 1, &bytes, &seq) == 0) {
            n++;
            CHECK(seq == n, "group %llu has sequence %llu", (unsigned long long)n, (unsigned long long)seq);
            prev = seq;
            off += bytes;
        }
        CHECK(n == 3 && off == size, "%llu groups, ending at %llu of %llu", (unsigned long long)n,
              (unsigned long long)off, (unsigned long long)size);
        /* Strict: the second group's header is not valid after a first group numbered 2. */
        off = SLOG_HEADER_BYTES;
        CHECK(slog_check_group_header(inst, nonce, b, size, off, 0, 1, &bytes, &seq) == 0, "first header");
        CHECK(slog_check_group_header(inst, nonce, b, size, off + bytes, 2, 1, &bytes, &seq) != 0,
              "a sequence that is not the previous + 1 must be refused");
        /* The group header CRC is seeded with the segment's nonce, so the same bytes with a
         * plain CRC-32C (what a client could forge without the nonce) do not verify. */
        CHECK(nonce != 0 && slog_get32(b + 20) == nonce, "the segment header holds a non-zero nonce");
        CHECK(slog_check_group_header(inst, nonce ^ 1u, b, size, off, 0, 1, &bytes, &seq) != 0,
              "a group header must not verify with another nonce");
        {
            unsigned char forged[SLOG_GROUP_HEADER];
            memcpy(forged, b + off, sizeof forged);
            slog_put32(forged + 4, slog_record_crc(inst, forged, forged + SLOG_RECORD_HEADER, SLOG_GROUP_PAYLOAD));
            CHECK(slog_check_group_header(inst, nonce, forged, sizeof forged, 0, 0, 1, &bytes, &seq) != 0,
                  "a group header with a plain CRC-32C must be refused");
        }
    }
    slog_destroy(inst);
}

/* A failed fdatasync whose cut-back fails too: the batch fails, the message says the group may be
 * kept after a restart (its bytes are in the file), and further writes are refused. */
static void test_sync_and_cut_back_failure(void) {
    char folder[600], error[1100];
    void *inst;
    const char *v;
    CHECK(make_folder(folder, sizeof folder, "cutfail") == 0, "mkdir");
    inst = open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK, "put");
    __atomic_store_n(&fail_fdatasync, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&fail_ftruncate, 1, __ATOMIC_RELEASE);
    CHECK(put(inst, "a", "two", error) == PARLEY_E_IO, "a failed fdatasync must fail the batch");
    CHECK(strstr(error, "may be kept after a restart") != NULL && strstr(error, "nothing was applied") == NULL,
          "message: %s", error);
    v = get(inst, "a");
    CHECK(v != NULL && strcmp(v, "one") == 0, "the failed batch is not visible, got %s", v ? v : "(none)");
    CHECK(put(inst, "b", "three", error) == PARLEY_E_IO && strstr(error, "writes are refused") != NULL,
          "writes are refused after a failed cut-back: %s", error);
    slog_destroy(inst);
    inst = open_store(folder);
    v = get(inst, "a");
    CHECK(v != NULL && strcmp(v, "two") == 0, "the written group is replayed after a restart, got %s",
          v ? v : "(none)");
    slog_destroy(inst);
}

/* The number of segment files in a folder, and their lowest and highest ids. */
static int list_segments(const char *folder, unsigned *lowest, unsigned *highest) {
    DIR *d = opendir(folder);
    struct dirent *de;
    int n = 0;
    *lowest = 0xFFFFFFFFu;
    *highest = 0;
    while (d != NULL && (de = readdir(d)) != NULL) {
        unsigned id;
        if (strstr(de->d_name, ".log") == NULL || sscanf(de->d_name, "%u", &id) != 1) continue;
        n++;
        if (id < *lowest) *lowest = id;
        if (id > *highest) *highest = id;
    }
    if (d != NULL) closedir(d);
    return n;
}

/* Compaction has removed every segment but the newest one or two. */
static int compacted(const char *folder) {
    unsigned lowest, highest;
    int n = list_segments(folder, &lowest, &highest);
    return n <= 2 && lowest + 1 >= highest;
}

/* Compaction writes that fail with an I/O error (here ENOSPC) postpone the step: it is tried
 * again about a second later, also when no write arrives to wake the writer, and once the
 * writes succeed again the space is reclaimed. (Before, the first failure marked the segment
 * "never compact again", and an idle writer never retried.) */
static void test_compaction_io_error_is_retried(void) {
    char folder[600], key[12], v[2000];
    void *inst;
    int i, k, waited, failed_before;
    unsigned lowest, highest;
    CHECK(make_folder(folder, sizeof folder, "compact-retry") == 0, "mkdir");
    config_segment_mb = "1";
    __atomic_store_n(&compaction_writes_failed, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&fail_compaction_pwrite, 1000000, __ATOMIC_RELEASE); /* a full disk, for compaction */
    inst = open_store(folder);
    /* Rows never overwritten, so compacting the first segment must copy (write) them. */
    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "keep%02d", i);
        value_of(v, sizeof v, 77777, i);
        CHECK(put(inst, key, v, NULL) == PARLEY_OK, "put %s", key);
    }
    for (i = 0; i < 3000; i++) {
        snprintf(key, sizeof key, "k%02d", i % 20);
        value_of(v, sizeof v, i / 20, i % 20);
        if (put(inst, key, v, NULL) != PARLEY_OK) {
            CHECK(0, "put %d failed", i);
            break;
        }
    }
    CHECK(list_segments(folder, &lowest, &highest) >= 4, "expected several segments, got %u..%u", lowest, highest);
    /* Idle: the postponed step is retried (and fails again) without a write to wake the writer. */
    failed_before = __atomic_load_n(&compaction_writes_failed, __ATOMIC_ACQUIRE);
    CHECK(failed_before >= 1, "no compaction write was failed");
    usleep(2500000);
    CHECK(__atomic_load_n(&compaction_writes_failed, __ATOMIC_ACQUIRE) > failed_before,
          "an idle writer did not retry the postponed compaction step");
    /* The disk has room again. */
    __atomic_store_n(&fail_compaction_pwrite, 0, __ATOMIC_RELEASE);
    for (waited = 0; waited < 100 && !compacted(folder); waited++) usleep(50000);
    k = list_segments(folder, &lowest, &highest);
    CHECK(compacted(folder), "compaction did not resume after failed writes: %d segments, ids %u to %u", k, lowest,
          highest);
    slog_destroy(inst);
    inst = open_store(folder);
    check_values(inst, "k", 20, 149);
    check_values(inst, "keep", 100, 77777);
    slog_destroy(inst);
    config_segment_mb = NULL;
}

/* Rewrites `n` bytes at `off` of a file. */
static void poke(const char *path, long off, const void *bytes, size_t n) {
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL && fseek(f, off, SEEK_SET) == 0 && fwrite(bytes, 1, n, f) == n, "poke %s", path);
    if (f != NULL) fclose(f);
}

/* "Newer version" only for an intact magic prefix with a higher version field; anything else
 * is a damaged or foreign header. */
static void test_header_messages(void) {
    char folder[600], seg[700];
    unsigned char header[SLOG_HEADER_BYTES], b[4];
    const char *m;
    void *inst;
    FILE *f;
    CHECK(make_folder(folder, sizeof folder, "header") == 0, "mkdir");
    snprintf(seg, sizeof seg, "%s/00000001.log", folder);
    inst = open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK, "put");
    slog_destroy(inst);
    f = fopen(seg, "rb");
    CHECK(f != NULL && fread(header, 1, sizeof header, f) == sizeof header, "read header");
    if (f != NULL) fclose(f);

    poke(seg, 0, "q", 1); /* the first magic byte */
    m = create_error(folder);
    CHECK(strstr(m, "newer") == NULL && strstr(m, "header is damaged") != NULL, "damaged magic: %s", m);
    poke(seg, 0, header, sizeof header);

    poke(seg, 19, "2", 1); /* the magic's format digit, with the version field still 1 */
    m = create_error(folder);
    CHECK(strstr(m, "newer") == NULL && strstr(m, "damaged") != NULL, "damaged format digit: %s", m);
    poke(seg, 0, header, sizeof header);

    memset(b, 0, sizeof b); /* a zero nonce is never written */
    poke(seg, 20, b, sizeof b);
    m = create_error(folder);
    CHECK(strstr(m, "newer") == NULL && strstr(m, "damaged") != NULL, "zero nonce: %s", m);
    poke(seg, 0, header, sizeof header);

    slog_put32(b, 2); /* a newer format: intact magic prefix, higher version field */
    poke(seg, 19, "2", 1);
    poke(seg, 24, b, sizeof b);
    m = create_error(folder);
    CHECK(strstr(m, "newer version") != NULL, "newer format: %s", m);
    poke(seg, 0, header, sizeof header);

    inst = open_store(folder);
    CHECK(get(inst, "a") != NULL && strcmp(get(inst, "a"), "one") == 0, "restored header");
    slog_destroy(inst);
}

int main(void) {
    api.struct_size = sizeof api;
    api.abi_major = PARLEY_ABI_MAJOR;
    api.abi_minor = PARLEY_ABI_MINOR;
    api.host_version = "test";
    api.build_tag = "test";
    api.log = h_log;
    api.alloc = malloc;
    api.free = free;
    api.config_get = h_config;
    api.complete = h_complete;
    api.set_error = h_set_error;
    api.emit_row = h_emit_row;
    api.emit_item = h_emit_item;

    {
        const char *tmp = getenv("TMPDIR");
        snprintf(scratch, sizeof scratch, "%s/slog-test-XXXXXX", tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
        if (mkdtemp(scratch) == NULL) {
            fprintf(stderr, "cannot create a scratch folder under %s: %s\n", scratch, strerror(errno));
            return 1;
        }
    }
    printf("crc\n");
    test_crc();
    printf("start syncs the newest segment\n");
    test_start_syncs_newest_segment();
    printf("write failures\n");
    test_write_failures();
    printf("replay leaves the log out of resident memory\n");
    test_replay_leaves_the_log_out_of_resident_memory();
    printf("group sequences\n");
    test_group_sequence();
    printf("power loss in a compaction write\n");
    run_tear("compaction", TEAR_COMPACTION);
    printf("power loss in the first group of a new segment\n");
    run_tear("rollover", TEAR_NEW_SEGMENT);
    printf("a failed sync whose cut-back fails\n");
    test_sync_and_cut_back_failure();
    printf("an I/O error in a compaction write is retried\n");
    test_compaction_io_error_is_retried();
    printf("segment header messages\n");
    test_header_messages();
    if (nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
        fprintf(stderr, "cannot remove %s\n", scratch);
        failures++;
    }
    if (failures > 0) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all passed\n");
    return 0;
}
