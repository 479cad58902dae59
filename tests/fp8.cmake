# FP8 area: CPU twins and the FP8 quantizer always; GPU kernels (XQA decode attention, FP8
# quantize, FP8 GEMM) when CUDA is built.
gm_add_test(test_fp8 ${CMAKE_CURRENT_SOURCE_DIR}/test_fp8.c LIBS gm_quantize_fp8 gm_kernels_cpu gm_common
  PkgConfig::CJSON m TIMEOUT 300)
set_tests_properties(test_fp8 PROPERTIES FIXTURES_REQUIRED tiny_model)

if(GM_HAVE_CUDA)
  # GPU tests: label gpu, exit 77 (skipped) when no GPU is visible.
  gm_add_test(test_gpu_fp8 ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_fp8.c LIBS gm_cuda gm_kernels_cpu gm_common m
    LABELS gpu TIMEOUT 300)
  gm_add_test(test_gpu_xqa ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_xqa.c LIBS gm_cuda gm_kernels_cpu gm_common m
    LABELS gpu TIMEOUT 600)
endif()

# the CPU engine's --quant fp8 (the CUDA FP8 path's twin) against its bf16 self on the tiny model
gm_add_test(test_cpu_fp8_engine ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_fp8_engine.c LIBS gm_worker gm_common m
  ARGS ${CMAKE_BINARY_DIR}/models/tiny TIMEOUT 300)
set_tests_properties(test_cpu_fp8_engine PROPERTIES FIXTURES_REQUIRED tiny_model)

# FP8 checkpoints (gemma-quantize --fp8, static and dynamic) read by the CPU engine; broken ones
gm_add_test(test_fp8_ckpt ${CMAKE_CURRENT_SOURCE_DIR}/test_fp8_ckpt.c
  LIBS gm_quantize_fp8 gm_worker gm_kernels_cpu gm_common PkgConfig::CJSON m
  ARGS ${CMAKE_BINARY_DIR}/models/tiny ${CMAKE_SOURCE_DIR}/data/corpus.txt TIMEOUT 300)
set_tests_properties(test_fp8_ckpt PROPERTIES FIXTURES_REQUIRED tiny_model)

# an FP8 checkpoint served by gemmad on the CPU backend with the FP8 LM head (== gemma-generate)
if(TARGET gemmad AND TARGET gemma-quantize)
  add_test(NAME fp8_serve COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/fp8_serve.sh ${CMAKE_BINARY_DIR})
  set_tests_properties(fp8_serve PROPERTIES LABELS e2e TIMEOUT 300 FIXTURES_REQUIRED tiny_model)
endif()
