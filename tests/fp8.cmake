# FP8 area: CPU twins always; GPU kernels (XQA decode attention, FP8 quantize, FP8 GEMM) with CUDA.
gm_add_test(test_fp8 ${CMAKE_CURRENT_SOURCE_DIR}/test_fp8.c LIBS gm_kernels_cpu gm_common m TIMEOUT 120)

if(GM_HAVE_CUDA)
  # GPU tests: label gpu, exit 77 (skipped) when no GPU is visible.
  gm_add_test(test_gpu_fp8 ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_fp8.c LIBS gm_cuda gm_kernels_cpu gm_common m
    LABELS gpu TIMEOUT 300)
  gm_add_test(test_gpu_xqa ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_xqa.c LIBS gm_cuda gm_kernels_cpu gm_common m
    LABELS gpu TIMEOUT 600)
endif()
