# INT4 AWQ: packing, quantizer, dequantizing matmul, tiny-model quality and CPU engine (test_awq);
# the CUDA W4A16 GEMV/GEMM against the CPU twin (test_gpu_awq, label gpu, exit 77 without a GPU).
gm_add_test(test_awq ${CMAKE_CURRENT_SOURCE_DIR}/test_awq.c LIBS gm_worker gm_common m
  ARGS $<TARGET_FILE:gemma-quantize> ${CMAKE_BINARY_DIR}/models/tiny ${CMAKE_SOURCE_DIR}/data/corpus.txt
       ${CMAKE_BINARY_DIR}/awq-test $<TARGET_FILE:gemma-generate>
  TIMEOUT 600)
set_tests_properties(test_awq PROPERTIES FIXTURES_REQUIRED tiny_model)
add_dependencies(test_awq gemma-quantize gemma-generate)
# The same on Gemma 3 (sandwich and QK norms, sliding layers): the calibration forward is the CPU engine's.
add_test(NAME test_awq_gemma3 COMMAND test_awq $<TARGET_FILE:gemma-quantize> ${CMAKE_BINARY_DIR}/models/tiny_gemma3
  ${CMAKE_SOURCE_DIR}/data/corpus.txt ${CMAKE_BINARY_DIR}/awq-test-gemma3 $<TARGET_FILE:gemma-generate>)
set_tests_properties(test_awq_gemma3 PROPERTIES FIXTURES_REQUIRED tiny_gemma3 TIMEOUT 600)

if(GM_HAVE_CUDA)
  gm_add_test(test_gpu_awq ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_awq.cu LIBS gm_cuda gm_kernels_cpu gm_common m
    LABELS gpu TIMEOUT 300)
endif()
