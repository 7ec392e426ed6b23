// Pins the CPU BLAS to one code path for this test binary, so that results
// compared bit for bit with fixtures (flora-opt's parity fixtures, the
// checkpoint-compatibility runs) do not depend on the CPU the tests run on.
//
// MKL, LibTorch's CPU BLAS, picks its GEMM kernels by instruction set: the
// AVX2 and AVX-512 kernels sum in different orders, and a momentum
// re-projected every step amplifies that to ~2e-6 relative. MKL's
// conditional numerical reproducibility mode COMPATIBLE is the same code
// path on every x86-64 CPU; the fixture generators set it too. MKL reads
// the variable at its first call, which comes after static initialisation.
// A user's own MKL_CBWR wins.

#include <cstdlib>

namespace {

[[maybe_unused]] const bool kPinned = ::setenv("MKL_CBWR", "COMPATIBLE", /*overwrite=*/0) == 0;

} // namespace
