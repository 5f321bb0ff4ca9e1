/* Breaks: declares PARLEY_KIND_STORAGE but provides no storage table (storage = NULL). */
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

static const parley_plugin_descriptor descriptor = {
    PARLEY_PLUGIN_MAGIC,
    PARLEY_ABI_MAJOR,
    PARLEY_ABI_MINOR,
    sizeof(parley_plugin_descriptor),
    PARLEY_KIND_STORAGE,
    "broken-missing-table",
    "0.0.1",
    "Broken fixture: storage kind without a storage table.",
    NULL,
    stub_create,
    stub_destroy,
    NULL,
    NULL,
    NULL,
    NULL,
};

PARLEY_PLUGIN_ENTRY(descriptor)
