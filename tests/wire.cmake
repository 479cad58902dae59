# gemmad wired to cluster/ (CurveZMQ on the client socket, registration with gemma-router,
# launcher templates), end to end with the tiny CPU model: tests/test_wire.c.
if(TARGET gm_daemon AND TARGET gm_cluster AND TARGET gemma-router AND TARGET gemma-cli AND TARGET gemma-generate)
  gm_add_test(test_wire ${CMAKE_CURRENT_SOURCE_DIR}/test_wire.c LIBS gm_client gm_cluster gm_common PkgConfig::ZMQ
              TIMEOUT 300)
  target_compile_definitions(test_wire PRIVATE
    GEMMAD_BIN="$<TARGET_FILE:gemmad>"
    ROUTER_BIN="$<TARGET_FILE:gemma-router>"
    GEMMA_GENERATE_BIN="$<TARGET_FILE:gemma-generate>"
    GEMMA_CLI_BIN="$<TARGET_FILE:gemma-cli>"
    TINY_MODEL_DIR="${CMAKE_BINARY_DIR}/models/tiny")
  add_dependencies(test_wire gemmad gemma-worker gemma-router gemma-generate gemma-cli)
  set_tests_properties(test_wire PROPERTIES FIXTURES_REQUIRED tiny_model)
  if(TARGET gemma-bench)
    target_compile_definitions(test_wire PRIVATE GEMMA_BENCH_BIN="$<TARGET_FILE:gemma-bench>")
    add_dependencies(test_wire gemma-bench)
  endif()
endif()
