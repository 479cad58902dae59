/* quantize_fp8.c - FP8 e4m3 checkpoint writer with optional static-scale calibration
 * (see quantize_fp8.h for the output layout).
 *
 * Calibration: the float model run by the CPU engine itself (worker/engine_cpu.h, every Gemma
 * family) over the text, split into sequences of calib_seq tokens each starting with BOS; its taps
 * record per layer max |x| of the inputs of qkv, o, gate|up and down (each value rounded to bf16
 * first, as the engine's activations are) and max |k| (after QK-norm and RoPE), |v|. */
#include "quantize_fp8.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/ckpt_meta.h"
#include "../common/dtype.h"
#include "../common/fsutil.h"
#include "../common/gguf_model.h"
#include "../common/model_config.h"
#include "../common/safetensors.h"
#include "../common/tokenizer.h"
#include "../kernels/cpu/quant_fp8.h"
#include "../worker/engine_cpu.h"
#include "../worker/weights.h"

enum { LIN_Q, LIN_K, LIN_V, LIN_O, LIN_GATE, LIN_UP, LIN_DOWN, LIN_N };

/* Per layer: the views of its linears, their shared weight scales and (calibrated) input scales. */
typedef struct fp8_layer {
    const gm_wview *lin[LIN_N];
    float wscale[LIN_N];
    float iscale[LIN_N];
    float kv_scale;
} fp8_layer;

/* Amax of activations per layer (calibration). */
typedef struct fp8_calib {
    float *in_qkv, *in_o, *in_gu, *in_down, *kv;
} fp8_calib;

void gm_fp8_quant_opts_init(gm_fp8_quant_opts *o)
{
    memset(o, 0, sizeof *o);
    o->calib_tokens = 512;
    o->calib_seq = 256;
}

static float amax_bf16_rounded(const float *x, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(gm_round_bf16(x[i]));
        if (a > m)
            m = a;
    }
    return m;
}

static float maxf(float a, float b) { return a > b ? a : b; }

/* The CPU engine's tap (worker/engine_cpu.h): max |x| of each Linear's input and of K, V. */
static gm_status calib_tap(void *ctx, int32_t l, gm_cpu_tap tap, int64_t row0, const float *x, int64_t rows,
                           int64_t cols)
{
    (void)row0;
    fp8_calib *c = ctx;
    float a = amax_bf16_rounded(x, rows * cols);
    float *slot = tap == GM_TAP_QKV_IN ? &c->in_qkv[l]
                  : tap == GM_TAP_O_IN ? &c->in_o[l]
                  : tap == GM_TAP_GU_IN ? &c->in_gu[l]
                  : tap == GM_TAP_DOWN_IN ? &c->in_down[l]
                                          : &c->kv[l]; /* K, V */
    *slot = maxf(*slot, a);
    return GM_OK;
}

/* The float forward over the calibration text (the CPU engine e, one sequence of at most calib_seq
 * tokens per step), recording amax per layer into c. */
static gm_status calibrate(gm_engine *e, const gm_checkpoint *ck, const gm_fp8_quant_opts *o, fp8_calib *c)
{
    gm_tokenizer *tok = NULL;
    char *text = NULL;
    size_t len = 0;
    int32_t *ids = NULL, n_ids = 0, *seq = NULL;
    gm_status st = gm_read_file(o->calib_file, (size_t)1 << 30, &text, &len);
    if (st || (st = gm_checkpoint_tokenizer(ck, &tok)) || (st = gm_tok_encode(tok, text, len, false, &ids, &n_ids)))
        goto out;
    if (n_ids < 1) {
        st = gm_fail(GM_ERR_INVALID_ARG, "calibration text %s has no tokens", o->calib_file);
        goto out;
    }
    const int64_t S = o->calib_seq > 1 ? o->calib_seq : 256;
    int32_t bs = e->opts.kv_block_size, nb = (int32_t)((S + bs - 1) / bs), *bt = malloc((size_t)nb * sizeof(int32_t));
    seq = malloc((size_t)S * sizeof(int32_t));
    if (!seq || !bt) {
        free(bt);
        st = gm_fail(GM_ERR_NOMEM, "fp8 calibration: no memory");
        goto out;
    }
    for (int32_t i = 0; i < nb; i++)
        bt[i] = i;
    if ((st = gm_engine_cpu_set_tap(e, calib_tap, c)))
        goto done;
    int64_t used = 0, next = 0, limit = o->calib_tokens > 0 ? o->calib_tokens : 512;
    while (used < limit && next < n_ids) {
        int64_t T = 1;
        seq[0] = ck->cfg.bos_id;
        while (T < S && next < n_ids && used + T < limit)
            seq[T++] = ids[next++];
        gm_seq_step q = {0, seq, (int32_t)T, 0, bt, nb, GM_LOGITS_NONE, GM_SAMPLING_GREEDY};
        if ((st = gm_engine_step(e, &q, 1, NULL)))
            goto done;
        used += T;
        if (o->verbose)
            fprintf(stderr, "gemma-quantize --fp8: calibrated on %lld tokens\n", (long long)used);
    }
done:
    gm_engine_cpu_set_tap(e, NULL, NULL);
    free(bt);
out:
    free(seq);
    free(ids);
    free(text);
    gm_tok_destroy(&tok);
    return st;
}

