# gemma-quantize: offline int4 AWQ (and round-to-nearest) quantizer writing AutoAWQ GEMM checkpoints.
add_executable(gemma-quantize ${CMAKE_CURRENT_LIST_DIR}/gemma-quantize.c)
target_link_libraries(gemma-quantize PRIVATE gm_quantize_fp8 gm_worker gm_common PkgConfig::CJSON m)
