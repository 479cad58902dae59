# Loader tests: config.json parsing, safetensors reading/writing, dtype conversions.
gm_add_test(test_config ${CMAKE_CURRENT_SOURCE_DIR}/test_config.c LIBS gm_common LABELS loader)
gm_add_test(test_safetensors ${CMAKE_CURRENT_SOURCE_DIR}/test_safetensors.c LIBS gm_common LABELS loader)

# libFuzzer harness for the safetensors parser (configure with CC=clang -DGM_FUZZ=ON).
# The common sources are compiled straight into the fuzzer so they carry its instrumentation.
if(GM_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(WARNING "GM_FUZZ needs clang (configure with CC=clang); fuzz_safetensors not built")
  else()
    add_executable(fuzz_safetensors
      ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_safetensors.c
      ${CMAKE_SOURCE_DIR}/common/safetensors.c
      ${CMAKE_SOURCE_DIR}/common/model_config.c
      ${CMAKE_SOURCE_DIR}/common/dtype.c
      ${CMAKE_SOURCE_DIR}/common/status.c)
    target_compile_options(fuzz_safetensors PRIVATE -fsanitize=fuzzer,address,undefined
      -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
    target_link_options(fuzz_safetensors PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_libraries(fuzz_safetensors PRIVATE PkgConfig::CJSON m)
  endif()
endif()
gm_add_test(test_args ${CMAKE_CURRENT_SOURCE_DIR}/test_args.c LIBS gm_common)
