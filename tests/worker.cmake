# Worker-area tests: the shared-memory communicator and the coordinator's worker pool.
gm_add_test(test_comm ${CMAKE_CURRENT_SOURCE_DIR}/test_comm.c LIBS gm_parallel gm_common m TIMEOUT 120)

# workers.c belongs to gm_daemon; compiled in directly so this test does not depend on the daemon target.
if(TARGET gemma-worker AND TARGET gm_proto)
  gm_add_test(test_workers ${CMAKE_CURRENT_SOURCE_DIR}/test_workers.c
    LIBS gm_worker gm_ctl gm_parallel gm_proto gm_common PkgConfig::ZMQ TIMEOUT 300)
  target_sources(test_workers PRIVATE ${CMAKE_SOURCE_DIR}/daemon/workers.c ${CMAKE_SOURCE_DIR}/daemon/workers_start.c)
  add_dependencies(test_workers gemma-worker)
  set_tests_properties(test_workers PROPERTIES FIXTURES_REQUIRED tiny_model)
endif()

# The step contract (ctl/): plan codec, worker spec, step validator, slot deltas, sizing rule.
gm_add_test(test_ctl ${CMAKE_CURRENT_SOURCE_DIR}/test_ctl.c LIBS gm_ctl gm_common m TIMEOUT 60)

# NaN and Inf: the weight check at load, the CPU sampler's answer, the run-ahead feed.
gm_add_test(test_nonfinite ${CMAKE_CURRENT_SOURCE_DIR}/test_nonfinite.c LIBS gm_worker gm_parallel gm_kernels_cpu gm_common m
  TIMEOUT 60)
