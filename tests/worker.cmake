# Worker-area tests: the shared-memory communicator and the coordinator's worker pool.
gm_add_test(test_comm ${CMAKE_CURRENT_SOURCE_DIR}/test_comm.c LIBS gm_parallel gm_common m TIMEOUT 120)

# workers.c (and its encoder wire.c) belong to gm_daemon; compiled in directly so this test does not depend on the daemon target.
if(TARGET gemma-worker AND TARGET gm_proto)
  gm_add_test(test_workers ${CMAKE_CURRENT_SOURCE_DIR}/test_workers.c
    LIBS gm_worker gm_parallel gm_proto gm_common PkgConfig::ZMQ TIMEOUT 300)
  target_sources(test_workers PRIVATE ${CMAKE_SOURCE_DIR}/daemon/workers.c ${CMAKE_SOURCE_DIR}/daemon/wire.c)
  add_dependencies(test_workers gemma-worker)
  set_tests_properties(test_workers PROPERTIES FIXTURES_REQUIRED tiny_model)
endif()
