/* test_gpu_nodev.c - without a GPU, asking for the CUDA backend is a clear error, not a crash.
 * Runs where the CUDA backend is built; skipped (77) where a GPU is present.
 * usage: test_gpu_nodev [GEMMA3_DIR]: a Gemma 3 checkpoint reaches the CUDA engine too (its own no-device
 * error), not a refusal by family. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <cuda_runtime_api.h>

#include "worker/engine.h"

static void test_no_device(void **state)
{
    (void)state;
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_CUDA;
    o.model_dir = "/nonexistent-model-dir";
    gm_engine *e = NULL;
    gm_status st = gm_engine_create(&o, &e);
    assert_int_equal(st, GM_ERR_NO_DEVICE);
    assert_null(e);
    assert_non_null(strstr(gm_last_error(), "cuda"));
    printf("  error: %s: %s\n", gm_status_str(st), gm_last_error());
}

static const char *g_gemma3_dir;

/* The CUDA engine runs every family: a Gemma 3 checkpoint gets the engine's no-device error. */
static void test_gemma3_reaches_engine(void **state)
{
    (void)state;
    if (!g_gemma3_dir)
        skip();
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_CUDA;
    o.model_dir = g_gemma3_dir;
    gm_engine *e = NULL;
    gm_status st = gm_engine_create(&o, &e);
    printf("  %s: %s: %s\n", g_gemma3_dir, gm_status_str(st), gm_last_error());
    assert_int_equal(st, GM_ERR_NO_DEVICE);
    assert_null(e);
}

int main(int argc, char **argv)
{
    g_gemma3_dir = argc > 1 ? argv[1] : NULL;
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) {
        printf("a CUDA device is present: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_device), cmocka_unit_test(test_gemma3_reaches_engine)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
