# Decide whether the CUDA kernels in cuda/ are compiled.
#   FLORA_CUDA=OFF  : CPU-only library (the CPU kernels serve every op).
#   FLORA_CUDA=ON   : require a CUDA-enabled LibTorch and nvcc.
#   FLORA_CUDA=AUTO : compile them when both are present.
# Architectures: sm_90 (H100) plus PTX for newer cards, unless the user sets
# CMAKE_CUDA_ARCHITECTURES; nothing is guessed from the build machine.
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
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90-real 90-virtual)
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "flora: CUDA kernels ON (${CMAKE_CUDA_COMPILER}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "flora: CUDA kernels OFF (CPU kernels only)")
endif()
