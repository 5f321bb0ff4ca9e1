/* Not part of the plugin ABI: support for Swift code built in this package
 * (the host and the Swift plugins). C plugin authors never need this file. */
#ifndef PARLEY_SWIFT_H
#define PARLEY_SWIFT_H

/** The toolchain that built this code, e.g. "swift-6.3.1". The host and Swift
 *  plugins put it in build_tag; the symbol is hidden in every image. */
__attribute__((visibility("hidden"))) const char *parley_swift_build_tag(void);

#endif
