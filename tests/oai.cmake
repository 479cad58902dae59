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
if(TARGET gm_daemon)
  gm_add_test(test_oai ${CMAKE_CURRENT_SOURCE_DIR}/test_oai.c LIBS gm_daemon TIMEOUT 60)
  gm_add_test(test_oai_fmt ${CMAKE_CURRENT_SOURCE_DIR}/test_oai_fmt.c LIBS gm_daemon TIMEOUT 60)
  gm_add_test(test_oai_mutate ${CMAKE_CURRENT_SOURCE_DIR}/test_oai_mutate.c LIBS gm_daemon TIMEOUT 300)
endif()

# libFuzzer harness for the OpenAI request parsers (configure with CC=clang -DGM_FUZZ=ON);
# the sources it checks are compiled into it so they carry the fuzzer's instrumentation.
if(GM_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
  add_executable(fuzz_oai
    ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_oai.c
    ${CMAKE_SOURCE_DIR}/daemon/oai.c
    ${CMAKE_SOURCE_DIR}/daemon/oai_fmt.c
    ${CMAKE_SOURCE_DIR}/common/jsonw.c
    ${CMAKE_SOURCE_DIR}/common/status.c)
  target_compile_options(fuzz_oai PRIVATE -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  target_link_options(fuzz_oai PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_oai PRIVATE PkgConfig::CJSON m)
endif()
