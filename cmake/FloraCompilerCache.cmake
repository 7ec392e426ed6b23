# Use ccache when it is installed (FLORA_CCACHE=OFF to disable). Precompiled
# headers and ccache only cooperate with these sloppiness settings.
option(FLORA_CCACHE "Compile through ccache when it is available" ON)
if(FLORA_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  find_program(FLORA_CCACHE_PROGRAM ccache)
  if(FLORA_CCACHE_PROGRAM)
    set(_flora_launcher
        ${CMAKE_COMMAND} -E env
        "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
        ${FLORA_CCACHE_PROGRAM})
    set(CMAKE_CXX_COMPILER_LAUNCHER ${_flora_launcher})
    set(CMAKE_CUDA_COMPILER_LAUNCHER ${_flora_launcher})
    message(STATUS "flora: compiling through ${FLORA_CCACHE_PROGRAM}")
  endif()
endif()
