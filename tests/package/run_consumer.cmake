# Builds and runs the consumer project (tests/package) against flora.
#   -DMODE=package|subdirectory|fetchcontent
#   -DFLORA_BUILD_DIR=<flora's build tree> (package: installed from it)
#   -DFLORA_SOURCE_DIR=<flora's source tree>
#   -DWORK_DIR=<scratch directory>  -DPREFIX_PATH=<LibTorch's CMake prefix>
#   -DGENERATOR=<CMake generator>
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix_path "${PREFIX_PATH}")
set(extra)
if(MODE STREQUAL "package")
  run(${CMAKE_COMMAND} --install "${FLORA_BUILD_DIR}" --prefix "${WORK_DIR}/install")
  set(prefix_path "${WORK_DIR}/install;${PREFIX_PATH}")
else()
  # Only the library: the vendoring project does not want flora's tests.
  list(APPEND extra -DFLORA_SOURCE_DIR=${FLORA_SOURCE_DIR} -DFLORA_CUDA=OFF)
endif()
# A list cannot travel through execute_process's arguments: use a cache file.
file(WRITE "${WORK_DIR}/init.cmake" "set(CMAKE_PREFIX_PATH \"${prefix_path}\" CACHE STRING \"\")\n")
run(${CMAKE_COMMAND} -C "${WORK_DIR}/init.cmake" -S "${FLORA_SOURCE_DIR}/tests/package" -B "${WORK_DIR}/build"
    -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release -DFLORA_CONSUME=${MODE} ${extra})
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
