# Installation: headers, the library, and a CMake package so that
#   find_package(flora CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE flora::flora)
# works from the install prefix.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS flora EXPORT floraTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/flora DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/include/flora/version.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/flora)

set(FLORA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/flora)
install(EXPORT floraTargets NAMESPACE flora:: DESTINATION ${FLORA_CMAKE_DIR})
configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/floraConfig.cmake.in
  ${PROJECT_BINARY_DIR}/floraConfig.cmake
  INSTALL_DESTINATION ${FLORA_CMAKE_DIR})
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/floraConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/floraConfig.cmake
  ${PROJECT_BINARY_DIR}/floraConfigVersion.cmake
  DESTINATION ${FLORA_CMAKE_DIR})
