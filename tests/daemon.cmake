# Daemon area: scheduler / block manager / config units, then gemmad end to end
# (run as a child process; gemma-worker beside it in ${CMAKE_BINARY_DIR}/daemon).
if(TARGET gm_daemon)
  gm_add_test(test_daemon_sched ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_sched.c LIBS gm_daemon TIMEOUT 60)
  gm_add_test(test_daemon_share ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_share.c LIBS gm_daemon TIMEOUT 120)
  gm_add_test(test_daemon_beam_sched ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_beam_sched.c LIBS gm_daemon TIMEOUT 120)
  gm_add_test(test_daemon_spec ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_spec.c LIBS gm_daemon TIMEOUT 120)
  gm_add_test(test_daemon_config ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_config.c LIBS gm_daemon TIMEOUT 60)

  # gemmad links no device code (ldd, ELF sections, cuobjdump --list-elf when the toolkit has it)
  find_program(GM_CUOBJDUMP cuobjdump HINTS ${CUDAToolkit_BIN_DIR} /usr/local/cuda/bin)
  add_test(NAME gemmad_no_device_code
    COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/gemmad_deps.sh $<TARGET_FILE:gemmad> "$<$<BOOL:${GM_CUOBJDUMP}>:${GM_CUOBJDUMP}>")

  set(GM_DAEMON_TEST_DEFS
    GEMMAD_BIN="$<TARGET_FILE:gemmad>"
    GEMMA_GENERATE_BIN="$<TARGET_FILE:gemma-generate>"
    GEMMA_CLI_BIN="$<TARGET_FILE:gemma-cli>"
    TINY_MODEL_DIR="${CMAKE_BINARY_DIR}/models/tiny")
  foreach(t test_daemon_e2e test_daemon_robust test_daemon_faults test_daemon_limits test_client
           test_daemon_prefix test_daemon_spec_e2e)
    gm_add_test(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c LIBS gm_client gm_common PkgConfig::ZMQ TIMEOUT 600)
    target_compile_definitions(${t} PRIVATE ${GM_DAEMON_TEST_DEFS})
    add_dependencies(${t} gemmad gemma-worker gemma-generate gemma-cli)
    set_tests_properties(${t} PROPERTIES FIXTURES_REQUIRED tiny_model)
  endforeach()
  # beam search through the RPC against a reference search on a CPU engine in the test process
  gm_add_test(test_daemon_beam ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_beam.c
    LIBS gm_client gm_worker gm_parallel gm_common PkgConfig::ZMQ m TIMEOUT 600)
  target_compile_definitions(test_daemon_beam PRIVATE ${GM_DAEMON_TEST_DEFS})
  add_dependencies(test_daemon_beam gemmad gemma-worker)
  set_tests_properties(test_daemon_beam PROPERTIES FIXTURES_REQUIRED tiny_model)
  # logprobs, penalties, min_tokens through the RPC, checked against a CPU engine in the test process
  gm_add_test(test_daemon_sampling ${CMAKE_CURRENT_SOURCE_DIR}/test_daemon_sampling.c
    LIBS gm_client gm_worker gm_parallel gm_common PkgConfig::ZMQ m TIMEOUT 600)
  target_compile_definitions(test_daemon_sampling PRIVATE ${GM_DAEMON_TEST_DEFS})
  add_dependencies(test_daemon_sampling gemmad gemma-worker)
  set_tests_properties(test_daemon_sampling PROPERTIES FIXTURES_REQUIRED tiny_model)
endif()

# A new user's first minute: --check-config, a busy port.
if(TARGET gemmad)
  add_test(NAME gemmad_startup COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_gemmad_startup.sh
           $<TARGET_FILE:gemmad> ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(gemmad_startup PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 120)
endif()
