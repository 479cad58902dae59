# CPU reference area: ops, the CPU engine, gemma-generate against an independent numpy Gemma.
gm_add_test(test_cpu_ops ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_ops.c LIBS gm_kernels_cpu gm_common m TIMEOUT 120)
