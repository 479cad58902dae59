/* spec.c - the backend/quant/KV names and the worker spec's defaults and checks (see spec.h). */
#include "ctl/spec.h"

#include <math.h>
#include <string.h>

static const char *const g_backends[GM_BACKEND_COUNT] = {"cpu", "cuda", "null"};
static const char *const g_quants[GM_QUANT_COUNT] = {"none", "fp8", "awq"};
static const char *const g_kv_dtypes[GM_KV_DTYPE_COUNT] = {"auto", "bf16", "fp8"};

static int name_index(const char *const *names, int n, const char *s)
{
    for (int i = 0; s && i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

int gm_backend_parse(const char *s) { return name_index(g_backends, GM_BACKEND_COUNT, s); }
int gm_quant_parse(const char *s) { return name_index(g_quants, GM_QUANT_COUNT, s); }
int gm_kv_dtype_parse(const char *s) { return name_index(g_kv_dtypes, GM_KV_DTYPE_COUNT, s); }

const char *gm_backend_name(gm_backend b)
{
    return (int)b >= 0 && b < GM_BACKEND_COUNT ? g_backends[b] : "?";
}

const char *gm_quant_name(gm_quant q)
{
    return (int)q >= 0 && q < GM_QUANT_COUNT ? g_quants[q] : "?";
}

const char *gm_kv_dtype_name(gm_kv_dtype d)
{
    return (int)d >= 0 && d < GM_KV_DTYPE_COUNT ? g_kv_dtypes[d] : "?";
}

void ctl_spec_init(gm_worker_spec *s)
{
    memset(s, 0, sizeof *s);
    s->backend = GM_BACKEND_CPU;
    s->tp_size = 1;
    s->kv_block_size = 16;
    s->use_graphs = 1;
}

gm_status ctl_spec_set_model(gm_worker_spec *s, const char *dir)
{
    size_t n = dir ? strlen(dir) : 0;
    if (n >= sizeof s->model_dir)
        return gm_fail(GM_ERR_INVALID_ARG, "model directory of %zu characters; at most %zu", n,
                       sizeof s->model_dir - 1);
    memcpy(s->model_dir, dir ? dir : "", n + 1);
    return GM_OK;
}

/* lo <= v <= hi, else an error naming the field */
static gm_status in_range(const char *name, int64_t v, int64_t lo, int64_t hi)
{
    if (v < lo || v > hi)
        return gm_fail(GM_ERR_INVALID_ARG, "worker spec: %s = %lld is outside [%lld, %lld]", name, (long long)v,
                       (long long)lo, (long long)hi);
    return GM_OK;
}

gm_status ctl_spec_check(const gm_worker_spec *s)
{
    gm_status st = GM_OK;
#define CHK(name, lo, hi)                                                                                            \
    if (st == GM_OK)                                                                                                 \
    st = in_range(#name, (int64_t)s->name, lo, hi)
    CHK(backend, 0, GM_BACKEND_COUNT - 1);
    CHK(tp_size, 1, 1024);
    CHK(device, 0, 1023);
    CHK(kv_block_size, 1, 1 << 16);
    CHK(kv_num_blocks, 0, INT32_MAX);
    CHK(kv_mem_bytes, 0, INT64_MAX);
    CHK(max_seqs, 0, 1 << 20);
    CHK(max_tokens, 0, 1 << 24);
    CHK(max_context, 0, 1 << 24);
    CHK(quant, 0, GM_QUANT_COUNT - 1);
    CHK(kv_dtype, 0, GM_KV_DTYPE_COUNT - 1);
    CHK(use_graphs, 0, 1);
    CHK(lm_head_fp8, 0, 1);
    CHK(verbose, 0, 1);
#undef CHK
    if (st != GM_OK)
        return st;
    if (!(s->kv_mem_fraction >= 0.0 && s->kv_mem_fraction <= 1.0))
        return gm_fail(GM_ERR_INVALID_ARG, "worker spec: kv_mem_fraction = %g is outside [0, 1]", s->kv_mem_fraction);
    if (!memchr(s->model_dir, 0, sizeof s->model_dir))
        return gm_fail(GM_ERR_INVALID_ARG, "worker spec: model_dir is not terminated");
    return GM_OK;
}

const char *ctl_spec_diff(const gm_worker_spec *a, const gm_worker_spec *b)
{
#define DIFF_(type, name, num)                                                                                       \
    if (a->name != b->name)                                                                                          \
        return #name;
    GM_SPEC_FIELDS(DIFF_)
#undef DIFF_
    if (strncmp(a->model_dir, b->model_dir, sizeof a->model_dir))
        return "model_dir";
    return NULL;
}
