/* test_gpu_nodev.c - without a GPU, asking for the CUDA backend is a clear error, not a crash.
 * Runs where the CUDA backend is built; skipped (77) where a GPU is present. */
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

int main(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) {
        printf("a CUDA device is present: skipped\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_device)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
