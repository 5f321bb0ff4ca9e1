/*
 * Tests of storage-log that the Swift suites cannot reach: both CRC-32C paths, the
 * syncs made at start, and injected write / sync failures. It includes the plugin's
 * source, so it sees its static functions, and routes pwrite, fdatasync and fsync
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
#define pwrite test_pwrite
#define fdatasync test_fdatasync
#define fsync test_fsync
#include "storage_log.c"
#undef pwrite
#undef fdatasync
#undef fsync

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- syscall wrappers ---------------------------------------------------- */

#define MAX_SYNCED 64
static struct stat synced[MAX_SYNCED]; /* files fdatasync'd or fsync'd, by device and inode */
static int nsynced;
static int fail_pwrite, fail_fdatasync; /* fail the next N calls with EIO */

static void note_synced(int fd) {
    struct stat sb;
    if (nsynced < MAX_SYNCED && fstat(fd, &sb) == 0) synced[nsynced++] = sb;
}

static ssize_t test_pwrite(int fd, const void *buf, size_t n, off_t off) {
    if (fail_pwrite > 0) {
        fail_pwrite--;
        /* Write part of it first, as a real failure may. */
        if (n > 1) (void)pwrite(fd, buf, n / 2, off);
        errno = EIO;
        return -1;
    }
    return pwrite(fd, buf, n, off);
}

static int test_fdatasync(int fd) {
    if (fail_fdatasync > 0) {
        fail_fdatasync--;
        errno = EIO;
        return -1;
    }
    note_synced(fd);
    return fdatasync(fd);
}

static int test_fsync(int fd) {
    note_synced(fd);
    return fsync(fd);
}

static int was_synced(const char *path) {
    struct stat sb;
    int i;
    if (stat(path, &sb) != 0) return 0;
    for (i = 0; i < nsynced; i++)
        if (synced[i].st_dev == sb.st_dev && synced[i].st_ino == sb.st_ino) return 1;
    return 0;
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

static const char *config_path;
static const char *h_config(parley_host *h, const char *key) {
    (void)h;
    return strcmp(key, "path") == 0 ? config_path : NULL;
}
static void h_log(parley_host *h, parley_log_level level, const char *m, size_t n) {
    (void)h;
    if (level >= PARLEY_LOG_WARNING) fprintf(stderr, "  [plugin log] %.*s\n", (int)n, m);
}
static void h_complete(parley_op *op, parley_status st) {
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
        char folder[] = "/tmp/slog-test-crc-XXXXXX";
        slog_instance *inst;
        CHECK(mkdtemp(folder) != NULL, "mkdtemp");
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
    char folder[] = "/tmp/slog-test-sync-XXXXXX", seg[600];
    void *inst;
    CHECK(mkdtemp(folder) != NULL, "mkdtemp");
    inst = open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK, "put");
    slog_destroy(inst);
    /* Stand-in for a crashed process: a group written to the file but never synced. Here it
     * is synced already, but the restart cannot know that and must sync it again. */
    nsynced = 0;
    inst = open_store(folder);
    snprintf(seg, sizeof seg, "%s/00000001.log", folder);
    CHECK(was_synced(seg), "create() did not fdatasync the newest segment it replayed");
    CHECK(was_synced(folder), "create() did not fsync the folder");
    CHECK(get(inst, "a") != NULL && strcmp(get(inst, "a"), "one") == 0, "row a after restart");
    slog_destroy(inst);
}

/* A failed write or sync fails the batch, publishes nothing and cuts the file back. */
static void test_write_failures(void) {
    char folder[] = "/tmp/slog-test-fail-XXXXXX", seg[600], error[1100];
    void *inst;
    uint64_t before;
    const char *v;
    CHECK(mkdtemp(folder) != NULL, "mkdtemp");
    snprintf(seg, sizeof seg, "%s/00000001.log", folder);
    inst = open_store(folder);
    CHECK(put(inst, "a", "one", NULL) == PARLEY_OK, "put");
    before = file_size(seg);

    fail_pwrite = 1;
    CHECK(put(inst, "a", "two", error) == PARLEY_E_IO, "a failed pwrite must fail the batch");
    CHECK(strstr(error, "nothing was applied") != NULL, "message: %s", error);
    v = get(inst, "a");
    CHECK(v != NULL && strcmp(v, "one") == 0, "after a failed pwrite the old value stays, got %s", v ? v : "(none)");
    CHECK(file_size(seg) == before, "segment not cut back after a failed pwrite: %llu != %llu",
          (unsigned long long)file_size(seg), (unsigned long long)before);

    fail_fdatasync = 1;
    CHECK(put(inst, "b", "three", error) == PARLEY_E_IO, "a failed fdatasync must fail the batch");
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

    printf("crc\n");
    test_crc();
    printf("start syncs the newest segment\n");
    test_start_syncs_newest_segment();
    printf("write failures\n");
    test_write_failures();
    if (system("rm -rf /tmp/slog-test-crc-* /tmp/slog-test-sync-* /tmp/slog-test-fail-*") != 0) failures++;
    if (failures > 0) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("all passed\n");
    return 0;
}
