/*
 * late_reads.c — a storage plugin whose reads always answer PARLEY_PENDING and are
 * completed a moment later from a thread of the plugin's own, as a plugin reading
 * over the network would. It holds no data: get finds a row only when the sort key
 * is not empty, and that row's value is the partition; scan emits the rows "a",
 * "b" and "c" (within the limit), each with the partition as its value. apply is
 * unsupported. The tests use it to prove that the host's reads on a plugin worker
 * (`getHere`, `scanHere`) wait for a late completion and return what it emitted.
 */
#define _POSIX_C_SOURCE 200809L

#include <parley/plugin.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const parley_host_api *api;
} late_reads;

typedef struct {
    const parley_host_api *api;
    parley_op *op;
    parley_bytes partition;
    parley_bytes sort; /* get only */
    uint32_t limit;    /* scan only; 0 for a get */
    int is_scan;
} late_call;

static void *finish_later(void *argument) {
    late_call *call = argument;
    struct timespec pause = {0, 2 * 1000 * 1000};
    nanosleep(&pause, NULL);
    if (call->is_scan) {
        static const char *const keys[] = {"a", "b", "c"};
        for (uint32_t i = 0; i < 3 && i < call->limit; i++) {
            parley_bytes key = {(const uint8_t *)keys[i], 1};
            if (call->api->emit_row(call->op, key, call->partition) != 0) break;
        }
    } else if (call->sort.len > 0) {
        (void)call->api->emit_row(call->op, call->sort, call->partition);
    }
    call->api->complete(call->op, PARLEY_OK);
    free(call);
    return NULL;
}

/* Starts the thread that completes the call; the inputs stay valid until complete(). */
static parley_status answer_later(late_call *call) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, finish_later, call) != 0) {
        free(call);
        return PARLEY_E_INTERNAL;
    }
    pthread_detach(thread);
    return PARLEY_PENDING;
}

static parley_status lr_get(void *instance, parley_op *op, parley_bytes table, parley_bytes partition, parley_bytes sort) {
    late_reads *lr = instance;
    late_call *call = calloc(1, sizeof *call);
    (void)table;
    if (call == NULL) return PARLEY_E_NOMEM;
    call->api = lr->api;
    call->op = op;
    call->partition = partition;
    call->sort = sort;
    return answer_later(call);
}

static parley_status lr_scan(void *instance, parley_op *op, const parley_scan_request *request) {
    late_reads *lr = instance;
    late_call *call = calloc(1, sizeof *call);
    if (call == NULL) return PARLEY_E_NOMEM;
    call->api = lr->api;
    call->op = op;
    call->partition = request->partition;
    call->limit = request->limit;
    call->is_scan = 1;
    return answer_later(call);
}

static parley_status lr_apply(void *instance, parley_op *op, const parley_write *writes, size_t count, size_t write_size) {
    (void)instance;
    (void)op;
    (void)writes;
    (void)count;
    (void)write_size;
    return PARLEY_E_UNSUPPORTED;
}

static parley_status lr_create(const parley_host_api *api, parley_host *host, void **instance_out, char *error, size_t error_size) {
    late_reads *lr = calloc(1, sizeof *lr);
    (void)host;
    if (lr == NULL) {
        strncpy(error, "out of memory", error_size);
        return PARLEY_E_NOMEM;
    }
    lr->api = api;
    *instance_out = lr;
    return PARLEY_OK;
}

static void lr_destroy(void *instance) { free(instance); }

static const parley_storage_vtable storage = {
    .struct_size = sizeof(parley_storage_vtable),
    .get = lr_get,
    .scan = lr_scan,
    .apply = lr_apply,
};

static const parley_plugin_descriptor descriptor = {
    .magic = PARLEY_PLUGIN_MAGIC,
    .abi_major = PARLEY_ABI_MAJOR,
    .abi_minor = PARLEY_ABI_MINOR,
    .struct_size = sizeof(parley_plugin_descriptor),
    .kinds = PARLEY_KIND_STORAGE,
    .name = "late-reads",
    .version = "1.0.0",
    .description = "test fixture: reads completed later from the plugin's own threads",
    .build_tag = NULL,
    .create = lr_create,
    .destroy = lr_destroy,
    .storage = &storage,
};

PARLEY_PLUGIN_ENTRY(descriptor)
