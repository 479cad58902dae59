# gemma-worker: one tensor-parallel rank, started by gemmad (daemon/workers.c).
# Lives beside gemmad in ${CMAKE_BINARY_DIR}/daemon so that gemmad finds it next to itself.
if(TARGET gm_proto)
  add_executable(gemma-worker ${CMAKE_SOURCE_DIR}/worker/worker_main.c)
  target_link_libraries(gemma-worker PRIVATE gm_worker gm_parallel gm_proto gm_common PkgConfig::ZMQ)
  set_target_properties(gemma-worker PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/daemon)
endif()
