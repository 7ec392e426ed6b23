// The fused CPU kernels built for the DEFAULT instruction set (CMake sets
// CPU_CAPABILITY=DEFAULT, CPU_CAPABILITY_DEFAULT and the matching -m flags).
#include "fused_kernels_impl.h"
