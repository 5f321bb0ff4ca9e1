/* Breaks: parley_plugin_entry exists but returns NULL instead of a descriptor. */
#include <parley/plugin.h>

PARLEY_EXPORT const parley_plugin_descriptor *parley_plugin_entry(void);

PARLEY_EXPORT const parley_plugin_descriptor *parley_plugin_entry(void) {
    return NULL;
}
