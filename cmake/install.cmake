# install.cmake - `cmake --install build [--prefix P]`: the programs, the C client library with its
# header and pkg-config file, the example config, a systemd unit and the data gemma-mkmodel needs.
include(GNUInstallDirs)

# The unit and the .pc file name absolute paths: write them at install time, when the prefix given to
# `cmake --install --prefix` is known (GM_* are the variables the templates use).
install(CODE "
  set(GM_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  set(GM_BINDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}\")
  set(GM_LIBDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}\")
  set(GM_INCLUDEDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_INCLUDEDIR}\")
  if(\"\${CMAKE_INSTALL_PREFIX}\" STREQUAL \"/usr\")
    set(GM_SYSCONFDIR /etc)
  else()
    set(GM_SYSCONFDIR \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SYSCONFDIR}\")
  endif()
  set(GM_VERSION ${PROJECT_VERSION})
  configure_file(${CMAKE_SOURCE_DIR}/packaging/gemmad.service.in ${CMAKE_BINARY_DIR}/gemmad.service @ONLY)
  configure_file(${CMAKE_SOURCE_DIR}/packaging/gemmad-client.pc.in ${CMAKE_BINARY_DIR}/gemmad-client.pc @ONLY)
")

# The client library, shared and self-contained (the RPC client, its protobuf code, CurveZMQ keys).
if(TARGET gm_proto)
  add_library(gemmad_client SHARED
    ${CMAKE_SOURCE_DIR}/client/gemma_client.c ${CMAKE_SOURCE_DIR}/client/gemma_client_rx.c
    ${CMAKE_SOURCE_DIR}/common/curve.c ${CMAKE_SOURCE_DIR}/common/status.c ${CMAKE_BINARY_DIR}/proto/gemma.pb-c.c)
  target_link_libraries(gemmad_client PRIVATE PkgConfig::PROTOBUFC PkgConfig::ZMQ Threads::Threads m)
  set_target_properties(gemmad_client PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION 0
    PUBLIC_HEADER ${CMAKE_SOURCE_DIR}/client/gemma_client.h)
  set_source_files_properties(${CMAKE_BINARY_DIR}/proto/gemma.pb-c.c PROPERTIES COMPILE_OPTIONS -w)
  install(TARGETS gemmad_client LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
          PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/gemmad)
  install(FILES ${CMAKE_BINARY_DIR}/gemmad-client.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
endif()

# Programs (gemma-worker sits beside gemmad: gemmad starts it from its own directory).
set(GM_INSTALL_PROGRAMS gemmad gemma-worker gemma-cli gemma-generate gemma-mkmodel gemma-quantize
    gemma-bench gemma-router gemma-keygen)
foreach(p ${GM_INSTALL_PROGRAMS})
  if(TARGET ${p})
    install(TARGETS ${p} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()

install(FILES ${CMAKE_SOURCE_DIR}/daemon/gemmad.conf.example
        DESTINATION ${CMAKE_INSTALL_SYSCONFDIR}/gemmad)
install(FILES ${CMAKE_SOURCE_DIR}/proto/gemma.proto ${CMAKE_SOURCE_DIR}/data/corpus.txt
        DESTINATION ${CMAKE_INSTALL_DATADIR}/gemmad)
install(FILES ${CMAKE_BINARY_DIR}/gemmad.service DESTINATION lib/systemd/system)
install(FILES ${CMAKE_SOURCE_DIR}/LICENSE ${CMAKE_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
