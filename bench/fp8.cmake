# FP8 / XQA kernel benchmarks (bench/run_fp8.sh runs them on the GPU machine).
if(GM_HAVE_CUDA)
  add_executable(xqa_bench ${CMAKE_CURRENT_LIST_DIR}/xqa_bench.cu)
  target_link_libraries(xqa_bench PRIVATE gm_cuda gm_common CUDA::cudart m)
  add_executable(fp8_gemm_bench ${CMAKE_CURRENT_LIST_DIR}/fp8_gemm_bench.cu)
  target_link_libraries(fp8_gemm_bench PRIVATE gm_cuda gm_common CUDA::cudart CUDA::cublasLt m)
endif()
