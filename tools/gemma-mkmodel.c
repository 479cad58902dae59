/* gemma-mkmodel.c - write a random-weight Gemma checkpoint in Hugging Face layout.
 *
 * DIR/config.json, generation_config.json, tokenizer.model (sentencepiece BPE
 * trained from data/corpus.txt) and model.safetensors, or model-0000i-of-0000N
 * shards with model.safetensors.index.json. Element e of tensor t is a pure
 * function of (seed, t, e): a counter-based hash feeding Box-Muller, so the
 * bytes are identical whatever the thread count or the sharding. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/ckpt_meta.h"
#include "common/dtype.h"
#include "common/args.h"
#include "common/fsutil.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "common/sampling.h"
#include "common/status.h"
#include "tools/spm_train.h"

#ifndef GM_SOURCE_DIR
#define GM_SOURCE_DIR "."
#endif

#define MK_MAX_NAME 96
#define MK_SHARD_BYTES 4000000000ull /* default shard size of the big presets */
#define MK_TOK_VOCAB 4096            /* tokenizer vocabulary cap */
#define MK_MIN_VOCAB 1024            /* smallest model vocabulary the tokenizer trains for */

typedef struct mk_tensor {
    char name[MK_MAX_NAME];
    int32_t ndim;
    int64_t shape[2];
    float std;      /* standard deviation of the normal draw */
    int32_t shard;  /* which file it goes to */
    uint64_t nbytes;
} mk_tensor;

typedef struct mk_opts {
    const char *preset, *out, *corpus;
    uint64_t seed;
    gm_dtype dtype;
    int32_t shards;  /* 0 = automatic */
    int32_t threads; /* 0 = nproc */
    bool config_only; /* no weights */
    gm_model_config cfg;
} mk_opts;

/* Everything the fill callback needs for one shard. */
typedef struct mk_fill_ctx {
    const mk_opts *o;
    const mk_tensor *all;
    const int32_t *local;  /* [count] global tensor index of each writer index */
    uint64_t total, *done; /* bytes of the whole model, bytes written so far */
    bool progress;
} mk_fill_ctx;

typedef struct mk_job {
    uint64_t key;
    float std;
    gm_dtype dt;
    void *dst;
    int64_t begin, end; /* element range, begin even */
} mk_job;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-mkmodel --preset P --out DIR [options]\n"
            "Writes a Gemma checkpoint with random weights in Hugging Face layout:\n"
            "config.json, generation_config.json, tokenizer.model and model.safetensors\n"
            "(or N shards with model.safetensors.index.json).\n\n"
            "  --preset P          Gemma 1: tiny (4 layers, hidden 128, a few MB), 2b, 7b;\n"
            "                      Gemma 2: tiny-gemma2 (window 16), gemma2-2b, gemma2-9b;\n"
            "                      Gemma 3: tiny-gemma3 (window 16), gemma3-270m, gemma3-1b, gemma3-4b, gemma3-12b\n"
            "                      (the real models' shapes, vocabulary and switches, with random weights)\n"
            "  --out DIR           output directory (created if missing)\n"
            "  --seed N            random seed (default 0); same seed, same bytes\n"
            "  --dtype D           bf16, f16 or f32 (default bf16)\n"
            "  --shards N          number of safetensors files (default: 1 for tiny, ~4 GB each otherwise)\n"
            "  --layers N --heads N --kv-heads N --hidden N --intermediate N --head-dim N --vocab N\n"
            "                      override the preset's shape (vocab >= %d)\n"
            "  --sliding-window N  the sliding layers' window (Gemma 2/3 presets)\n"
            "  --corpus FILE       tokenizer training text (default: the shipped data/corpus.txt, from\n"
            "                      $GEMMAD_DATA, the install's share/gemmad or the source tree %s)\n"
            "  --threads N         generator threads (default: all CPUs; output does not depend on it)\n"
            "  --config-only       write the configs and the tokenizer, no weights\n"
            "  --help              this text\n"
            "The tokenizer is a small one trained from the corpus (at most %d pieces, Gemma's special ids,\n"
            "turn markers at 105/106 for Gemma 3, else 106/107); ids from it up to vocab_size are all valid\n"
            "model ids, and a model's larger vocabulary only widens the embedding (its extra rows are never\n"
            "produced by the tokenizer, but the model may sample them: they decode to nothing).\n",
            MK_MIN_VOCAB, GM_SOURCE_DIR, MK_TOK_VOCAB);
}

