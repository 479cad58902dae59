# The OpenAI-compatible front door's parts, each alone: common/histo + common/jsonw, the
# Prometheus writer (parsed by prometheus_client), the OpenAI request parser and formatter
# (plus a bounded mutation run; tests/fuzz/fuzz_oai.c is the libFuzzer harness), the HTTP
# server over libmicrohttpd (a fake core driven by curl and http.client), the Python client.
gm_add_test(test_histo ${CMAKE_CURRENT_SOURCE_DIR}/test_histo.c LIBS gm_common TIMEOUT 60)
if(TARGET gm_daemon)
  gm_add_test(test_prom ${CMAKE_CURRENT_SOURCE_DIR}/test_prom.c LIBS gm_daemon TIMEOUT 60)
  if(Python3_Interpreter_FOUND)
    add_test(NAME test_prom_parse
      COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/test_prom_parse.py $<TARGET_FILE:test_prom>)
    set_tests_properties(test_prom_parse PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60)
  endif()
endif()
