# CPU reference area: ops, the CPU engine, gemma-generate against an independent numpy Gemma.
gm_add_test(test_cpu_ops ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_ops.c LIBS gm_kernels_cpu gm_common m TIMEOUT 120)
gm_add_test(test_cpu_sample ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_sample.c LIBS gm_kernels_cpu gm_common m TIMEOUT 60)
gm_add_test(test_cpu_gemma23 ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_gemma23.c LIBS gm_kernels_cpu gm_common m TIMEOUT 60)
gm_add_test(test_weights_gemma23 ${CMAKE_CURRENT_SOURCE_DIR}/test_weights_gemma23.c LIBS gm_worker gm_common m
  TIMEOUT 60)
gm_add_test(test_engine_cpu ${CMAKE_CURRENT_SOURCE_DIR}/test_engine_cpu.c LIBS gm_worker gm_parallel gm_common m
  TIMEOUT 300)
set_tests_properties(test_engine_cpu PROPERTIES FIXTURES_REQUIRED tiny_model)

# The sampling extras through the CPU engine (logprobs, penalties, min_tokens), on Gemma 1 and Gemma 2 (soft-capped
# logits).
gm_add_test(test_engine_sample ${CMAKE_CURRENT_SOURCE_DIR}/test_engine_sample.c LIBS gm_worker gm_parallel gm_common m
  TIMEOUT 300)
set_tests_properties(test_engine_sample PROPERTIES FIXTURES_REQUIRED tiny_model)

# Tiny Gemma 2 and Gemma 3 checkpoints (fixtures tiny_gemma2, tiny_gemma3; a 16-token sliding window).
if(TARGET gemma-mkmodel)
  foreach(fam gemma2 gemma3)
    add_test(NAME make_tiny_${fam}
      COMMAND $<TARGET_FILE:gemma-mkmodel> --preset tiny-${fam} --seed 5 --out ${CMAKE_BINARY_DIR}/models/tiny_${fam})
    set_tests_properties(make_tiny_${fam} PROPERTIES FIXTURES_SETUP tiny_${fam})
  endforeach()
endif()

