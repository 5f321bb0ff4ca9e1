// Compiles the ABI header so SwiftPM rebuilds dependents when it changes, and
// carries the toolchain build tag shared by the host and Swift plugins.
#include "parley/plugin.h"
#include "parley_swift.h"

const char *parley_swift_build_tag(void) { return PARLEY_SWIFT_BUILD_TAG; }
