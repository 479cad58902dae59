# GPU benchmarks: kernel micro-benchmarks and the decode benchmark (bench/run_gpu.sh runs them).
if(GM_HAVE_CUDA)
  add_executable(bench_kernels ${CMAKE_CURRENT_LIST_DIR}/bench_kernels.c)
  target_link_libraries(bench_kernels PRIVATE gm_cuda gm_common CUDA::cudart m)
  add_executable(bench_decode ${CMAKE_CURRENT_LIST_DIR}/bench_decode.c)
  target_link_libraries(bench_decode PRIVATE gm_worker gm_common CUDA::cudart m)
endif()