/* A preset: shape and, for Gemma 2/3, the switches (shapes of the public configs; tiny-* are test sizes). */
typedef struct mk_preset_def {
    const char *name;
    gm_family family;
    int32_t vocab, hidden, inter, layers, heads, kv, head_dim, max_pos;
    int32_t window, pattern;         /* sliding window; layer i slides unless (i + 1) % pattern == 0 */
    float qpas, attn_cap, final_cap; /* query_pre_attn_scalar (0: head_dim), soft-caps (0: none) */
    float theta, theta_local, rope_scale;
} mk_preset_def;

static const mk_preset_def k_presets[] = {
    {"tiny", GM_FAMILY_GEMMA1, 4096, 128, 512, 4, 4, 2, 32, 1024, 0, 0, 0, 0, 0, 1e4f, 1e4f, 1},
    {"2b", GM_FAMILY_GEMMA1, 256000, 2048, 16384, 18, 8, 1, 256, 8192, 0, 0, 0, 0, 0, 1e4f, 1e4f, 1},
    {"7b", GM_FAMILY_GEMMA1, 256000, 3072, 24576, 28, 16, 16, 256, 8192, 0, 0, 0, 0, 0, 1e4f, 1e4f, 1},
    /* tiny Gemma 2/3 for tests: a short window so that prompts cross it, soft-caps small enough to bend the
     * scores and logits of random weights, query_pre_attn_scalar != head_dim, q width != hidden */
    {"tiny-gemma2", GM_FAMILY_GEMMA2, 4096, 128, 512, 4, 4, 2, 32, 1024, 16, 2, 48, 0.1f, 0.3f, 1e4f, 1e4f, 1},
    {"tiny-gemma3", GM_FAMILY_GEMMA3, 4096, 128, 512, 6, 4, 1, 64, 1024, 16, 6, 0, 0, 0, 1e6f, 1e4f, 8},
    {"gemma2-2b", GM_FAMILY_GEMMA2, 256000, 2304, 9216, 26, 8, 4, 256, 8192, 4096, 2, 256, 50, 30, 1e4f, 1e4f, 1},
    {"gemma2-9b", GM_FAMILY_GEMMA2, 256000, 3584, 14336, 42, 16, 8, 256, 8192, 4096, 2, 256, 50, 30, 1e4f, 1e4f, 1},
    {"gemma3-270m", GM_FAMILY_GEMMA3, 262144, 640, 2048, 18, 4, 1, 256, 32768, 512, 6, 256, 0, 0, 1e6f, 1e4f, 1},
    {"gemma3-1b", GM_FAMILY_GEMMA3, 262144, 1152, 6912, 26, 4, 1, 256, 32768, 512, 6, 256, 0, 0, 1e6f, 1e4f, 1},
    {"gemma3-4b", GM_FAMILY_GEMMA3, 262144, 2560, 10240, 34, 8, 4, 256, 131072, 1024, 6, 256, 0, 0, 1e6f, 1e4f, 8},
    {"gemma3-12b", GM_FAMILY_GEMMA3, 262144, 3840, 15360, 48, 16, 8, 256, 131072, 1024, 6, 256, 0, 0, 1e6f, 1e4f,
     8},
};
#define MK_PRESET_NAMES "tiny, 2b, 7b, tiny-gemma2, tiny-gemma3, gemma2-2b, gemma2-9b, gemma3-270m, gemma3-1b, " \
                        "gemma3-4b or gemma3-12b"

