# The GPT-2 example's third-party dependencies, found in one place for
# examples/gpt2 and tests/gpt2 (either may read this first).
#
# Required (scripts/setup.sh installs them; without one, the example and its
# tests are skipped): nlohmann-json (nlohmann-json3-dev), CLI11
# (libcli11-dev) and PCRE2 (libpcre2-dev, which runs GPT-2's pre-tokenizer
# regex). Optional: cairo (libcairo2-dev), which draws loss.png; without it
# the program writes loss.svg only.
#
# Sets FLORA_GPT2_MISSING (the missing required packages, empty when all are
# there) and the global targets flora_gpt2_pcre2 and, when found,
# flora_gpt2_cairo.

find_package(nlohmann_json 3.2 QUIET)
find_package(CLI11 QUIET)

if(NOT TARGET flora_gpt2_pcre2)
  find_path(FLORA_PCRE2_INCLUDE_DIR pcre2.h)
  find_library(FLORA_PCRE2_LIBRARY pcre2-8)
  if(FLORA_PCRE2_INCLUDE_DIR AND FLORA_PCRE2_LIBRARY)
    add_library(flora_gpt2_pcre2 INTERFACE IMPORTED GLOBAL)
    target_include_directories(flora_gpt2_pcre2 INTERFACE ${FLORA_PCRE2_INCLUDE_DIR})
    target_link_libraries(flora_gpt2_pcre2 INTERFACE ${FLORA_PCRE2_LIBRARY})
  endif()
endif()

if(NOT TARGET flora_gpt2_cairo)
  find_path(FLORA_CAIRO_INCLUDE_DIR cairo.h PATH_SUFFIXES cairo)
  find_library(FLORA_CAIRO_LIBRARY cairo)
  if(FLORA_CAIRO_INCLUDE_DIR AND FLORA_CAIRO_LIBRARY)
    add_library(flora_gpt2_cairo INTERFACE IMPORTED GLOBAL)
    target_include_directories(flora_gpt2_cairo INTERFACE ${FLORA_CAIRO_INCLUDE_DIR})
    target_link_libraries(flora_gpt2_cairo INTERFACE ${FLORA_CAIRO_LIBRARY})
  endif()
endif()

set(FLORA_GPT2_MISSING "")
if(NOT nlohmann_json_FOUND)
  list(APPEND FLORA_GPT2_MISSING nlohmann-json3-dev)
endif()
if(NOT CLI11_FOUND)
  list(APPEND FLORA_GPT2_MISSING libcli11-dev)
endif()
if(NOT TARGET flora_gpt2_pcre2)
  list(APPEND FLORA_GPT2_MISSING libpcre2-dev)
endif()
