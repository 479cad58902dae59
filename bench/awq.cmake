# awq_bench: W4A16 GEMV (GB/s vs 4.2 TB/s) and GEMM (TFLOP/s vs cuBLAS bf16) at Gemma shapes (CUDA builds).
if(GM_HAVE_CUDA)
  add_executable(awq_bench ${CMAKE_CURRENT_LIST_DIR}/awq_bench.cu)
  target_link_libraries(awq_bench PRIVATE gm_cuda gm_common CUDA::cublas)
endif()
