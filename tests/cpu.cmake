# CPU reference area: ops, the CPU engine, gemma-generate against an independent numpy Gemma.
gm_add_test(test_cpu_ops ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_ops.c LIBS gm_kernels_cpu gm_common m TIMEOUT 120)
gm_add_test(test_engine_cpu ${CMAKE_CURRENT_SOURCE_DIR}/test_engine_cpu.c LIBS gm_worker gm_parallel gm_common m
  TIMEOUT 300)
set_tests_properties(test_engine_cpu PROPERTIES FIXTURES_REQUIRED tiny_model)

# gemma-generate end to end, and against the independent numpy Gemma (tests/ref_gemma.py).
if(Python3_Interpreter_FOUND AND TARGET gemma-generate AND TARGET gemma-mkmodel)
  set(GM_REF ${CMAKE_CURRENT_SOURCE_DIR}/ref_gemma.py)
  set(GM_MODELS ${CMAKE_BINARY_DIR}/models)
  # model variants: MQA, MHA in f16, f32 in two shards
  foreach(v "mqa;--kv-heads;1;--seed;2" "mha_f16;--kv-heads;4;--dtype;f16;--seed;3"
            "f32_shards;--dtype;f32;--shards;2;--seed;4")
    list(GET v 0 vname)
    list(SUBLIST v 1 -1 vflags)
    add_test(NAME make_tiny_${vname}
      COMMAND $<TARGET_FILE:gemma-mkmodel> --preset tiny ${vflags} --out ${GM_MODELS}/tiny_${vname})
    set_tests_properties(make_tiny_${vname} PROPERTIES FIXTURES_SETUP tiny_${vname})
    add_test(NAME ref_gemma_${vname}
      COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny_${vname}
        --generate $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/${vname})
    set_tests_properties(ref_gemma_${vname} PROPERTIES FIXTURES_REQUIRED tiny_${vname} SKIP_RETURN_CODE 77
      TIMEOUT 300)
  endforeach()
  add_test(NAME ref_gemma_tiny
    COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny
      --generate $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/tiny)
  add_test(NAME ref_gemma_tiny_block7
    COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny
      --generate $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/tiny_block7
      --extra=--kv-block-size=7)
  add_test(NAME generate_golden
    COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny
      --golden $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/golden)
  add_test(NAME generate_args
    COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/generate_args.sh $<TARGET_FILE:gemma-generate> ${GM_MODELS}/tiny)
  set_tests_properties(generate_args PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 60)
  set_tests_properties(ref_gemma_tiny ref_gemma_tiny_block7 generate_golden PROPERTIES
    FIXTURES_REQUIRED tiny_model SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
