# GGUF: the reader (common/gguf.c), the dequantizers (common/gguf_quants.c), the checkpoint adapter
# (common/gguf_model.c) and the tokenizer built from GGUF metadata.
gm_add_test(test_gguf ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf.c LIBS gm_common LABELS loader)

# Dequantizers and reader against the gguf Python package (skips, 77, without gguf/numpy).
add_executable(gguf_pyref ${CMAKE_CURRENT_SOURCE_DIR}/gguf_pyref.c)
target_link_libraries(gguf_pyref PRIVATE gm_common)
if(Python3_Interpreter_FOUND)
  add_test(NAME test_gguf_py COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/test_gguf_py.py
    $<TARGET_FILE:gguf_pyref>)
  set_tests_properties(test_gguf_py PROPERTIES SKIP_RETURN_CODE 77 LABELS loader TIMEOUT 120)
endif()

