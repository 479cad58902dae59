# FP8 quantizer library: gm_quantize_fp8() (tools/quantize_fp8.h), called by gemma-quantize --fp8.
# gemma-quantize links it with: target_link_libraries(gemma-quantize PRIVATE gm_quantize_fp8)
add_library(gm_quantize_fp8 STATIC ${CMAKE_CURRENT_LIST_DIR}/quantize_fp8.c)
target_link_libraries(gm_quantize_fp8 PUBLIC gm_worker gm_kernels_cpu gm_common PkgConfig::CJSON Threads::Threads m)