static const mk_preset_def *mk_preset_find(const char *name)
{
    for (size_t i = 0; i < sizeof k_presets / sizeof k_presets[0]; i++)
        if (strcmp(name, k_presets[i].name) == 0)
            return &k_presets[i];
    return NULL;
}

/* Fill cfg with a preset's shape (the switches come later: mk_preset_switches). */
static void mk_preset_shape(const mk_preset_def *p, gm_model_config *c)
{
    memset(c, 0, sizeof *c);
    c->rope_theta = p->theta;
    c->rms_norm_eps = 1e-6f;
    c->bos_id = 2;
    c->eos_id = 1;
    c->pad_id = 0;
    c->vocab_size = p->vocab;
    c->hidden_size = p->hidden;
    c->intermediate_size = p->inter;
    c->num_layers = p->layers;
    c->num_heads = p->heads;
    c->num_kv_heads = p->kv;
    c->head_dim = p->head_dim;
    c->max_position = p->max_pos;
}

/* The Gemma 2/3 switches of a preset, after the shape overrides (window < 0: the preset's). */
static void mk_preset_switches(const mk_preset_def *p, int64_t window, gm_model_config *c)
{
    gm_config_set_gemma1(c); /* the attention scale follows head_dim */
    if (p->family == GM_FAMILY_GEMMA1)
        return;
    c->family = p->family;
    c->query_pre_attn_scalar = p->qpas > 0 ? p->qpas : (float)c->head_dim;
    c->attn_softcap = p->attn_cap;
    c->final_softcap = p->final_cap;
    c->sliding_window = window > 0 ? (int32_t)window : p->window;
    for (int32_t i = 0; i < c->num_layers && i < GM_MAX_LAYERS; i++)
        c->layer_sliding[i] = (uint8_t)((i + 1) % p->pattern != 0);
    c->rope_theta_local = p->theta_local;
    c->rope_scale = p->rope_scale;
    c->sandwich_norm = 1;
    c->qk_norm = p->family == GM_FAMILY_GEMMA3;
    if (p->family == GM_FAMILY_GEMMA3) {
        c->start_of_turn_id = 105;
        c->end_of_turn_id = 106;
    }
}

