# Locate LibTorch.
#
# Any LibTorch works: point CMAKE_PREFIX_PATH or Torch_DIR at it. Without a
# hint we ask a Python interpreter that has torch (FLORA_PYTHON, else the
# cache that scripts/setup.sh fills, else python3 on PATH) for its CMake prefix.
# A CUDA LibTorch's CMake config adds -gencode flags to CMAKE_CUDA_FLAGS for
# TORCH_CUDA_ARCH_LIST (by default a long list including architectures that
# CUDA 13 no longer supports). flora targets sm_90 (H100) plus PTX for newer
# cards unless told otherwise; nothing is guessed from the build machine.
set(FLORA_CUDA_ARCH_LIST "9.0+PTX" CACHE STRING "CUDA architectures (TORCH_CUDA_ARCH_LIST syntax)")
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "${FLORA_CUDA_ARCH_LIST}")
endif()

if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  find_package(Torch QUIET CONFIG)
  if(NOT Torch_FOUND)
    set(_flora_pythons)
    if(FLORA_PYTHON)
      list(APPEND _flora_pythons "${FLORA_PYTHON}")
    endif()
    if(DEFINED ENV{FLORA_CACHE})
      list(APPEND _flora_pythons "$ENV{FLORA_CACHE}/torch-2.11.0/bin/python")
    endif()
    list(APPEND _flora_pythons "$ENV{HOME}/.cache/flora/torch-2.11.0/bin/python" python3)
    foreach(_py IN LISTS _flora_pythons)
      execute_process(
        COMMAND "${_py}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
        OUTPUT_VARIABLE _flora_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
        ERROR_QUIET RESULT_VARIABLE _flora_rc)
      if(_flora_rc EQUAL 0 AND EXISTS "${_flora_torch_prefix}/Torch/TorchConfig.cmake")
        list(APPEND CMAKE_PREFIX_PATH "${_flora_torch_prefix}")
        break()
      endif()
    endforeach()
  endif()
endif()

find_package(Torch REQUIRED CONFIG)
message(STATUS "flora: LibTorch ${Torch_VERSION} from ${Torch_DIR}")

# Imported targets are local to the directory that found them. When flora is
# vendored (add_subdirectory, FetchContent), the parent's targets link
# flora::flora and so need LibTorch's targets too: make them global.
if(NOT PROJECT_IS_TOP_LEVEL)
  get_directory_property(_flora_imported IMPORTED_TARGETS)
  foreach(_target IN LISTS _flora_imported)
    get_target_property(_global ${_target} IMPORTED_GLOBAL)
    if(NOT _global)
      set_target_properties(${_target} PROPERTIES IMPORTED_GLOBAL TRUE)
    endif()
  endforeach()
endif()

# The imported target `torch` carries LibTorch's include directories and
# compile options (the C++ ABI macro); ${TORCH_LIBRARIES} adds c10 and, for a
# CUDA build, c10_cuda and NVRTC, which flora links privately.
