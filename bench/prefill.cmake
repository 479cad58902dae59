# prefill_bench: the Hopper prefill attention kernel beside the mma.sync one, TFLOP/s at Gemma's shapes
# (bench/sdpa_peer.py times torch's SDPA backends on the same shapes; bench/run_prefill.sh runs both).
if(GM_HAVE_CUDA)
  add_executable(prefill_bench ${CMAKE_CURRENT_LIST_DIR}/prefill_bench.cu)
  target_link_libraries(prefill_bench PRIVATE gm_cuda gm_common CUDA::cudart m)
endif()