/* Parse a positive int flag value. */
/* Parse argv into o. Returns GM_OK, or an error; *help set when --help was given. */
static gm_status mk_parse(int argc, char **argv, mk_opts *o, bool *help)
{
    /* shape overrides, applied after the preset: 0 = not given */
    int32_t layers = 0, kv = 0, heads = 0, hidden = 0, inter = 0, hdim = 0, vocab = 0, window = 0;
    const char *dtype = "bf16";
    memset(o, 0, sizeof *o);
    o->corpus = NULL; /* the shipped corpus (gm_data_path) unless --corpus */
    *help = false;
    args_opt opts[] = {
        {"preset", ARGS_STRING, &o->preset},
        {"out", ARGS_STRING, &o->out},
        {"seed", ARGS_UINT64, &o->seed},
        {"dtype", ARGS_STRING, &dtype},
        {"shards", ARGS_INT, &o->shards, 1, 99999},
        {"threads", ARGS_INT, &o->threads, 1, 1024},
        {"layers", ARGS_INT, &layers, 1, 1 << 24},
        {"kv-heads", ARGS_INT, &kv, 1, 1 << 24},
        {"heads", ARGS_INT, &heads, 1, 1 << 24},
        {"hidden", ARGS_INT, &hidden, 1, 1 << 24},
        {"intermediate", ARGS_INT, &inter, 1, 1 << 24},
        {"head-dim", ARGS_INT, &hdim, 1, 1 << 24},
        {"vocab", ARGS_INT, &vocab, 1, 1 << 24},
        {"sliding-window", ARGS_INT, &window, 1, 1 << 24},
        {"corpus", ARGS_STRING, &o->corpus},
        {"config-only", ARGS_FLAG, &o->config_only},
        {NULL},
    };
    args_spec spec = {"gemma-mkmodel", opts, .quiet = true};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        *help = true;
        return GM_OK;
    }
    if (rc != ARGS_OK)
        return GM_ERR_INVALID_ARG; /* gm_last_error() says why */
    if (!o->preset)
        return gm_fail(GM_ERR_INVALID_ARG, "--preset is required (" MK_PRESET_NAMES ")");
    if (!o->out)
        return gm_fail(GM_ERR_INVALID_ARG, "--out DIR is required");
    const mk_preset_def *pd = mk_preset_find(o->preset);
    if (!pd)
        return gm_fail(GM_ERR_INVALID_ARG, "--preset: unknown preset '%s' (expected " MK_PRESET_NAMES ")", o->preset);
    if (window > 0 && pd->family == GM_FAMILY_GEMMA1)
        return gm_fail(GM_ERR_INVALID_ARG, "--sliding-window: preset '%s' (Gemma 1) has no sliding layers",
                       o->preset);
    gm_model_config *m = &o->cfg;
    mk_preset_shape(pd, m);
    if (layers > 0) m->num_layers = layers;
    if (kv > 0) m->num_kv_heads = kv;
    if (heads > 0) m->num_heads = heads;
    if (hidden > 0) m->hidden_size = hidden;
    if (inter > 0) m->intermediate_size = inter;
    if (hdim > 0) m->head_dim = hdim;
    if (vocab > 0) m->vocab_size = vocab;
    if (m->num_layers > GM_MAX_LAYERS)
        return gm_fail(GM_ERR_INVALID_ARG, "--layers %d: at most %d", m->num_layers, GM_MAX_LAYERS);
    mk_preset_switches(pd, window > 0 ? window : -1, m); /* after the shape overrides */
    if (m->num_heads % m->num_kv_heads != 0)
        return gm_fail(GM_ERR_INVALID_ARG, "--heads %d is not a multiple of --kv-heads %d", m->num_heads,
                       m->num_kv_heads);
    if (m->vocab_size < MK_MIN_VOCAB)
        return gm_fail(GM_ERR_INVALID_ARG, "--vocab %d: at least %d needed for the tokenizer", m->vocab_size,
                       MK_MIN_VOCAB);
    if (strcmp(dtype, "bf16") == 0) {
        o->dtype = GM_DT_BF16;
        snprintf(m->torch_dtype, sizeof m->torch_dtype, "bfloat16");
    } else if (strcmp(dtype, "f16") == 0) {
        o->dtype = GM_DT_F16;
        snprintf(m->torch_dtype, sizeof m->torch_dtype, "float16");
    } else if (strcmp(dtype, "f32") == 0) {
        o->dtype = GM_DT_F32;
        snprintf(m->torch_dtype, sizeof m->torch_dtype, "float32");
    } else {
        return gm_fail(GM_ERR_INVALID_ARG, "--dtype: unknown dtype '%s' (expected bf16, f16 or f32)", dtype);
    }
    return GM_OK;
}

/* Append one tensor description. */
static void mk_add(mk_tensor *t, int32_t *n, const char *name, int64_t d0, int64_t d1, float std, gm_dtype dt)
{
    mk_tensor *x = &t[(*n)++];
    snprintf(x->name, sizeof x->name, "%s", name);
    x->ndim = d1 > 0 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
    x->std = std;
    x->nbytes = (uint64_t)d0 * (uint64_t)(d1 > 0 ? d1 : 1) * gm_dtype_size(dt);
}

