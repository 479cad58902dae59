# Prefill attention: the CPU twin with Gemma 2/3's options (always) and the Hopper kernel against it
# (GPU: label gpu, exit 77 without one; GM_PREFILL_SMALL=1 for the small cases under compute-sanitizer).
gm_add_test(test_cpu_attn ${CMAKE_CURRENT_SOURCE_DIR}/test_cpu_attn.c LIBS gm_kernels_cpu gm_common m TIMEOUT 120)
if(GM_HAVE_CUDA)
  gm_add_test(test_gpu_prefill_hopper ${CMAKE_CURRENT_SOURCE_DIR}/test_gpu_prefill_hopper.c
    LIBS gm_cuda gm_kernels_cpu gm_common CUDA::cudart m LABELS gpu TIMEOUT 1200)
endif()

# The CUDA engine against the CPU engine on long prompts (1,600 tokens, chunks, mixed steps) under each
# prefill-attention mode (test_gpu_model's test_long_prefill): two small models at head_dim 256, the width the
# Hopper kernel serves (MQA 8/1 as gemma-2b, MHA 4/4 as gemma-7b), max_position 8192; bf16 and FP8 KV.
add_test(NAME make_hd256_models
  COMMAND bash -c "$0 --preset 2b --layers 2 --hidden 256 --intermediate 512 --vocab 4096 --seed 3 --out $1/mqa && \
$0 --preset 7b --layers 2 --hidden 256 --heads 4 --kv-heads 4 --intermediate 512 --vocab 4096 --seed 4 --out $1/mha"
    ${CMAKE_BINARY_DIR}/tools/gemma-mkmodel ${CMAKE_BINARY_DIR}/models/hd256)
set_tests_properties(make_hd256_models PROPERTIES FIXTURES_SETUP hd256_models)
if(GM_HAVE_CUDA)
  add_test(NAME test_gpu_model_long
    COMMAND test_gpu_model ${CMAKE_BINARY_DIR}/models/hd256/mqa ${CMAKE_BINARY_DIR}/models/hd256/mha)
  add_test(NAME test_gpu_model_long_kv8
    COMMAND test_gpu_model ${CMAKE_BINARY_DIR}/models/hd256/mqa ${CMAKE_BINARY_DIR}/models/hd256/mha)
  set_tests_properties(test_gpu_model_long test_gpu_model_long_kv8 PROPERTIES LABELS gpu SKIP_RETURN_CODE 77
    TIMEOUT 900 FIXTURES_REQUIRED hd256_models)
  set_tests_properties(test_gpu_model_long_kv8 PROPERTIES ENVIRONMENT GM_TEST_KV=fp8)
endif()

# The Hopper prefill kernels' data paths (the tensor-copy boxes, Q8 and the V transposer of the e4m3 kernel, the
# wgmma descriptors, the P fragments), emulated element by element in numpy: runs without a GPU.
if(Python3_Interpreter_FOUND)
  add_test(NAME test_prefill_hopper_layout
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/prefill_hopper_layout.py)
  set_tests_properties(test_prefill_hopper_layout PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120)
endif()
