// The fused CPU kernels built for the AVX2 instruction set (CMake sets
// CPU_CAPABILITY=AVX2, CPU_CAPABILITY_AVX2 and the matching -m flags).
#include "fused_kernels_impl.h"
