# Sanitizer and fuzzing builds of flora's own code.
#
#   -DFLORA_SANITIZE=address,undefined   instrument flora, its tests, benchmarks
#                                        and examples (any -fsanitize= list)
#   -DFLORA_FUZZ=ON                      also build the libFuzzer targets of
#                                        tests/fuzz (clang only), and add
#                                        libFuzzer's coverage instrumentation
#                                        to everything flora compiles
#
# LibTorch, GoogleTest and the system libraries stay as shipped: only the
# code that this project compiles is instrumented (the flags are directory
# options of the top-level project, so targets imported from LibTorch's
# package never see them). scripts/sanitize.sh builds this configuration in
# its own build directory and runs the CPU tests under it; the runtime
# options and the suppressions it needs are in tests/sanitize/ (each entry
# says why).
set(FLORA_SANITIZE "" CACHE STRING
    "Sanitizers for flora's own code, as a -fsanitize= list (e.g. address,undefined); empty: none")
option(FLORA_FUZZ "Build the libFuzzer targets (tests/fuzz); needs clang" OFF)

if(FLORA_SANITIZE)
  # -fno-sanitize-recover: the first undefined-behaviour report ends the
  # process with an error, so a test or a fuzz input that triggers one fails
  # instead of printing a line that nobody reads. Frame pointers and line
  # tables make the reports' stacks readable at little compile cost (full
  # debug info of LibTorch's headers would make every object huge).
  set(_flora_sanitize_flags
      -fsanitize=${FLORA_SANITIZE} -fno-sanitize-recover=all -fno-omit-frame-pointer)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    list(APPEND _flora_sanitize_flags -gline-tables-only)
  else()
    list(APPEND _flora_sanitize_flags -g1)
  endif()
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_flora_sanitize_flags}>")
  add_link_options(-fsanitize=${FLORA_SANITIZE})
  message(STATUS "flora: sanitizers ${FLORA_SANITIZE} for flora's own code (LibTorch is not instrumented)")
endif()

if(FLORA_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "FLORA_FUZZ needs clang (libFuzzer): configure with -DCMAKE_CXX_COMPILER=clang++-14")
  endif()
  # Coverage feedback from the library and the example too, not only from
  # the fuzz targets' own files; the targets link libFuzzer's main.
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>")
endif()
