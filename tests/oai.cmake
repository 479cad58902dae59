# The OpenAI-compatible front door's parts, each alone: common/histo + common/jsonw, the
# Prometheus writer (parsed by prometheus_client), the OpenAI request parser and formatter
# (plus a bounded mutation run; tests/fuzz/fuzz_oai.c is the libFuzzer harness), the HTTP
# server over libmicrohttpd (a fake core driven by curl and http.client), the Python client.

# gm_add_py_test(NAME script.py ARGS...): a Python test, exit 77 = skipped.
function(gm_add_py_test name script)
  if(Python3_Interpreter_FOUND)
    add_test(NAME ${name} COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/${script} ${ARGN})
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
      ENVIRONMENT "GM_SRC=${CMAKE_SOURCE_DIR};GM_BIN=${CMAKE_BINARY_DIR}")
  endif()
endfunction()

gm_add_test(test_histo ${CMAKE_CURRENT_SOURCE_DIR}/test_histo.c LIBS gm_common TIMEOUT 60)
if(TARGET gm_daemon)
  gm_add_test(test_prom ${CMAKE_CURRENT_SOURCE_DIR}/test_prom.c LIBS gm_daemon TIMEOUT 60)
  gm_add_py_test(test_prom_parse test_prom_parse.py $<TARGET_FILE:test_prom>)
  gm_add_test(test_oai ${CMAKE_CURRENT_SOURCE_DIR}/test_oai.c LIBS gm_daemon TIMEOUT 60)
  gm_add_test(test_oai_fmt ${CMAKE_CURRENT_SOURCE_DIR}/test_oai_fmt.c LIBS gm_daemon TIMEOUT 60)
  gm_add_test(test_oai_mutate ${CMAKE_CURRENT_SOURCE_DIR}/test_oai_mutate.c LIBS gm_daemon TIMEOUT 300)
  add_executable(http_fake_core ${CMAKE_CURRENT_SOURCE_DIR}/http_fake_core.c)
  target_link_libraries(http_fake_core PRIVATE gm_daemon)
  gm_add_py_test(test_http test_http.py $<TARGET_FILE:http_fake_core>)
endif()
if(TARGET gemmad AND TARGET gemma-generate)
  gm_add_py_test(test_python_client test_python_client.py $<TARGET_FILE:gemmad> $<TARGET_FILE:gemma-generate>
                 ${CMAKE_BINARY_DIR}/models/tiny)
  if(TEST test_python_client)
    set_tests_properties(test_python_client PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 600)
  endif()
endif()

# gemmad's HTTP front door end to end: the openai package (output equal to gemma-generate's),
# curl, prometheus_client and hostile clients, and a load driver for many concurrent streams.
if(TARGET gemmad AND TARGET gemma-generate AND TARGET gemma-cli)
  add_executable(http_load ${CMAKE_CURRENT_SOURCE_DIR}/http_load.c)
  gm_add_py_test(test_http_openai test_http_openai.py $<TARGET_FILE:gemmad> $<TARGET_FILE:gemma-generate>
                 ${CMAKE_BINARY_DIR}/models/tiny ${CMAKE_BINARY_DIR}/models/tiny_gemma3 $<TARGET_FILE:gemma-cli>)
  gm_add_py_test(test_http_serve test_http_serve.py $<TARGET_FILE:gemmad> ${CMAKE_BINARY_DIR}/models/tiny)
  # the clients' sampling flags: gemma-cli over the RPC against gemma-generate offline
  gm_add_py_test(test_cli_sampling test_cli_sampling.py $<TARGET_FILE:gemmad> $<TARGET_FILE:gemma-cli>
                 $<TARGET_FILE:gemma-generate> ${CMAKE_BINARY_DIR}/models/tiny)
  # beam search over HTTP (openai package) and gemma-cli --beam-width
  gm_add_py_test(test_http_beam test_http_beam.py $<TARGET_FILE:gemmad> $<TARGET_FILE:gemma-cli>
                 ${CMAKE_BINARY_DIR}/models/tiny)
  foreach(t test_http_openai test_http_serve test_cli_sampling test_http_beam)
    if(TEST ${t})
      set_tests_properties(${t} PROPERTIES FIXTURES_REQUIRED "tiny_model;tiny_gemma3" TIMEOUT 600)
    endif()
  endforeach()
  if(TARGET gemma-router)
    gm_add_py_test(test_router_http test_router_http.py $<TARGET_FILE:gemmad> $<TARGET_FILE:gemma-router>
                   ${CMAKE_BINARY_DIR}/models/tiny)
    if(TEST test_router_http)
      set_tests_properties(test_router_http PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 600)
    endif()
  endif()
  add_test(NAME test_http_load COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_http_load.sh $<TARGET_FILE:gemmad>
           $<TARGET_FILE:http_load> ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(test_http_load PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 600)
endif()

# libFuzzer harness for the OpenAI request parsers (configure with CC=clang -DGM_FUZZ=ON);
# the sources it checks are compiled into it so they carry the fuzzer's instrumentation.
if(GM_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
  add_executable(fuzz_oai
    ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_oai.c
    ${CMAKE_SOURCE_DIR}/http/oai.c
    ${CMAKE_SOURCE_DIR}/http/oai_fmt.c
    ${CMAKE_SOURCE_DIR}/common/jsonw.c
    ${CMAKE_SOURCE_DIR}/common/status.c)
  target_compile_options(fuzz_oai PRIVATE -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  target_link_options(fuzz_oai PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_oai PRIVATE PkgConfig::CJSON m)
endif()
