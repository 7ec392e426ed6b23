// Picks the fused kernels of the best instruction set compiled in that both
// this CPU and ATen's choice allow (at::get_cpu_capability() honours
// ATEN_CPU_CAPABILITY, so one variable forces both ATen's and flora's
// kernels down to the same level).

#include "fused_kernels.h"

#include <ATen/Version.h>

#include <string>

namespace flora::cpu {

namespace DEFAULT {
const Kernels& table();
}
#ifdef FLORA_CPU_AVX2
namespace AVX2 {
const Kernels& table();
}
#endif
#ifdef FLORA_CPU_AVX512
namespace AVX512 {
const Kernels& table();
}
#endif

const Kernels& kernels_default() {
  return DEFAULT::table();
}

const Kernels* kernels_avx2() {
#ifdef FLORA_CPU_AVX2
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &AVX2::table() : nullptr;
#else
  return nullptr;
#endif
}

const Kernels* kernels_avx512() {
#ifdef FLORA_CPU_AVX512
  const bool cpu = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return cpu ? &AVX512::table() : nullptr;
#else
  return nullptr;
#endif
}

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const std::string aten = at::get_cpu_capability(); // "DEFAULT", "AVX2", "AVX512", ...
    if (aten.rfind("AVX512", 0) == 0 && kernels_avx512() != nullptr) {
      return kernels_avx512();
    }
    if (aten.rfind("AVX", 0) == 0 && kernels_avx2() != nullptr) {
      return kernels_avx2();
    }
    return &kernels_default();
  }();
  return *chosen;
}

} // namespace flora::cpu