/* The tensors of a Gemma v1 checkpoint (Hugging Face names), [out, in], in file order. *n set; caller frees. */
static mk_tensor *mk_tensors(const mk_opts *o, int32_t *n)
{
    const gm_model_config *c = &o->cfg;
    int32_t cap = 2 + 13 * c->num_layers;
    mk_tensor *t = calloc((size_t)cap, sizeof *t);
    if (!t)
        return NULL;
    int64_t h = c->hidden_size, q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim,
            f = c->intermediate_size;
    gm_dtype dt = o->dtype;
    char nm[MK_MAX_NAME];
    *n = 0;
    mk_add(t, n, "model.embed_tokens.weight", c->vocab_size, h, 0.02f, dt);
    for (int32_t l = 0; l < c->num_layers; l++) {
#define L(s) (snprintf(nm, sizeof nm, "model.layers.%d.%s.weight", (int)l, s), nm)
        mk_add(t, n, L("input_layernorm"), h, 0, 0.1f, dt);
        mk_add(t, n, L("self_attn.q_proj"), q, h, 0.02f, dt);
        mk_add(t, n, L("self_attn.k_proj"), kv, h, 0.02f, dt);
        mk_add(t, n, L("self_attn.v_proj"), kv, h, 0.02f, dt);
        if (c->qk_norm) { /* Gemma 3: [head_dim] */
            mk_add(t, n, L("self_attn.q_norm"), c->head_dim, 0, 0.1f, dt);
            mk_add(t, n, L("self_attn.k_norm"), c->head_dim, 0, 0.1f, dt);
        }
        mk_add(t, n, L("self_attn.o_proj"), h, q, 0.02f, dt);
        mk_add(t, n, L("post_attention_layernorm"), h, 0, 0.1f, dt);
        if (c->sandwich_norm) { /* Gemma 2/3 */
            mk_add(t, n, L("pre_feedforward_layernorm"), h, 0, 0.1f, dt);
            mk_add(t, n, L("post_feedforward_layernorm"), h, 0, 0.1f, dt);
        }
        mk_add(t, n, L("mlp.gate_proj"), f, h, 0.02f, dt);
        mk_add(t, n, L("mlp.up_proj"), f, h, 0.02f, dt);
        mk_add(t, n, L("mlp.down_proj"), h, f, 0.02f, dt);
#undef L
    }
    mk_add(t, n, "model.norm.weight", h, 0, 0.1f, dt);
    return t;
}

/* Assign tensors to n_shards files in order, about total/n_shards bytes each, none empty. */
static void mk_assign_shards(mk_tensor *t, int32_t n, int32_t n_shards, uint64_t total)
{
    uint64_t target = total / (uint64_t)n_shards, acc = 0;
    int32_t s = 0;
    for (int32_t i = 0; i < n; i++) {
        bool nonempty = acc > 0;
        bool must = nonempty && (n - i) == (n_shards - 1 - s); /* one tensor left per remaining shard */
        bool full = nonempty && acc + t[i].nbytes / 2 > target;
        if (s < n_shards - 1 && (must || full)) {
            s++;
            acc = 0;
        }
        t[i].shard = s;
        acc += t[i].nbytes;
    }
}

/* Standard normal pair p of the stream `key` (Box-Muller over two hashed uniforms). */
static inline void mk_normal_pair(uint64_t key, uint64_t p, double *z0, double *z1)
{
    uint64_t a = gm_mix64(key ^ gm_mix64(2 * p)), b = gm_mix64(key ^ gm_mix64(2 * p + 1));
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740992.0); /* (0, 1] */
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);         /* [0, 1) */
    double r = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
    *z0 = r * cos(th);
    *z1 = r * sin(th);
}

static inline void mk_store(void *dst, gm_dtype dt, int64_t i, float v)
{
    if (dt == GM_DT_BF16)
        ((uint16_t *)dst)[i] = gm_f32_to_bf16(v);
    else if (dt == GM_DT_F16)
        ((uint16_t *)dst)[i] = gm_f32_to_f16(v);
    else
        ((float *)dst)[i] = v;
}

static void *mk_job_run(void *arg)
{
    const mk_job *j = arg;
    for (int64_t e = j->begin; e < j->end; e += 2) {
        double z0, z1;
        mk_normal_pair(j->key, (uint64_t)e / 2, &z0, &z1);
        mk_store(j->dst, j->dt, e, (float)(z0 * j->std));
        if (e + 1 < j->end)
            mk_store(j->dst, j->dt, e + 1, (float)(z1 * j->std));
    }
    return NULL;
}

