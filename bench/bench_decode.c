/* bench_decode.c - decode tokens/s of the CUDA engine at Gemma 1 (2b, 7b), Gemma 2 (gemma2-9b) and Gemma 3
 * (gemma3-4b, gemma3-12b) shapes, beside the weight-read bound (weight bytes / measured device-copy
 * bandwidth, batch 1).
 *
 * Each sequence gets a random prompt (one prefill step each), then `gen` greedy decode steps
 * of the whole batch are timed by wall clock (every step is synchronous: tokens come back to
 * the host, as the serving loop sees them). Weights: random on the device at the preset's
 * shapes (--preset, or --config DIR: any config.json, e.g. gemma-mkmodel --preset P --config-only), or a
 * checkpoint (--model). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>

#include "common/clock.h"
#include "common/model_config.h"
#include "worker/engine.h"
#include "worker/engine_cuda.h"

/* The Gemma 2/3 presets: the public configs' shapes and switches (layer i slides unless (i + 1) % pattern == 0). */
typedef struct g23_preset {
    const char *name;
    gm_family family;
    int32_t vocab, hidden, inter, layers, heads, kv, window, pattern;
    float attn_cap, final_cap, theta, theta_local, rope_scale;
} g23_preset;

static const g23_preset k_g23[] = {
    {"gemma2-9b", GM_FAMILY_GEMMA2, 256000, 3584, 14336, 42, 16, 8, 4096, 2, 50.0f, 30.0f, 1e4f, 1e4f, 1.0f},
    {"gemma3-4b", GM_FAMILY_GEMMA3, 262144, 2560, 10240, 34, 8, 4, 1024, 6, 0.0f, 0.0f, 1e6f, 1e4f, 8.0f},
    {"gemma3-12b", GM_FAMILY_GEMMA3, 262144, 3840, 15360, 48, 16, 8, 1024, 6, 0.0f, 0.0f, 1e6f, 1e4f, 8.0f},
};

static int preset(const char *name, gm_model_config *c)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 256000, c->head_dim = 256, c->max_position = 8192, c->rope_theta = 10000.0f;
    c->rms_norm_eps = 1e-6f, c->bos_id = 2, c->eos_id = 1, c->pad_id = 0;
    if (!strcmp(name, "2b")) {
        c->hidden_size = 2048, c->intermediate_size = 16384, c->num_layers = 18, c->num_heads = 8, c->num_kv_heads = 1;
    } else if (!strcmp(name, "7b")) {
        c->hidden_size = 3072, c->intermediate_size = 24576, c->num_layers = 28, c->num_heads = 16;
        c->num_kv_heads = 16;
    } else {
        for (size_t i = 0; i < sizeof k_g23 / sizeof k_g23[0]; i++) {
            const g23_preset *p = &k_g23[i];
            if (strcmp(name, p->name))
                continue;
            c->vocab_size = p->vocab, c->hidden_size = p->hidden, c->intermediate_size = p->inter;
            c->num_layers = p->layers, c->num_heads = p->heads, c->num_kv_heads = p->kv, c->rope_theta = p->theta;
            gm_config_set_gemma1(c);
            c->family = p->family, c->query_pre_attn_scalar = 256.0f;
            c->attn_softcap = p->attn_cap, c->final_softcap = p->final_cap, c->sliding_window = p->window;
            for (int32_t l = 0; l < c->num_layers; l++)
                c->layer_sliding[l] = (uint8_t)((l + 1) % p->pattern != 0);
            c->rope_theta_local = p->theta_local, c->rope_scale = p->rope_scale;
            c->sandwich_norm = 1, c->qk_norm = p->family == GM_FAMILY_GEMMA3;
            return 1;
        }
        return 0;
    }
    gm_config_set_gemma1(c);
    return 1;
}

