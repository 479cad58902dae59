/* launch.cu - the kernels' process-wide switches (launch.cuh): the only place kernels/cuda reads
 * the environment, once per variable. */
#include "launch.cuh"

#include <stdlib.h>

static int g_pdl = -1;  /* -1: not read yet */
static int g_tune = -1; /* -1: not read yet */

/* "0" turns a switch off; unset or anything else leaves it on. */
static int env_on(const char *name)
{
    const char *e = getenv(name);
    return !(e && e[0] == '0');
}

extern "C" void k_set_pdl(int on) { g_pdl = on ? 1 : 0; }

extern "C" int k_get_pdl(void)
{
    if (g_pdl < 0) /* a benign race: every thread stores the same value */
        g_pdl = env_on("GM_CUDA_PDL");
    return g_pdl;
}

extern "C" int k_gemm_tune_default(void)
{
    if (g_tune < 0)
        g_tune = env_on("GM_GEMM_TUNE");
    return g_tune;
}
