# tests/bench.cmake: gemma-bench's statistics (unit) and gemma-bench against a live gemmad (end to end).
gm_add_test(test_bench ${CMAKE_SOURCE_DIR}/tests/test_bench.c LIBS gm_bench_stats PkgConfig::CJSON)

# End to end: gemmad (null backend, then the tiny CPU model) on a free loopback port,
# 64 requests at concurrency 16, 16/16; the script checks the JSON report.
add_test(NAME bench_e2e_null COMMAND bash ${CMAKE_SOURCE_DIR}/tests/bench_e2e.sh ${CMAKE_BINARY_DIR} null)
set_tests_properties(bench_e2e_null PROPERTIES TIMEOUT 180 LABELS e2e)
add_test(NAME bench_e2e_tiny COMMAND bash ${CMAKE_SOURCE_DIR}/tests/bench_e2e.sh ${CMAKE_BINARY_DIR} tiny)
set_tests_properties(bench_e2e_tiny PROPERTIES TIMEOUT 300 LABELS e2e FIXTURES_REQUIRED tiny_model)
