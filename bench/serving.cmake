# bench/serving.cmake: gemma-bench, the serving load generator (output in ${CMAKE_BINARY_DIR}/bench).
add_library(gm_bench_stats STATIC ${CMAKE_CURRENT_SOURCE_DIR}/bench_stats.c ${CMAKE_CURRENT_SOURCE_DIR}/bench_run.c)
target_link_libraries(gm_bench_stats PUBLIC gm_common m)

# The HTTP driver (--http): libcurl from Debian's libcurl4-openssl-dev (scripts/deps.sh).
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
add_library(gm_bench_http STATIC ${CMAKE_CURRENT_SOURCE_DIR}/bench_sse.c ${CMAKE_CURRENT_SOURCE_DIR}/http_load.c)
target_link_libraries(gm_bench_http PUBLIC gm_bench_stats gm_common PkgConfig::CURL PkgConfig::CJSON)

if(TARGET gm_client)
  add_executable(gemma-bench ${CMAKE_CURRENT_SOURCE_DIR}/gemma_bench.c)
  target_link_libraries(gemma-bench PRIVATE gm_bench_http gm_bench_stats gm_client PkgConfig::ZMQ m)
  set_target_properties(gemma-bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bench)
endif()
