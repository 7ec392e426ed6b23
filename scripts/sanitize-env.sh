# Sourced by scripts/sanitize.sh and scripts/fuzz.sh: the sanitizers'
# runtime options (tests/sanitize/README.md explains each). Exported before
# the build too, because the build runs the test binaries to list their
# tests (gtest_discover_tests).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:abort_on_error=0:detect_stack_use_after_return=0:strict_init_order=1:check_initialization_order=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:suppressions=$root/tests/sanitize/ubsan.supp}"
