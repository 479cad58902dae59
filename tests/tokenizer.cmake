# Tokenizer (common/tokenizer.cc) on the tiny model, and gemma-mkmodel itself.
gm_add_test(test_tokenizer test_tokenizer.c LIBS gm_common ARGS ${CMAKE_BINARY_DIR}/models/tiny/tokenizer.model
  ${CMAKE_BINARY_DIR}/models/tiny_gemma3/tokenizer.model)
set_tests_properties(test_tokenizer PROPERTIES FIXTURES_REQUIRED "tiny_model;tiny_gemma3")

gm_add_test(test_mkmodel test_mkmodel.c LIBS gm_common m
  ARGS $<TARGET_FILE:gemma-mkmodel> ${CMAKE_BINARY_DIR}/mkmodel-test TIMEOUT 120)
add_dependencies(test_mkmodel gemma-mkmodel)
