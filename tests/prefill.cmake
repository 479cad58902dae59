# Prefill attention: the CPU twin with Gemma 2/3's options (always) and the Hopper kernel against it
# (GPU: label gpu, exit 77 without one; GM_PREFILL_SMALL=1 for the small cases under compute-sanitizer).
gm_add_test(test_cpu_attn ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_attn.c LIBS gm_kernels_cpu gm_common m TIMEOUT 120)
if(GM_HAVE_CUDA)
  gm_add_test(test_gpu_prefill_hopper ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_prefill_hopper.c
    LIBS gm_cuda gm_kernels_cpu gm_common CUDA::cudart m LABELS gpu TIMEOUT 1200)
endif()
