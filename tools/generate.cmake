# gemma-generate: offline generation, logits dumps and perplexity (CPU or CUDA engine).
add_executable(gemma-generate ${CMAKE_CURRENT_LIST_DIR}/gemma-generate.c)
target_link_libraries(gemma-generate PRIVATE gm_worker gm_common m)