/* Device-copy bandwidth, bytes read + written, GB/s. */
static double copy_bw(void)
{
    size_t n = (size_t)1 << 30;
    void *a, *b;
    if (cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess)
        return 0;
    cudaMemset(a, 1, n);
    cudaMemset(b, 2, n);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e0, 0);
    for (int i = 0; i < 10; i++)
        cudaMemcpy(i & 1 ? a : b, i & 1 ? b : a, n, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    cudaFree(a), cudaFree(b);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return 10.0 * 2.0 * (double)n / (ms * 1e6);
}

typedef struct run_cfg {
    int32_t batch, prompt, gen;
    const char *label;
    int32_t verify; /* > 0: each step is a verify entry of 1 + verify tokens per sequence (speculative decoding) */
} run_cfg;

static int run(gm_engine *e, const run_cfg *rc, const char *model, double bw, int64_t wbytes, FILE *csv)
{
    int32_t B = rc->batch, V = e->cfg.vocab_size, bs = e->opts.kv_block_size;
    int32_t per = (rc->prompt + rc->gen + 8 + rc->verify + bs - 1) / bs;
    int32_t *bt = malloc((size_t)(B * per) * 4), *tok = malloc((size_t)B * 4), *out = malloc((size_t)B * 4);
    int32_t *prompt = malloc((size_t)rc->prompt * 4);
    gm_seq_step *s = calloc((size_t)B, sizeof *s);
    int32_t nv = 1 + rc->verify, *vin = malloc((size_t)B * (size_t)nv * 4), *vout = malloc((size_t)B * (size_t)nv * 4);
    for (int32_t i = 0; i < B * per; i++)
        bt[i] = i;
    uint64_t r = 7;
    double t_pre = 0;
    for (int32_t b = 0; b < B; b++) {
        for (int32_t i = 0; i < rc->prompt; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            prompt[i] = (int32_t)((r >> 33) % (uint64_t)V);
        }
        prompt[0] = e->cfg.bos_id;
        gm_seq_step p = {b, prompt, rc->prompt, 0, bt + b * per, per, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
        gm_step_out o = {out, NULL, 0};
        double t0 = gm_now_s();
        gm_status st = gm_engine_step(e, &p, 1, &o);
        t_pre += gm_now_s() - t0;
        if (st) {
            fprintf(stderr, "bench_decode: prefill: %s: %s\n", gm_status_str(st), gm_last_error());
            return 1;
        }
        tok[b] = out[0];
    }
    int32_t pos = rc->prompt;
    const int warm = 4;
    double t0 = 0;
    for (int32_t k = 0; k < warm + rc->gen; k++) {
        if (k == warm)
            t0 = gm_now_s();
        for (int32_t b = 0; b < B; b++) {
            s[b] = (gm_seq_step){b, &tok[b], 1, pos, bt + b * per, per, GM_LOGITS_LAST, GM_SAMPLING_GREEDY};
            if (rc->verify > 0) { /* the sequence's token and k drafts (its copies: the step time is what counts) */
                for (int32_t j = 0; j < nv; j++)
                    vin[b * nv + j] = tok[b];
                s[b].tokens = vin + b * nv, s[b].n_tokens = nv, s[b].logits_mode = GM_LOGITS_VERIFY;
            }
        }
        gm_step_out o = {out, NULL, 0, NULL, vout, (int64_t)B * nv};
        gm_status st = gm_engine_step(e, s, B, &o);
        if (st) {
            fprintf(stderr, "bench_decode: decode: %s: %s\n", gm_status_str(st), gm_last_error());
            return 1;
        }
        memcpy(tok, out, (size_t)B * 4);
        pos++;
    }
    double dt = gm_now_s() - t0;
    double tps = (double)B * rc->gen / dt, ms = 1e3 * dt / rc->gen;
    double bound = bw > 0 ? bw * 1e9 / (double)wbytes : 0;
    printf("%-10s B=%-3d prompt %-5d gen %-4d %-22s | %8.1f tok/s | %6.3f ms/step | batch-1 bound %6.0f tok/s (%.2f GB "
           "at %.0f GB/s) | %5.1f%% | prefill %.0f tok/s\n",
           model, B, rc->prompt, rc->gen, rc->label, tps, ms, bound, (double)wbytes / 1e9, bw,
           bound > 0 ? 100.0 * (tps / B) / bound : 0, (double)B * rc->prompt / t_pre);
    if (csv)
        fprintf(csv, "%s,%d,%d,%d,%s,%.2f,%.4f,%.1f\n", model, B, rc->prompt, rc->gen, rc->label, tps, ms, bound);
    free(bt), free(tok), free(out), free(prompt), free(s), free(vin), free(vout);
    return 0;
}

/* --act-scale: static scale s (> 0) or dynamic (0); 1 on error. */
static int act_mode(gm_engine *e, float s)
{
    gm_status st = gm_engine_cuda_set_static_act(e, s);
    if (st)
        fprintf(stderr, "bench_decode: %s: %s\n", gm_status_str(st), gm_last_error());
    return st ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *pre = "2b", *model = NULL, *csv_path = NULL, *batches = "1", *cfg_dir = NULL, *verifies = NULL;
    int32_t prompt = 128, gen = 256;
    int variants = 0, q_fp8 = 0, kv_fp8 = 0, act = 0, lm8 = 0; /* act: 0 as loaded, 1 dynamic, 2 static, 3 both */
    int attn = GM_CUDA_ATTN_AUTO, pre_attn = GM_CUDA_PREFILL_AUTO;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help")) {
            printf("usage: bench_decode [--preset P | --config DIR | --model DIR] [--prompt N] [--gen N]\n"
                   "                    [--batch B[,B...]]\n"
                   "                    [--variants] [--csv FILE] [--quant none|fp8|awq] [--kv-dtype bf16|fp8]\n"
                   "                    [--xqa 0|1|2] [--act-scale dynamic|static|both]\n"
                   "                    [--lm-head bf16|fp8] [--prefill-attn auto|mma|hopper|e4m3]\n"
                   "                    [--verify K[,K...]]\n"
                   "Decode tokens/s of the CUDA engine, random weights at a preset's shapes (2b, 7b, gemma2-9b,\n"
                   "gemma3-4b, gemma3-12b) or a config.json's (--config DIR), or a checkpoint (--model DIR).\n"
                   "--variants adds, at batch 1, cuBLASLt instead of the bf16\n"
                   "GEMV kernel, no programmatic dependent launch, no CUDA graphs, and a per-op profile.\n"
                   "--act-scale (FP8 weights): dynamic per-tensor activation scales, or static ones (one fixed\n"
                   "scale, as calibrated input scales would be; the speed does not depend on its value), or both\n"
                   "one after the other at each batch.\n"
                   "--prefill-attn: the prompt rows' attention kernel (default: the engine's rule; e4m3: the Hopper\n"
                   "kernel on e4m3 tensor cores, FP8 KV only); the prefill tok/s each line prints is the prompts'\n"
                   "step time.\n"
                   "--verify K,...: after each batch's decode, the same with every step a verify entry of 1 + K\n"
                   "tokens per sequence (speculative decoding, docs/SPECULATIVE.md): the step time against K.\n");
            return 0;
        } else if (!strcmp(a, "--preset") && v) {
            pre = v, i++;
        } else if (!strcmp(a, "--model") && v) {
            model = v, i++;
        } else if (!strcmp(a, "--config") && v) {
            cfg_dir = v, i++;
        } else if (!strcmp(a, "--prompt") && v) {
            prompt = atoi(v), i++;
        } else if (!strcmp(a, "--gen") && v) {
            gen = atoi(v), i++;
        } else if (!strcmp(a, "--batch") && v) {
            batches = v, i++;
        } else if (!strcmp(a, "--csv") && v) {
            csv_path = v, i++;
        } else if (!strcmp(a, "--quant") && v) {
            q_fp8 = !strcmp(v, "fp8") ? 1 : !strcmp(v, "awq") ? 2 : !strcmp(v, "none") ? 0 : -1, i++;
            if (q_fp8 < 0) {
                fprintf(stderr, "bench_decode: --quant %s: none, fp8 or awq (awq needs --model DIR of an AWQ checkpoint)\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--kv-dtype") && v) {
            kv_fp8 = !strcmp(v, "fp8"), i++;
        } else if (!strcmp(a, "--xqa") && v) {
            attn = atoi(v), i++; /* gm_cuda_attn: 0 k_attn_decode, 1 the measured rule, 2 XQA */
        } else if (!strcmp(a, "--prefill-attn") && v) {
            pre_attn = !strcmp(v, "auto")     ? GM_CUDA_PREFILL_AUTO
                       : !strcmp(v, "mma")    ? GM_CUDA_PREFILL_MMA
                       : !strcmp(v, "hopper") ? GM_CUDA_PREFILL_HOPPER
                       : !strcmp(v, "e4m3")   ? GM_CUDA_PREFILL_HOPPER_E4M3
                                              : -1;
            i++;
            if (pre_attn < 0) {
                fprintf(stderr, "bench_decode: --prefill-attn %s: auto, mma, hopper or e4m3\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--lm-head") && v) {
            lm8 = !strcmp(v, "fp8"), i++;
        } else if (!strcmp(a, "--act-scale") && v) {
            act = !strcmp(v, "dynamic") ? 1 : !strcmp(v, "static") ? 2 : !strcmp(v, "both") ? 3 : -1, i++;
            if (act < 0) {
                fprintf(stderr, "bench_decode: --act-scale %s: dynamic, static or both\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--variants")) {
            variants = 1;
        } else if (!strcmp(a, "--verify") && v) {
            verifies = v, i++;
        } else {
            fprintf(stderr, "bench_decode: bad argument '%s' (try --help)\n", a);
            return 2;
        }
    }
    if (prompt < 1 || gen < 1 || prompt + gen + 16 > 8192) {
        fprintf(stderr, "bench_decode: prompt %d + gen %d must fit 8192 positions\n", prompt, gen);
        return 2;
    }
    int32_t bl[16], nb = 0, maxb = 1;
    for (const char *p = batches; *p && nb < 16;) {
        bl[nb] = atoi(p);
        if (bl[nb] < 1 || bl[nb] > 1024) {
            fprintf(stderr, "bench_decode: --batch %s: each batch in 1..1024\n", batches);
            return 2;
        }
        maxb = bl[nb] > maxb ? bl[nb] : maxb;
        nb++;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    gm_model_config cfg;
    if (!model && cfg_dir) {
        gm_status cs = gm_config_load_dir(cfg_dir, &cfg);
        if (cs) {
            fprintf(stderr, "bench_decode: --config %s: %s\n", cfg_dir, gm_last_error());
            return 2;
        }
        pre = cfg_dir;
    } else if (!model && !preset(pre, &cfg)) {
        fprintf(stderr, "bench_decode: unknown preset '%s' (2b, 7b, gemma2-9b, gemma3-4b or gemma3-12b)\n", pre);
        return 2;
    }
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    o.backend = GM_BACKEND_CUDA;
    o.model_dir = model;
    o.kv_block_size = 16;
    o.max_seqs = maxb < 8 ? 8 : maxb;
    int32_t step_tokens = verifies ? o.max_seqs * 17 : o.max_seqs; /* --verify: up to 1 + 16 a sequence */
    o.max_tokens = prompt > step_tokens ? prompt : step_tokens;
    o.max_context = 8192;
    o.kv_num_blocks = (int64_t)maxb * ((prompt + gen + 8 + 16 + 15) / 16) + 16;
    o.verbose = 1;
    o.quant = q_fp8 == 1 ? GM_QUANT_FP8 : q_fp8 == 2 ? GM_QUANT_AWQ : GM_QUANT_NONE;
    o.kv_dtype = kv_fp8 ? GM_KV_FP8 : GM_KV_BF16;
    o.lm_head_fp8 = lm8;
    gm_engine *e = NULL;
    gm_status st = model ? gm_engine_create(&o, &e) : gm_engine_cuda_create_random(&o, &cfg, 1, &e);
    if (!st && attn != GM_CUDA_ATTN_AUTO)
        st = gm_engine_cuda_set_decode_attn(e, (gm_cuda_attn)attn);
    if (!st && pre_attn != GM_CUDA_PREFILL_AUTO)
        st = gm_engine_cuda_set_prefill_attn(e, (gm_cuda_prefill)pre_attn);
    if (st) {
        fprintf(stderr, "bench_decode: %s: %s\n", gm_status_str(st), gm_last_error());
        gm_engine_destroy(&e);
        return 1;
    }
    char name[64];
    const int pk = gm_engine_cuda_prefill_uses_hopper(e);
    snprintf(name, sizeof name, "%s%s%s%s%s", model ? "ckpt" : pre, q_fp8 == 1 ? " w8" : q_fp8 == 2 ? " awq" : "",
             kv_fp8 ? " kv8" : "", lm8 ? " lm8" : "", pk == 2 ? " pfH8" : pk ? " pfH" : " pfM");
    double bw = copy_bw();
    int64_t wb = gm_engine_cuda_weight_bytes(e);
    FILE *csv = csv_path ? fopen(csv_path, "a") : NULL;
    int rc = 0;
    for (int32_t i = 0; i < nb && !rc; i++) {
        run_cfg c = {bl[i], prompt, gen, "graphs, gemv<=2 rows"};
        if (act & 1) {
            if ((rc = act_mode(e, 0.0f)) == 0) {
                c.label = "graphs, dynamic act scales";
                rc = run(e, &c, name, bw, wb, csv);
            }
        }
        if (!rc && (act & 2)) {
            if ((rc = act_mode(e, 0.05f)) == 0) {
                c.label = "graphs, static act scales";
                rc = run(e, &c, name, bw, wb, csv);
            }
        }
        if (!act)
            rc = run(e, &c, name, bw, wb, csv);
        for (const char *p = verifies; p && *p && !rc;) { /* step time against k */
            char lab[48];
            c.verify = atoi(p);
            if (c.verify < 1 || c.verify > 16) {
                fprintf(stderr, "bench_decode: --verify %s: each K in 1..16\n", verifies);
                rc = 2;
                break;
            }
            snprintf(lab, sizeof lab, "verify k=%d (eager)", c.verify);
            c.label = lab;
            rc = run(e, &c, name, bw, wb, csv);
            c.verify = 0;
            p = strchr(p, ',');
            p = p ? p + 1 : NULL;
        }
        c.label = "graphs, gemv<=2 rows";
        if (!rc && variants && bl[i] == 1) {
            gm_engine_cuda_set_gemv_rows(e, 0);
            c.label = "graphs, cuBLASLt bf16";
            rc = run(e, &c, name, bw, wb, csv);
            gm_engine_cuda_set_gemv_rows(e, 2);
            gm_engine_cuda_set_pdl(e, 0);
            c.label = "graphs, no PDL";
            if (!rc)
                rc = run(e, &c, name, bw, wb, csv);
            gm_engine_cuda_set_pdl(e, 1);
            e->opts.use_graphs = 0;
            c.label = "no graphs, gemv";
            if (!rc)
                rc = run(e, &c, name, bw, wb, csv);
            e->opts.use_graphs = 1;
            /* where a graph-replayed step spends its time (event nodes between the ops) */
            gm_engine_cuda_profile(e, 1);
            c.label = "graphs, profiled";
            c.gen = 64;
            if (!rc)
                rc = run(e, &c, name, bw, wb, csv);
            const char *names[32];
            double us[32], tot = 0;
            int n = gm_engine_cuda_profile_get(e, names, us, 32);
            for (int k = 0; k < n; k++)
                tot += us[k];
            printf("%s B=1 step profile (us per step, graph replay):", name);
            for (int k = 0; k < n; k++)
                if (us[k] > 0)
                    printf(" %s %.1f (%.0f%%)", names[k], us[k], 100.0 * us[k] / tot);
            printf(" | total %.1f\n", tot);
            gm_engine_cuda_profile(e, 0);
        }
    }
    if (csv)
        fclose(csv);
    gm_engine_destroy(&e);
    return rc;
}