/* Fill elements [b, e) of a tensor with nt threads (b even). */
static void mk_fill_range(const mk_fill_ctx *c, uint64_t key, float std, void *dst, int64_t b, int64_t e)
{
    int nt = c->o->threads;
    if (e - b < (1 << 16))
        nt = 1;
    if (nt > 1024)
        nt = 1024;
    mk_job jobs[1024];
    pthread_t tid[1024];
    bool joined[1024];
    int64_t per = ((e - b + nt - 1) / nt + 1) & ~(int64_t)1; /* even chunk starts keep pairs together */
    int started = 0;
    for (int i = 0; i < nt; i++) {
        int64_t jb = b + (int64_t)i * per, je = jb + per < e ? jb + per : e;
        if (jb >= e)
            break;
        jobs[i] = (mk_job){key, std, c->o->dtype, dst, jb, je};
        joined[i] = true;
        if (nt > 1 && pthread_create(&tid[i], NULL, mk_job_run, &jobs[i]) == 0)
            joined[i] = false;
        else
            mk_job_run(&jobs[i]); /* one thread, or no thread to be had: do it here */
        started = i + 1;
    }
    for (int i = 0; i < started; i++)
        if (!joined[i])
            pthread_join(tid[i], NULL);
}

/* st_fill_fn: generate writer tensor `index` of the current shard into dst. */
static gm_status mk_fill(void *vctx, int32_t index, void *dst, uint64_t nbytes)
{
    mk_fill_ctx *c = vctx;
    int32_t g = c->local[index];
    const mk_tensor *t = &c->all[g];
    if (nbytes != t->nbytes)
        return gm_fail(GM_ERR_INTERNAL, "tensor %s: writer asks %" PRIu64 " bytes, expected %" PRIu64, t->name,
                       nbytes, t->nbytes);
    size_t esz = gm_dtype_size(c->o->dtype);
    int64_t numel = (int64_t)(nbytes / esz);
    uint64_t key = gm_mix64(gm_mix64(c->o->seed) ^ (0x9e3779b97f4a7c15ull * (uint64_t)(g + 1)));
    const int64_t block = (int64_t)1 << 26; /* elements between progress lines */
    for (int64_t b = 0; b < numel; b += block) {
        int64_t e = b + block < numel ? b + block : numel;
        mk_fill_range(c, key, t->std, dst, b, e);
        uint64_t before = *c->done;
        *c->done += (uint64_t)(e - b) * esz;
        if (c->progress && *c->done * 50 / c->total != before * 50 / c->total)
            fprintf(stderr, "gemma-mkmodel: %.2f / %.2f GB (%s)\n", (double)*c->done / 1e9,
                    (double)c->total / 1e9, t->name);
    }
    return GM_OK;
}


/* config.json and generation_config.json of the preset (common/ckpt_meta.h). */
static gm_status mk_config(const mk_opts *o, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    gm_status st = gm_json_write(gm_config_to_json(&o->cfg), path);
    if (st)
        return st;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    return gm_json_write(gm_generation_config_to_json(&o->cfg), path);
}