/* ---- writer ---- */

typedef struct fill_item {
    const gm_wview *src;
    float scale;
} fill_item;

typedef struct fill_ctx {
    fill_item *items; /* indexed by writer tensor index; src NULL = not ours */
    int32_t n_items;
    int32_t threads;
    int32_t verbose;
    int64_t done, total;
} fill_ctx;

typedef struct q_job {
    const void *src;
    gm_dtype dt;
    int64_t n;
    float scale;
    uint8_t *dst;
} q_job;

static void *q_worker(void *arg)
{
    q_job *j = arg;
    cpu_fp8_quantize(j->src, j->dt, j->n, j->scale, j->dst);
    return NULL;
}

static gm_status fill_fp8(void *ctx_, int32_t index, void *dst, uint64_t nbytes)
{
    fill_ctx *c = ctx_;
    if (index < 0 || index >= c->n_items || !c->items[index].src)
        return gm_fail(GM_ERR_INTERNAL, "fp8 writer: no source for tensor %d", index);
    const gm_wview *v = c->items[index].src;
    int64_t n = v->rows * v->cols;
    if ((uint64_t)n != nbytes)
        return gm_fail(GM_ERR_INTERNAL, "fp8 writer: %s: %lld elements for %llu bytes", v->full->name,
                       (long long)n, (unsigned long long)nbytes);
    if (v->ld != v->cols)
        return gm_fail(GM_ERR_UNSUPPORTED, "fp8 writer: %s is not a whole tensor", v->full->name);
    size_t es = gm_dtype_size(v->dtype);
    int nt = c->threads;
    if (n < (1 << 20))
        nt = 1;
    q_job jobs[32];
    pthread_t th[32];
    int64_t per = (n + nt - 1) / nt;
    int started = 0;
    for (int i = 0; i < nt; i++) {
        int64_t a = i * per, b = a + per < n ? a + per : n;
        if (a >= b)
            break;
        jobs[i] = (q_job){(const char *)v->data + a * es, v->dtype, b - a, c->items[index].scale, (uint8_t *)dst + a};
        if (nt > 1 && pthread_create(&th[i], NULL, q_worker, &jobs[i]) == 0) {
            started++;
        } else {
            q_worker(&jobs[i]);
            if (nt > 1) { /* thread creation failed: finish the rest here */
                for (int k = i + 1; k < nt; k++) {
                    int64_t a2 = k * per, b2 = a2 + per < n ? a2 + per : n;
                    if (a2 < b2)
                        cpu_fp8_quantize((const char *)v->data + a2 * es, v->dtype, b2 - a2, c->items[index].scale,
                                         (uint8_t *)dst + a2);
                }
                break;
            }
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    c->done += n;
    if (c->verbose)
        fprintf(stderr, "\rgemma-quantize --fp8: %5.1f%% of the linear weights written", 100.0 * c->done / c->total);
    return GM_OK;
}

gm_status gm_quantize_fp8_ex(const char *model_dir, const char *out_dir, const gm_fp8_quant_opts *o)
{
    gm_status st = GM_OK;
    gm_fp8_quant_opts def;
    if (!o) {
        gm_fp8_quant_opts_init(&def);
        o = &def;
    }
    if (!model_dir || !out_dir)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_quantize_fp8: model and output directories are required");
    const st_model *m = NULL;
    gm_checkpoint *ck = NULL; /* config, tokenizer, and the weights unless the engine holds them */
    gm_engine *eng = NULL;    /* calibration: the CPU engine over the same checkpoint */
    gm_weights w;
    memset(&w, 0, sizeof w);
    fp8_layer *layers = NULL;
    fp8_calib cal = {0};
    st_writer *wr = NULL;
    fill_ctx fc = {0};
    char path[4096];
    int bound = 0, calibrated = o->calib_file != NULL;

    if ((st = gm_checkpoint_open(model_dir, calibrated ? 0 : GM_CKPT_WEIGHTS, &ck)) != GM_OK)
        return st;
    const gm_model_config cfg = ck->cfg;
    if (calibrated && (st = gm_engine_cpu_create_calib(model_dir, 1, o->calib_seq > 1 ? o->calib_seq : 256, &eng)))
        goto done;
    m = calibrated ? gm_engine_cpu_model(eng) : ck->model;
    for (int32_t i = 0; i < st_model_count(m); i++)
        if (st_model_at(m, i)->dtype == GM_DT_F8_E4M3) {
            st = gm_fail(GM_ERR_INVALID_ARG, "%s: tensor %s is already FP8", model_dir, st_model_at(m, i)->name);
            goto done;
        }
    if ((st = gm_weights_bind(m, &cfg, 0, 1, &w)) != GM_OK)
        goto done;
    bound = 1;
    const int32_t NL = cfg.num_layers;
    layers = calloc((size_t)NL, sizeof *layers);
    cal.in_qkv = calloc((size_t)NL * 5, sizeof(float));
    if (!layers || !cal.in_qkv) {
        st = gm_fail(GM_ERR_NOMEM, "gm_quantize_fp8: out of memory");
        goto done;
    }
    cal.in_o = cal.in_qkv + NL, cal.in_gu = cal.in_o + NL, cal.in_down = cal.in_gu + NL, cal.kv = cal.in_down + NL;

    /* weight scales: q/k/v share one, gate/up share one */
    for (int32_t l = 0; l < NL; l++) {
        gm_layer_weights *L = &w.layers[l];
        const gm_wview *v[LIN_N] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        float am[LIN_N];
        for (int i = 0; i < LIN_N; i++) {
            layers[l].lin[i] = v[i];
            am[i] = cpu_fp8_amax(v[i]->full->data, v[i]->dtype, st_numel(v[i]->full));
        }
        float qkv = cpu_fp8_scale(maxf(am[LIN_Q], maxf(am[LIN_K], am[LIN_V])));
        float gu = cpu_fp8_scale(maxf(am[LIN_GATE], am[LIN_UP]));
        layers[l].wscale[LIN_Q] = layers[l].wscale[LIN_K] = layers[l].wscale[LIN_V] = qkv;
        layers[l].wscale[LIN_O] = cpu_fp8_scale(am[LIN_O]);
        layers[l].wscale[LIN_GATE] = layers[l].wscale[LIN_UP] = gu;
        layers[l].wscale[LIN_DOWN] = cpu_fp8_scale(am[LIN_DOWN]);
    }
    if (calibrated) {
        if ((st = calibrate(eng, ck, o, &cal)) != GM_OK)
            goto done;
        for (int32_t l = 0; l < NL; l++) {
            float s_qkv = cpu_fp8_scale(cal.in_qkv[l]), s_gu = cpu_fp8_scale(cal.in_gu[l]);
            layers[l].iscale[LIN_Q] = layers[l].iscale[LIN_K] = layers[l].iscale[LIN_V] = s_qkv;
            layers[l].iscale[LIN_O] = cpu_fp8_scale(cal.in_o[l]);
            layers[l].iscale[LIN_GATE] = layers[l].iscale[LIN_UP] = s_gu;
            layers[l].iscale[LIN_DOWN] = cpu_fp8_scale(cal.in_down[l]);
            layers[l].kv_scale = cpu_fp8_scale(cal.kv[l]);
        }
    }

    if ((st = gm_mkdirs(out_dir)) != GM_OK)
        goto done;
    wr = st_writer_new();
    int32_t n_src = st_model_count(m);
    fc.n_items = n_src * 3 + 2 * NL + 8;
    fc.items = calloc((size_t)fc.n_items, sizeof *fc.items);
    if (!wr || !fc.items) {
        st = gm_fail(GM_ERR_NOMEM, "gm_quantize_fp8: out of memory");
        goto done;
    }
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    fc.threads = o->threads > 0 ? o->threads : (int32_t)(nproc > 0 ? nproc : 1);
    if (fc.threads > 32)
        fc.threads = 32;
    fc.verbose = o->verbose;
    for (int32_t i = 0; i < n_src; i++) {
        const st_tensor *t = st_model_at(m, i);
        int32_t li = -1, ki = -1;
        for (int32_t l = 0; l < NL && li < 0; l++)
            for (int k = 0; k < LIN_N; k++)
                if (layers[l].lin[k]->full == t) {
                    li = l, ki = k;
                    break;
                }
        if (li < 0) { /* embedding, norms, anything else: unchanged */
            if (st_writer_add(wr, t->name, t->dtype, t->ndim, t->shape, t->data) < 0) {
                st = GM_ERR_INVALID_ARG;
                goto done;
            }
            continue;
        }
        size_t nl = strlen(t->name);
        if (nl < 7 || strcmp(t->name + nl - 7, ".weight") || nl > 3000) {
            st = gm_fail(GM_ERR_FORMAT, "%s: linear tensor %s does not end in .weight", model_dir, t->name);
            goto done;
        }
        char base[3072];
        memcpy(base, t->name, nl - 7);
        base[nl - 7] = 0;
        int32_t idx = st_writer_add(wr, t->name, GM_DT_F8_E4M3, t->ndim, t->shape, NULL);
        if (idx < 0 || idx >= fc.n_items) {
            st = idx < 0 ? GM_ERR_INVALID_ARG : gm_fail(GM_ERR_INTERNAL, "fp8 writer: tensor index %d", idx);
            goto done;
        }
        fc.items[idx].src = layers[li].lin[ki];
        fc.items[idx].scale = layers[li].wscale[ki];
        fc.total += st_numel(t);
        snprintf(path, sizeof path, "%s.weight_scale", base);
        if (st_writer_add(wr, path, GM_DT_F32, 0, NULL, &layers[li].wscale[ki]) < 0) {
            st = GM_ERR_INVALID_ARG;
            goto done;
        }
        if (calibrated) {
            snprintf(path, sizeof path, "%s.input_scale", base);
            if (st_writer_add(wr, path, GM_DT_F32, 0, NULL, &layers[li].iscale[ki]) < 0) {
                st = GM_ERR_INVALID_ARG;
                goto done;
            }
        }
    }
    if (calibrated)
        for (int32_t l = 0; l < NL; l++) {
            const char *nm[2] = {"k_scale", "v_scale"};
            for (int k = 0; k < 2; k++) {
                snprintf(path, sizeof path, "%slayers.%d.self_attn.%s", gm_config_tensor_prefix(&w.cfg), l, nm[k]);
                if (st_writer_add(wr, path, GM_DT_F32, 0, NULL, &layers[l].kv_scale) < 0) {
                    st = GM_ERR_INVALID_ARG;
                    goto done;
                }
            }
        }
    if ((st = st_writer_meta(wr, "format", "pt")) != GM_OK)
        goto done;
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    if ((st = st_writer_write(wr, path, fill_fp8, &fc)) != GM_OK)
        goto done;
    if (o->verbose)
        fprintf(stderr, "\ngemma-quantize --fp8: wrote %s (%.2f GB)\n", path, st_writer_bytes(wr) / 1e9);
    cJSON *q = cJSON_CreateObject();
    cJSON_AddStringToObject(q, "quant_method", "fp8");
    cJSON_AddStringToObject(q, "fmt", "e4m3");
    cJSON_AddStringToObject(q, "activation_scheme", calibrated ? "static" : "dynamic");
    cJSON_AddStringToObject(q, "weight_scheme", "per-tensor");
    if (calibrated)
        cJSON_AddStringToObject(q, "kv_cache_scheme", "static");
    cJSON_AddItemToObject(q, "ignored_layers", cJSON_CreateArray());
    st = gm_checkpoint_write_meta(ck, out_dir, q); /* config.json (built for a GGUF), tokenizer */
done:
    st_writer_destroy(&wr);
    free(fc.items);
    free(cal.in_qkv);
    free(layers);
    if (bound)
        gm_weights_release(&w);
    gm_engine_destroy(&eng);
    gm_checkpoint_destroy(&ck);
    return st;
}

gm_status gm_quantize_fp8(const char *model_dir, const char *out_dir, const char *calib_file_or_null)
{
    gm_fp8_quant_opts o;
    gm_fp8_quant_opts_init(&o);
    o.calib_file = calib_file_or_null;
    return gm_quantize_fp8_ex(model_dir, out_dir, &o);
}
