// The fused CPU kernels built for the AVX512 instruction set (CMake sets
// CPU_CAPABILITY=AVX512, CPU_CAPABILITY_AVX512 and the matching -m flags).
#include "fused_kernels_impl.h"
