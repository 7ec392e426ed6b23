#pragma once

// FLORA_API marks the symbols that libflora exports; everything else is
// compiled with hidden visibility.
#if defined(_WIN32)
#if defined(FLORA_BUILDING_LIBRARY)
#define FLORA_API __declspec(dllexport)
#else
#define FLORA_API __declspec(dllimport)
#endif
#else
#define FLORA_API __attribute__((visibility("default")))
#endif
