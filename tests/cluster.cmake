# Cluster-area tests: CurveZMQ keys and ZAP, launcher detection, gemma-router (against
# in-process scripted replicas, then against real gemmad processes).
if(TARGET gm_cluster)
  gm_add_test(test_curve ${CMAKE_CURRENT_SOURCE_DIR}/test_curve.c LIBS gm_cluster TIMEOUT 60)
  gm_add_test(test_launch ${CMAKE_CURRENT_SOURCE_DIR}/test_launch.c LIBS gm_cluster TIMEOUT 30)
  if(TARGET gm_client)
    foreach(t test_router test_router_reg)
      gm_add_test(${t} ${CMAKE_CURRENT_SOURCE_DIR}/${t}.c LIBS gm_cluster gm_client TIMEOUT 180)
      target_sources(${t} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/test_router_fake.c
                                  ${CMAKE_CURRENT_SOURCE_DIR}/test_router_util.c)
    endforeach()
  endif()
endif()

# common/utf8: every string a reply carries is valid UTF-8.
gm_add_test(test_utf8 ${CMAKE_CURRENT_SOURCE_DIR}/test_utf8.c LIBS gm_common TIMEOUT 30)

# A fuzz run of gemmad (null backend) and of gemma-router in front of it, every reply parsed by
# Python protobuf, which rejects invalid UTF-8 in proto3 strings. Needs python3 with pyzmq and
# protobuf (scripts/deps.sh installs them); exits 77 (skipped) without them. The classes come
# from a descriptor set that protoc-c writes, so no generated Python has to match the runtime.
if(TARGET gemma-router AND TARGET gemmad AND Python3_Interpreter_FOUND)
  set(gm_desc ${CMAKE_BINARY_DIR}/proto/gemma.desc)
  add_custom_command(OUTPUT ${gm_desc}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/proto
    COMMAND ${PROTOC_C} --descriptor_set_out=${gm_desc} -I${CMAKE_SOURCE_DIR}/proto ${CMAKE_SOURCE_DIR}/proto/gemma.proto
    DEPENDS ${CMAKE_SOURCE_DIR}/proto/gemma.proto COMMENT "protoc-c gemma.desc")
  add_custom_target(gemma_desc ALL DEPENDS ${gm_desc})
  add_test(NAME test_router_fuzz COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/test_router_fuzz.py
    --gemmad $<TARGET_FILE:gemmad> --router $<TARGET_FILE:gemma-router>
    --model ${CMAKE_BINARY_DIR}/models/tiny --desc ${gm_desc})
  set_tests_properties(test_router_fuzz PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60 FIXTURES_REQUIRED tiny_model)
endif()

# gemma-router in front of real gemmad processes (tiny CPU model and the null backend).
if(TARGET gemma-router AND TARGET gemmad AND TARGET gm_client AND TARGET gemma-generate AND TARGET gemma-cli)
  gm_add_test(test_router_e2e ${CMAKE_CURRENT_SOURCE_DIR}/test_router_e2e.c LIBS gm_client PkgConfig::ZMQ TIMEOUT 600)
  target_compile_definitions(test_router_e2e PRIVATE
    GEMMAD_BIN="$<TARGET_FILE:gemmad>"
    ROUTER_BIN="$<TARGET_FILE:gemma-router>"
    GEMMA_GENERATE_BIN="$<TARGET_FILE:gemma-generate>"
    GEMMA_CLI_BIN="$<TARGET_FILE:gemma-cli>"
    TINY_MODEL_DIR="${CMAKE_BINARY_DIR}/models/tiny")
  add_dependencies(test_router_e2e gemmad gemma-worker gemma-router gemma-generate gemma-cli)
  set_tests_properties(test_router_e2e PROPERTIES FIXTURES_REQUIRED tiny_model)
endif()

# Two "hosts" from network namespaces + veth (root only; exits 77 = skipped otherwise).
if(TARGET gemma-router AND TARGET gemmad AND TARGET gemma-cli AND TARGET gemma-generate)
  add_test(NAME test_router_netns COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_router_netns.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(test_router_netns PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300 LABELS netns
    FIXTURES_REQUIRED tiny_model)
endif()
