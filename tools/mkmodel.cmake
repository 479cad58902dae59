# gemma-mkmodel: random-weight Gemma checkpoints (tiny for tests, 2b/7b shapes for benchmarks).
add_executable(gemma-mkmodel ${CMAKE_CURRENT_LIST_DIR}/gemma-mkmodel.c ${CMAKE_CURRENT_LIST_DIR}/spm_train.cc)
target_link_libraries(gemma-mkmodel PRIVATE gm_common ${SPM_TRAIN_LIB} PkgConfig::SPM Threads::Threads m)
target_compile_definitions(gemma-mkmodel PRIVATE GM_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
