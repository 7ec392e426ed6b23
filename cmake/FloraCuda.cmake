# Decide whether the CUDA kernels in cuda/ are compiled.
#   FLORA_CUDA=OFF  : CPU-only library (the CPU kernels serve every op).
#   FLORA_CUDA=ON   : require a CUDA-enabled LibTorch and nvcc.
#   FLORA_CUDA=AUTO : compile them when both are present.
# Architectures come from TORCH_CUDA_ARCH_LIST (see FloraTorch.cmake).
set(FLORA_WITH_CUDA OFF)
if(NOT FLORA_CUDA STREQUAL "OFF")
  set(_flora_torch_has_cuda OFF)
  if(TARGET torch_cuda OR TARGET c10_cuda OR TORCH_CUDA_LIBRARIES)
    set(_flora_torch_has_cuda ON)
  endif()
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER)
    check_language(CUDA)
  endif()
  if(_flora_torch_has_cuda AND CMAKE_CUDA_COMPILER)
    set(FLORA_WITH_CUDA ON)
  elseif(FLORA_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FLORA_CUDA=ON but LibTorch has CUDA: ${_flora_torch_has_cuda}, "
                        "CUDA compiler: '${CMAKE_CUDA_COMPILER}'")
  endif()
endif()

if(FLORA_WITH_CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "flora: CUDA kernels ON (${CMAKE_CUDA_COMPILER}, TORCH_CUDA_ARCH_LIST ${TORCH_CUDA_ARCH_LIST})")
else()
  message(STATUS "flora: CUDA kernels OFF (CPU kernels only)")
endif()