# The quantizers on Gemma 3: FP8 with dynamic scales and FP8 calibrated (static scales) through the CPU
# engine's forward; the CPU engine runs the results. (int4 AWQ/RTN on Gemma 3: test_awq_gemma3, awq.cmake.)
if(TARGET gemma-quantize AND TARGET gemma-generate AND TARGET gemma-mkmodel)
  set(GM_G3 ${CMAKE_BINARY_DIR}/models/tiny_gemma3)
  foreach(v "fp8;" "fp8_calib;--calib;${CMAKE_SOURCE_DIR}/data/corpus.txt")
    list(GET v 0 vname)
    list(SUBLIST v 1 -1 vflags)
    string(REPLACE ";" " " vflags "${vflags}")
    add_test(NAME quantize_gemma3_${vname}
      COMMAND bash -c "rm -rf '${CMAKE_BINARY_DIR}/q/g3_${vname}' &&
        '$<TARGET_FILE:gemma-quantize>' --fp8 --model '${GM_G3}' ${vflags} --out '${CMAKE_BINARY_DIR}/q/g3_${vname}' &&
        '$<TARGET_FILE:gemma-generate>' --model '${CMAKE_BINARY_DIR}/q/g3_${vname}' --prompt 'Once upon a time' --max-tokens 4")
    set_tests_properties(quantize_gemma3_${vname} PROPERTIES FIXTURES_REQUIRED tiny_gemma3 TIMEOUT 120)
  endforeach()
endif()

# The CPU engine's calibration extras (engine_cpu.h: one layer, one block, taps) on every family.
gm_add_test(test_engine_cpu_tap ${CMAKE_CURRENT_SOURCE_DIR}/test_engine_cpu_tap.c LIBS gm_worker gm_common m
  ARGS ${CMAKE_BINARY_DIR}/models/tiny TIMEOUT 120)
set_tests_properties(test_engine_cpu_tap PROPERTIES FIXTURES_REQUIRED tiny_model)
foreach(fam gemma2 gemma3)
  add_test(NAME test_engine_cpu_tap_${fam} COMMAND test_engine_cpu_tap ${CMAKE_BINARY_DIR}/models/tiny_${fam})
  set_tests_properties(test_engine_cpu_tap_${fam} PROPERTIES FIXTURES_REQUIRED tiny_${fam} TIMEOUT 120)
endforeach()

# The engine tests (batch invariance, chunked and scattered KV, tensor parallel tp=2 vs tp=1) on Gemma 2 and 3.
add_test(NAME test_engine_sample_gemma2 COMMAND test_engine_sample ${CMAKE_BINARY_DIR}/models/tiny_gemma2)
set_tests_properties(test_engine_sample_gemma2 PROPERTIES FIXTURES_REQUIRED tiny_gemma2 TIMEOUT 300
  ENVIRONMENT "GM_SRC=${CMAKE_SOURCE_DIR};GM_BIN=${CMAKE_BINARY_DIR}")
foreach(fam gemma2 gemma3)
  add_test(NAME test_engine_cpu_${fam} COMMAND test_engine_cpu ${CMAKE_BINARY_DIR}/models/tiny_${fam})
  set_tests_properties(test_engine_cpu_${fam} PROPERTIES FIXTURES_REQUIRED tiny_${fam} TIMEOUT 300
    ENVIRONMENT "GM_SRC=${CMAKE_SOURCE_DIR};GM_BIN=${CMAKE_BINARY_DIR}")
endforeach()

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
  # Gemma 2 and 3: tiny checkpoints with a 16-token window (gemma-mkmodel tiny-gemma2/3), the reference's prompts
  # reaching 121 tokens; whole-prompt steps, chunks of 5 over 3-token KV blocks, and one token per step (decode).
  # ref_<fam>_transformers checks the numpy reference itself against transformers (skips without torch).
  foreach(fam gemma2 gemma3)
    foreach(v "whole;--extra=--kv-block-size=16" "chunk5;--extra=--prefill-chunk=5;--extra=--kv-block-size=3" "decode;--extra=--prefill-chunk=1")
      list(GET v 0 vname)
      list(SUBLIST v 1 -1 vflags)
      add_test(NAME ref_${fam}_${vname}
        COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny_${fam}
          --generate $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/${fam}_${vname} ${vflags})
      set_tests_properties(ref_${fam}_${vname} PROPERTIES FIXTURES_REQUIRED tiny_${fam} SKIP_RETURN_CODE 77
        TIMEOUT 300)
    endforeach()
    add_test(NAME ref_${fam}_transformers COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny_${fam}
      --transformers)
    set_tests_properties(ref_${fam}_transformers PROPERTIES FIXTURES_REQUIRED tiny_${fam} SKIP_RETURN_CODE 77
      TIMEOUT 300)
  endforeach()
  # the text part of a Gemma3ForConditionalGeneration (config under text_config), under both tensor prefixes
  foreach(pre "language_model.model." "model.language_model.")
    string(REPLACE "." "_" pname ${pre})
    add_test(NAME make_tiny_gemma3_mm_${pname}
      COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny_gemma3
        --as-multimodal ${GM_MODELS}/tiny_gemma3_mm_${pname} ${pre})
    set_tests_properties(make_tiny_gemma3_mm_${pname} PROPERTIES FIXTURES_REQUIRED tiny_gemma3
      FIXTURES_SETUP tiny_gemma3_mm_${pname})
    add_test(NAME ref_gemma3_mm_${pname}
      COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny_gemma3_mm_${pname}
        --generate $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/gemma3_mm_${pname})
    set_tests_properties(ref_gemma3_mm_${pname} PROPERTIES FIXTURES_REQUIRED tiny_gemma3_mm_${pname}
      SKIP_RETURN_CODE 77 TIMEOUT 300)
  endforeach()
  add_test(NAME generate_golden
    COMMAND ${Python3_EXECUTABLE} ${GM_REF} --model ${GM_MODELS}/tiny
      --golden $<TARGET_FILE:gemma-generate> --work ${CMAKE_BINARY_DIR}/ref/golden)
  add_test(NAME generate_args
    COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/generate_args.sh $<TARGET_FILE:gemma-generate> ${GM_MODELS}/tiny)
  set_tests_properties(generate_args PROPERTIES FIXTURES_REQUIRED tiny_model TIMEOUT 60)
  set_tests_properties(ref_gemma_tiny ref_gemma_tiny_block7 generate_golden PROPERTIES
    FIXTURES_REQUIRED tiny_model SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()

# Speculative decoding's verify entries in the CPU and null engines: rows equal plain decoding, and the kept
# tokens follow the model's distribution (chi-square) (docs/SPECULATIVE.md).
gm_add_test(test_engine_spec ${CMAKE_CURRENT_SOURCE_DIR}/test_engine_spec.c LIBS gm_worker gm_parallel gm_common m
  TIMEOUT 300)
set_tests_properties(test_engine_spec PROPERTIES FIXTURES_REQUIRED tiny_model)
