/* Breaks: exports no parley_plugin_entry symbol at all (only an unrelated function). */
#include <parley/plugin.h>

__attribute__((visibility("default"))) int parley_plugin_entry_v0(void);

__attribute__((visibility("default"))) int parley_plugin_entry_v0(void) {
    return PARLEY_PLUGIN_MAGIC == 0 ? 1 : 0;
}
