# tests/bench.cmake: gemma-bench's statistics (unit) and gemma-bench against a live gemmad (end to end).
gm_add_test(test_bench ${CMAKE_SOURCE_DIR}/tests/test_bench.c LIBS gm_bench_stats PkgConfig::CJSON)

# End to end: gemmad (null backend, then the tiny CPU model) on a free loopback port,
# 64 requests at concurrency 16, 16/16; the script checks the JSON report.
add_test(NAME bench_e2e_null COMMAND bash ${CMAKE_SOURCE_DIR}/tests/bench_e2e.sh ${CMAKE_BINARY_DIR} null)
set_tests_properties(bench_e2e_null PROPERTIES TIMEOUT 180 LABELS e2e)
add_test(NAME bench_e2e_tiny COMMAND bash ${CMAKE_SOURCE_DIR}/tests/bench_e2e.sh ${CMAKE_BINARY_DIR} tiny)
set_tests_properties(bench_e2e_tiny PROPERTIES TIMEOUT 300 LABELS e2e FIXTURES_REQUIRED tiny_model)

# gemma-bench --http: the SSE reader alone (split at every byte, chunk shapes of vLLM and
# gemmad), then gemma-bench against bench_http_fake (http/http + http/oai streaming fake
# tokens, failures injected) with exact request and token counts.
gm_add_test(test_bench_sse ${CMAKE_SOURCE_DIR}/tests/test_bench_sse.c LIBS gm_bench_http TIMEOUT 60)
if(TARGET gm_daemon)
  add_executable(bench_http_fake ${CMAKE_SOURCE_DIR}/tests/bench_http_fake.c)
  target_link_libraries(bench_http_fake PRIVATE gm_daemon gm_bench_stats)
  if(TARGET gemma-bench)
    add_test(NAME test_bench_http
      COMMAND bash ${CMAKE_SOURCE_DIR}/tests/test_bench_http.sh $<TARGET_FILE:gemma-bench>
              $<TARGET_FILE:bench_http_fake>)
    set_tests_properties(test_bench_http PROPERTIES TIMEOUT 180)
  endif()
endif()