static void mk_shard_name(char *buf, size_t cap, int32_t s, int32_t n)
{
    if (n == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", (int)s + 1, (int)n);
}

/* Write the safetensors file(s) and, when sharded, the index. */
static gm_status mk_weights(const mk_opts *o, const char *dir)
{
    int32_t n = 0;
    mk_tensor *t = mk_tensors(o, &n);
    int32_t *local = calloc((size_t)n + 1, sizeof *local);
    if (!t || !local) {
        free(t);
        free(local);
        return gm_fail(GM_ERR_NOMEM, "out of memory");
    }
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += t[i].nbytes;
    int32_t ns = o->shards;
    if (ns == 0)
        ns = strncmp(o->preset, "tiny", 4) == 0 ? 1 : (int32_t)((total + MK_SHARD_BYTES - 1) / MK_SHARD_BYTES);
    gm_status st = GM_OK;
    char path[4200], fname[64];
    if (ns > n) {
        st = gm_fail(GM_ERR_INVALID_ARG, "--shards %d: the model has only %d tensors", (int)ns, (int)n);
        goto out;
    }
    mk_assign_shards(t, n, ns, total);

    /* stale files of a previous run with another layout would confuse loaders */
    snprintf(path, sizeof path, "%s/%s", dir, ns == 1 ? "model.safetensors.index.json" : "model.safetensors");
    remove(path);

    uint64_t done = 0;
    bool progress = total > (256ull << 20);
    if (progress)
        fprintf(stderr, "gemma-mkmodel: writing %d tensors, %.2f GB, %d file(s) to %s\n", (int)n, (double)total / 1e9,
                (int)ns, dir);
    for (int32_t s = 0; s < ns && !st; s++) {
        st_writer *w = st_writer_new();
        if (!w) {
            st = GM_ERR_NOMEM;
            break;
        }
        int32_t count = 0;
        for (int32_t i = 0; i < n && !st; i++) {
            if (t[i].shard != s)
                continue;
            if (st_writer_add(w, t[i].name, o->dtype, t[i].ndim, t[i].shape, NULL) < 0)
                st = GM_ERR_INVALID_ARG; /* detail already recorded */
            local[count++] = i;
        }
        if (!st)
            st = st_writer_meta(w, "format", "pt");
        mk_shard_name(fname, sizeof fname, s, ns);
        snprintf(path, sizeof path, "%s/%s", dir, fname);
        mk_fill_ctx ctx = {o, t, local, total, &done, progress};
        if (!st)
            st = st_writer_write(w, path, mk_fill, &ctx);
        st_writer_destroy(&w);
    }
    if (!st && ns > 1) {
        cJSON *j = cJSON_CreateObject();
        cJSON *meta = cJSON_AddObjectToObject(j, "metadata");
        cJSON_AddNumberToObject(meta, "total_size", (double)total);
        cJSON *map = cJSON_AddObjectToObject(j, "weight_map");
        for (int32_t i = 0; i < n; i++) {
            mk_shard_name(fname, sizeof fname, t[i].shard, ns);
            cJSON_AddStringToObject(map, t[i].name, fname);
        }
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        st = gm_json_write(j, path);
    }
out:
    free(t);
    free(local);
    return st;
}

int main(int argc, char **argv)
{
    mk_opts o;
    bool help = false;
    gm_status st = mk_parse(argc, argv, &o, &help);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (st) {
        fprintf(stderr, "gemma-mkmodel: %s\n", gm_last_error());
        usage(stderr);
        return 2;
    }
    if (o.threads == 0) {
        long np = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = np < 1 ? 1 : np > 1024 ? 1024 : (int32_t)np;
    }
    char *shipped = NULL;
    if (!o.corpus && !(o.corpus = shipped = gm_data_path("corpus.txt", GM_SOURCE_DIR))) {
        fprintf(stderr, "gemma-mkmodel: no corpus.txt found ($GEMMAD_DATA, share/gemmad beside the program, %s/data); "
                        "give --corpus FILE\n", GM_SOURCE_DIR);
        return 1;
    }
    char tok[4200];
    snprintf(tok, sizeof tok, "%s/tokenizer.model", o.out);
    int32_t tv = o.cfg.vocab_size < MK_TOK_VOCAB ? o.cfg.vocab_size : MK_TOK_VOCAB;
    if ((st = gm_mkdirs(o.out)) || (st = mk_config(&o, o.out)) || (st = gm_spm_train(o.corpus, tv, o.cfg.start_of_turn_id, tok)) ||
        (!o.config_only && (st = mk_weights(&o, o.out)))) {
        fprintf(stderr, "gemma-mkmodel: %s: %s\n", gm_status_str(st), gm_last_error());
        free(shipped);
        return 1;
    }
    free(shipped);
    return 0;
}
