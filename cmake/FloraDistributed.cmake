# Decide whether data-parallel training (src/distributed/) is compiled.
#   FLORA_DISTRIBUTED=AUTO : when LibTorch was built with c10d and Gloo
#                            (USE_C10D_GLOO) and ships ProcessGroupGloo.hpp
#   FLORA_DISTRIBUTED=ON   : require it
#   FLORA_DISTRIBUTED=OFF  : leave it out; the rest of flora is unaffected
# Gloo's own headers come from third_party/gloo (vendored; LibTorch has the
# code). NCCL support is added when the CUDA kernels are built (so the CUDA
# toolkit is there) and nccl.h is found, preferably the one of the nvidia-nccl
# wheel that LibTorch loads at run time.
set(FLORA_DISTRIBUTED AUTO CACHE STRING "Compile data-parallel training on c10d: AUTO, ON or OFF")
set_property(CACHE FLORA_DISTRIBUTED PROPERTY STRINGS AUTO ON OFF)

set(FLORA_WITH_DISTRIBUTED OFF)
set(FLORA_WITH_NCCL OFF)
set(FLORA_GLOO_INCLUDE_DIR "${PROJECT_SOURCE_DIR}/third_party/gloo")
if(NOT FLORA_DISTRIBUTED STREQUAL "OFF")
  set(_flora_c10d_defs)
  if(TARGET torch_cpu)
    get_target_property(_flora_c10d_defs torch_cpu INTERFACE_COMPILE_DEFINITIONS)
  endif()
  find_path(_flora_c10d_header torch/csrc/distributed/c10d/ProcessGroupGloo.hpp
            PATHS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH NO_CACHE)
  if("USE_C10D_GLOO" IN_LIST _flora_c10d_defs AND _flora_c10d_header
     AND EXISTS "${FLORA_GLOO_INCLUDE_DIR}/gloo/config.h")
    set(FLORA_WITH_DISTRIBUTED ON)
  elseif(FLORA_DISTRIBUTED STREQUAL "ON")
    message(FATAL_ERROR "FLORA_DISTRIBUTED=ON but LibTorch lacks c10d with Gloo (definitions: '${_flora_c10d_defs}', "
                        "ProcessGroupGloo.hpp: '${_flora_c10d_header}') or ${FLORA_GLOO_INCLUDE_DIR}/gloo/config.h is missing")
  endif()
endif()

if(FLORA_WITH_DISTRIBUTED AND FLORA_WITH_CUDA AND TARGET torch_cuda)
  get_target_property(_flora_cuda_defs torch_cuda INTERFACE_COMPILE_DEFINITIONS)
  find_path(FLORA_NCCL_INCLUDE_DIR nccl.h
            HINTS "${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include" ${CUDAToolkit_INCLUDE_DIRS})
  if("USE_C10D_NCCL" IN_LIST _flora_cuda_defs AND FLORA_NCCL_INCLUDE_DIR)
    set(FLORA_WITH_NCCL ON)
  endif()
endif()
message(STATUS "flora: data-parallel training ${FLORA_WITH_DISTRIBUTED} (NCCL ${FLORA_WITH_NCCL})")

# 0/1 for version.h.
if(FLORA_WITH_DISTRIBUTED)
  set(FLORA_WITH_DISTRIBUTED_01 1)
else()
  set(FLORA_WITH_DISTRIBUTED_01 0)
endif()
if(FLORA_WITH_NCCL)
  set(FLORA_WITH_NCCL_01 1)
else()
  set(FLORA_WITH_NCCL_01 0)
endif()
