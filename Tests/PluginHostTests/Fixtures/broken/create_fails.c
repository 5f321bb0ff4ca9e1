/* Breaks: a well-formed storage plugin whose create() always fails with PARLEY_E_IO and a reason. */
#include <parley/plugin.h>

#include <stdio.h>

static parley_status failing_create(const parley_host_api *api, parley_host *host, void **instance_out, char *error,
                                    size_t error_size) {
    (void)api;
    (void)host;
    (void)instance_out;
    if (error != NULL && error_size > 0) {
        snprintf(error, error_size, "%s", "cannot open /nonexistent/db: permission denied");
    }
    return PARLEY_E_IO;
}

static void failing_destroy(void *instance) {
    (void)instance;
}

static parley_status unsupported_get(void *instance, parley_op *op, parley_bytes table, parley_bytes partition,
                                     parley_bytes sort) {
    (void)instance;
    (void)op;
    (void)table;
    (void)partition;
    (void)sort;
    return PARLEY_E_UNSUPPORTED;
}

static parley_status unsupported_scan(void *instance, parley_op *op, const parley_scan_request *request) {
    (void)instance;
    (void)op;
    (void)request;
    return PARLEY_E_UNSUPPORTED;
}

static parley_status unsupported_apply(void *instance, parley_op *op, const parley_write *writes, size_t count,
                                       size_t write_size) {
    (void)instance;
    (void)op;
    (void)writes;
    (void)count;
    (void)write_size;
    return PARLEY_E_UNSUPPORTED;
}

static const parley_storage_vtable failing_storage = {
    sizeof(parley_storage_vtable),
    unsupported_get,
    unsupported_scan,
    unsupported_apply,
};

static const parley_plugin_descriptor descriptor = {
    PARLEY_PLUGIN_MAGIC,
    PARLEY_ABI_MAJOR,
    PARLEY_ABI_MINOR,
    sizeof(parley_plugin_descriptor),
    PARLEY_KIND_STORAGE,
    "broken-create-fails",
    "0.0.1",
    "Broken fixture: create() fails with an I/O error.",
    NULL,
    failing_create,
    failing_destroy,
    &failing_storage,
    NULL,
    NULL,
    NULL,
};

PARLEY_PLUGIN_ENTRY(descriptor)
