/* Breaks: build_tag names another toolchain, so a host must refuse it as a mismatched Swift runtime. */
#include <parley/plugin.h>

static parley_status stub_create(const parley_host_api *api, parley_host *host, void **instance_out, char *error,
                                 size_t error_size) {
    static int instance;
    (void)api;
    (void)host;
    (void)error;
    (void)error_size;
    *instance_out = &instance;
    return PARLEY_OK;
}

static void stub_destroy(void *instance) {
    (void)instance;
}

static parley_status stub_get(void *instance, parley_op *op, parley_bytes table, parley_bytes partition,
                              parley_bytes sort) {
    (void)instance;
    (void)op;
    (void)table;
    (void)partition;
    (void)sort;
    return PARLEY_E_UNSUPPORTED;
}

static parley_status stub_scan(void *instance, parley_op *op, const parley_scan_request *request) {
    (void)instance;
    (void)op;
    (void)request;
    return PARLEY_E_UNSUPPORTED;
}

static parley_status stub_apply(void *instance, parley_op *op, const parley_write *writes, size_t count,
                                size_t write_size) {
    (void)instance;
    (void)op;
    (void)writes;
    (void)count;
    (void)write_size;
    return PARLEY_E_UNSUPPORTED;
}

static const parley_storage_vtable stub_storage = {
    sizeof(parley_storage_vtable),
    stub_get,
    stub_scan,
    stub_apply,
};

static const parley_plugin_descriptor descriptor = {
    PARLEY_PLUGIN_MAGIC,
    PARLEY_ABI_MAJOR,
    PARLEY_ABI_MINOR,
    sizeof(parley_plugin_descriptor),
    PARLEY_KIND_STORAGE,
    "broken-build-tag-mismatch",
    "0.0.1",
    "Broken fixture: foreign build tag.",
    "swift-0.0.0-other-toolchain",
    stub_create,
    stub_destroy,
    &stub_storage,
    NULL,
    NULL,
    NULL,
};

PARLEY_PLUGIN_ENTRY(descriptor)
