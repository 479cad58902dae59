/* status.c - status names and the per-thread error detail. */
#include "status.h"

#include <stdio.h>

static _Thread_local char g_err[1024];

static const char *const g_names[GM_STATUS_COUNT] = {
    [GM_OK] = "ok",
    [GM_ERR_INVALID_ARG] = "invalid argument",
    [GM_ERR_IO] = "i/o error",
    [GM_ERR_FORMAT] = "malformed input",
    [GM_ERR_NOMEM] = "out of memory",
    [GM_ERR_UNSUPPORTED] = "unsupported",
    [GM_ERR_NO_DEVICE] = "no GPU device",
    [GM_ERR_CUDA] = "CUDA error",
    [GM_ERR_CUBLAS] = "cuBLAS error",
    [GM_ERR_NCCL] = "NCCL error",
    [GM_ERR_ZMQ] = "ZeroMQ error",
    [GM_ERR_NOT_FOUND] = "not found",
    [GM_ERR_CAPACITY] = "out of capacity",
    [GM_ERR_CANCELLED] = "cancelled",
    [GM_ERR_INTERNAL] = "internal error",
};

const char *gm_status_str(gm_status s)
{
    if ((unsigned)s >= GM_STATUS_COUNT || !g_names[s])
        return "unknown status";
    return g_names[s];
}

gm_status gm_fail(gm_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return s;
}

const char *gm_last_error(void)
{
    return g_err;
}

void gm_clear_error(void)
{
    g_err[0] = '\0';
}
