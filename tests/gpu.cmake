# GPU area: CUDA kernels against their CPU twins, the CUDA engine against the CPU engine,
# gemma-generate --backend cuda against --backend cpu. Label `gpu`; exit 77 without a GPU.
if(GM_HAVE_CUDA)
  gm_add_test(test_gpu_ops ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_ops.c
    LIBS gm_cuda gm_kernels_cpu gm_common CUDA::cudart m LABELS gpu TIMEOUT 600)
  gm_add_test(test_gpu_model ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_model.c
    LIBS gm_worker gm_common CUDA::cudart m LABELS gpu TIMEOUT 600)
  set_tests_properties(test_gpu_model PROPERTIES FIXTURES_REQUIRED tiny_model)
  # the same with the FP8 LM head on both engines (--lm-head fp8)
  add_test(NAME test_gpu_model_lm8 COMMAND test_gpu_model ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(test_gpu_model_lm8 PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600
    ENVIRONMENT GM_TEST_LM=fp8 FIXTURES_REQUIRED tiny_model)
  # the sampler's extras (logprobs, penalties, min_tokens) against their CPU twins, and through the CUDA engine
  gm_add_test(test_gpu_sample ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_sample.c
    LIBS gm_worker gm_cuda gm_kernels_cpu gm_common CUDA::cudart m LABELS gpu TIMEOUT 600)
  set_tests_properties(test_gpu_sample PROPERTIES FIXTURES_REQUIRED tiny_model)
  # copy-on-write of shared KV blocks: the copy kernel against its twin, the engine's copies
  gm_add_test(test_gpu_kv_copy ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_kv_copy.c
    LIBS gm_worker gm_cuda gm_kernels_cpu gm_common CUDA::cudart LABELS gpu TIMEOUT 300
    ARGS ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(test_gpu_kv_copy PROPERTIES FIXTURES_REQUIRED tiny_model)
  # speculative decoding's verify entries: the same samples as the CPU sampler on the same logits, as plain
  # decoding, and batched as alone (docs/SPECULATIVE.md)
  gm_add_test(test_gpu_spec ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_spec.c
    LIBS gm_worker gm_kernels_cpu gm_common CUDA::cudart m LABELS gpu TIMEOUT 600 ARGS ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(test_gpu_spec PROPERTIES FIXTURES_REQUIRED tiny_model)
  # the CUDA engine's own sizes with no sizing options (ctl/sizing.h); takes the whole GPU
  gm_add_test(test_gpu_sizing ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_sizing.c
    LIBS gm_worker gm_common CUDA::cudart LABELS gpu TIMEOUT 600 ARGS ${CMAKE_BINARY_DIR}/models/tiny)
  set_tests_properties(test_gpu_sizing PROPERTIES FIXTURES_REQUIRED tiny_model RUN_SERIAL TRUE)
  # the clear error without a GPU runs on machines without one (skipped where one is present)
  gm_add_test(test_gpu_nodev ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_nodev.c
    LIBS gm_worker gm_common CUDA::cudart LABELS gpu TIMEOUT 60 ARGS ${CMAKE_BINARY_DIR}/models/tiny_gemma3)
  set_tests_properties(test_gpu_nodev PROPERTIES FIXTURES_REQUIRED tiny_gemma3)
  if(TARGET gemma-generate)
    add_test(NAME test_gpu_generate
      COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_generate.sh $<TARGET_FILE:gemma-generate>
        ${CMAKE_BINARY_DIR}/models/tiny ${CMAKE_BINARY_DIR}/gpu_generate)
    set_tests_properties(test_gpu_generate PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 300
      FIXTURES_REQUIRED tiny_model)
  endif()
  # Gemma 2/3: the kernels' options against their CPU twins; the engine on the tiny Gemma 2 and 3 checkpoints
  # (16-token window, soft-caps, QK-norm, RoPE scaling) against the CPU engine, as loaded and with FP8 weights,
  # FP8 KV, every decode row through XQA, the FP8 LM head
  gm_add_test(test_gpu_gemma23 ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_gemma23.c
    LIBS gm_cuda gm_kernels_cpu gm_common m LABELS gpu TIMEOUT 600)
  foreach(fam gemma2 gemma3)
    foreach(v "bf16;GM_TEST_QUANT=none" "fp8;GM_TEST_QUANT=fp8" "kv8;GM_TEST_KV=fp8" "xqa;GM_TEST_ATTN=xqa"
              "lm8;GM_TEST_LM=fp8")
      list(GET v 0 vname)
      list(GET v 1 venv)
      add_test(NAME test_gpu_model_${fam}_${vname} COMMAND test_gpu_model ${CMAKE_BINARY_DIR}/models/tiny_${fam})
      set_tests_properties(test_gpu_model_${fam}_${vname} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600
        FIXTURES_REQUIRED tiny_${fam} ENVIRONMENT "${venv}")
    endforeach()
  endforeach()
endif()

# FP8 checkpoints (gemma-quantize --fp8, dynamic and calibrated) through the CUDA engine vs the CPU twin
if(GM_HAVE_CUDA AND TARGET gemma-quantize)
  add_test(NAME test_gpu_fp8_ckpt
    COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_fp8_ckpt.sh $<TARGET_FILE:gemma-quantize>
      $<TARGET_FILE:test_gpu_model> ${CMAKE_BINARY_DIR}/models/tiny ${CMAKE_SOURCE_DIR}/data/corpus.txt
      ${CMAKE_BINARY_DIR}/gpu_fp8_ckpt)
  set_tests_properties(test_gpu_fp8_ckpt PROPERTIES LABELS gpu SKIP_RETURN_CODE 77 TIMEOUT 600
    FIXTURES_REQUIRED tiny_model)
endif()
