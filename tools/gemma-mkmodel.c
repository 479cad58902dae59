/* gemma-mkmodel.c - write a random-weight Gemma checkpoint in Hugging Face layout.
 *
 * DIR/config.json, generation_config.json, tokenizer.model (sentencepiece BPE
 * trained from data/corpus.txt) and model.safetensors, or model-0000i-of-0000N
 * shards with model.safetensors.index.json. Element e of tensor t is a pure
 * function of (seed, t, e): a counter-based hash feeding Box-Muller, so the
 * bytes are identical whatever the thread count or the sharding. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dtype.h"
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
            "usage: gemma-mkmodel --preset tiny|2b|7b --out DIR [options]\n"
            "Writes a Gemma checkpoint with random weights in Hugging Face layout:\n"
            "config.json, generation_config.json, tokenizer.model and model.safetensors\n"
            "(or N shards with model.safetensors.index.json).\n\n"
            "  --preset P          tiny (4 layers, hidden 128, a few MB), 2b or 7b (real shapes)\n"
            "  --out DIR           output directory (created if missing)\n"
            "  --seed N            random seed (default 0); same seed, same bytes\n"
            "  --dtype D           bf16, f16 or f32 (default bf16)\n"
            "  --shards N          number of safetensors files (default: 1 for tiny, ~4 GB each otherwise)\n"
            "  --layers N --heads N --kv-heads N --hidden N --intermediate N --head-dim N --vocab N\n"
            "                      override the preset's shape (vocab >= %d)\n"
            "  --corpus FILE       tokenizer training text (default %s/data/corpus.txt)\n"
            "  --threads N         generator threads (default: all CPUs; output does not depend on it)\n"
            "  --help              this text\n",
            MK_MIN_VOCAB, GM_SOURCE_DIR);
}

/* Fill cfg with a preset's shape; false if the name is unknown. */
static bool mk_preset(const char *name, gm_model_config *c)
{
    memset(c, 0, sizeof *c);
    c->rope_theta = 10000.0f;
    c->rms_norm_eps = 1e-6f;
    c->bos_id = 2;
    c->eos_id = 1;
    c->pad_id = 0;
    c->vocab_size = 256000;
    c->max_position = 8192;
    c->head_dim = 256;
    if (strcmp(name, "tiny") == 0) {
        c->vocab_size = 4096;
        c->hidden_size = 128;
        c->intermediate_size = 512;
        c->num_layers = 4;
        c->num_heads = 4;
        c->num_kv_heads = 2;
        c->head_dim = 32;
        c->max_position = 1024;
    } else if (strcmp(name, "2b") == 0) {
        c->hidden_size = 2048;
        c->intermediate_size = 16384;
        c->num_layers = 18;
        c->num_heads = 8;
        c->num_kv_heads = 1;
    } else if (strcmp(name, "7b") == 0) {
        c->hidden_size = 3072;
        c->intermediate_size = 24576;
        c->num_layers = 28;
        c->num_heads = 16;
        c->num_kv_heads = 16;
    } else {
        return false;
    }
    return true;
}

/* Parse a positive int flag value. */
static gm_status mk_int(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return gm_fail(GM_ERR_INVALID_ARG, "%s: '%s' is not an integer in [%lld, %lld]", flag, s, (long long)lo,
                       (long long)hi);
    *out = v;
    return GM_OK;
}

enum { OPT_PRESET = 1, OPT_OUT, OPT_SEED, OPT_DTYPE, OPT_SHARDS, OPT_LAYERS, OPT_KV, OPT_HEADS, OPT_HIDDEN,
       OPT_INTER, OPT_HDIM, OPT_VOCAB, OPT_CORPUS, OPT_THREADS, OPT_HELP };

/* Parse argv into o. Returns GM_OK, or an error; *help set when --help was given. */
static gm_status mk_parse(int argc, char **argv, mk_opts *o, bool *help)
{
    static const struct option lo[] = {
        {"preset", required_argument, 0, OPT_PRESET}, {"out", required_argument, 0, OPT_OUT},
        {"seed", required_argument, 0, OPT_SEED},     {"dtype", required_argument, 0, OPT_DTYPE},
        {"shards", required_argument, 0, OPT_SHARDS}, {"layers", required_argument, 0, OPT_LAYERS},
        {"kv-heads", required_argument, 0, OPT_KV},   {"heads", required_argument, 0, OPT_HEADS},
        {"hidden", required_argument, 0, OPT_HIDDEN}, {"intermediate", required_argument, 0, OPT_INTER},
        {"head-dim", required_argument, 0, OPT_HDIM}, {"vocab", required_argument, 0, OPT_VOCAB},
        {"corpus", required_argument, 0, OPT_CORPUS}, {"threads", required_argument, 0, OPT_THREADS},
        {"help", no_argument, 0, OPT_HELP},           {0, 0, 0, 0},
    };
    /* shape overrides, applied after the preset: -1 = not given */
    int64_t ov[OPT_VOCAB + 1];
    for (int i = 0; i <= OPT_VOCAB; i++)
        ov[i] = -1;
    const char *dtype = "bf16";
    memset(o, 0, sizeof *o);
    o->corpus = GM_SOURCE_DIR "/data/corpus.txt";
    *help = false;
    opterr = 0;
    optind = 1;
    int c;
    gm_status st = GM_OK;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        int64_t v = 0;
        switch (c) {
        case OPT_PRESET: o->preset = optarg; break;
        case OPT_OUT: o->out = optarg; break;
        case OPT_DTYPE: dtype = optarg; break;
        case OPT_CORPUS: o->corpus = optarg; break;
        case OPT_HELP: *help = true; return GM_OK;
        case OPT_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end || optarg[0] == '-')
                return gm_fail(GM_ERR_INVALID_ARG, "--seed: '%s' is not a non-negative integer", optarg);
            o->seed = s;
            break;
        }
        case OPT_SHARDS:
            if ((st = mk_int("--shards", optarg, 1, 99999, &v)))
                return st;
            o->shards = (int32_t)v;
            break;
        case OPT_THREADS:
            if ((st = mk_int("--threads", optarg, 1, 1024, &v)))
                return st;
            o->threads = (int32_t)v;
            break;
        case OPT_LAYERS: case OPT_KV: case OPT_HEADS: case OPT_HIDDEN: case OPT_INTER: case OPT_HDIM:
        case OPT_VOCAB:
            if ((st = mk_int(lo[c - 1].name, optarg, 1, 1 << 24, &v)))
                return gm_fail(GM_ERR_INVALID_ARG, "--%s: '%s' is not an integer in [1, %d]", lo[c - 1].name,
                               optarg, 1 << 24);
            ov[c] = v;
            break;
        case '?':
        default:
            if (optopt)
                return gm_fail(GM_ERR_INVALID_ARG, "option needs a value or is unknown: %s", argv[optind - 1]);
            return gm_fail(GM_ERR_INVALID_ARG, "unknown option: %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return gm_fail(GM_ERR_INVALID_ARG, "unexpected argument: %s", argv[optind]);
    if (!o->preset)
        return gm_fail(GM_ERR_INVALID_ARG, "--preset is required (tiny, 2b or 7b)");
    if (!o->out)
        return gm_fail(GM_ERR_INVALID_ARG, "--out DIR is required");
    if (!mk_preset(o->preset, &o->cfg))
        return gm_fail(GM_ERR_INVALID_ARG, "--preset: unknown preset '%s' (expected tiny, 2b or 7b)", o->preset);
    gm_model_config *m = &o->cfg;
    if (ov[OPT_LAYERS] > 0) m->num_layers = (int32_t)ov[OPT_LAYERS];
    if (ov[OPT_KV] > 0) m->num_kv_heads = (int32_t)ov[OPT_KV];
    if (ov[OPT_HEADS] > 0) m->num_heads = (int32_t)ov[OPT_HEADS];
    if (ov[OPT_HIDDEN] > 0) m->hidden_size = (int32_t)ov[OPT_HIDDEN];
    if (ov[OPT_INTER] > 0) m->intermediate_size = (int32_t)ov[OPT_INTER];
    if (ov[OPT_HDIM] > 0) m->head_dim = (int32_t)ov[OPT_HDIM];
    if (ov[OPT_VOCAB] > 0) m->vocab_size = (int32_t)ov[OPT_VOCAB];
    gm_config_set_gemma1(m); /* after the shape overrides: the attention scale follows head_dim */
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
    int32_t cap = 2 + 9 * c->num_layers;
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
        mk_add(t, n, L("self_attn.o_proj"), h, q, 0.02f, dt);
        mk_add(t, n, L("post_attention_layernorm"), h, 0, 0.1f, dt);
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


/* Write a cJSON tree to path, pretty-printed. Frees j. */
static gm_status mk_write_json(cJSON *j, const char *path)
{
    char *s = j ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!s)
        return gm_fail(GM_ERR_NOMEM, "%s: cannot build JSON", path);
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(s);
        return gm_fail(GM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    }
    size_t n = strlen(s);
    bool ok = fwrite(s, 1, n, f) == n && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    free(s);
    return ok ? GM_OK : gm_fail(GM_ERR_IO, "%s: write failed", path);
}

static gm_status mk_config(const mk_opts *o, const char *dir)
{
    const gm_model_config *c = &o->cfg;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *j = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("GemmaForCausalLM"));
    cJSON_AddBoolToObject(j, "attention_bias", 0);
    cJSON_AddNumberToObject(j, "attention_dropout", 0.0);
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    cJSON_AddNumberToObject(j, "eos_token_id", c->eos_id);
    cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
    cJSON_AddStringToObject(j, "hidden_act", "gelu_pytorch_tanh");
    cJSON_AddStringToObject(j, "hidden_activation", "gelu_pytorch_tanh");
    cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(j, "initializer_range", 0.02);
    cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position);
    cJSON_AddStringToObject(j, "model_type", "gemma");
    cJSON_AddNumberToObject(j, "num_attention_heads", c->num_heads);
    cJSON_AddNumberToObject(j, "num_hidden_layers", c->num_layers);
    cJSON_AddNumberToObject(j, "num_key_value_heads", c->num_kv_heads);
    cJSON_AddNumberToObject(j, "pad_token_id", c->pad_id);
    cJSON_AddNumberToObject(j, "rms_norm_eps", 1e-6);
    cJSON_AddNullToObject(j, "rope_scaling");
    cJSON_AddNumberToObject(j, "rope_theta", 10000.0);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", 1);
    cJSON_AddStringToObject(j, "torch_dtype", c->torch_dtype);
    cJSON_AddStringToObject(j, "transformers_version", "4.38.0");
    cJSON_AddBoolToObject(j, "use_cache", 1);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    gm_status st = mk_write_json(j, path);
    if (st)
        return st;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "_from_model_config", 1);
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_id);
    cJSON_AddNumberToObject(j, "eos_token_id", c->eos_id);
    cJSON_AddNumberToObject(j, "pad_token_id", c->pad_id);
    cJSON_AddStringToObject(j, "transformers_version", "4.38.0");
    return mk_write_json(j, path);
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
        ns = strcmp(o->preset, "tiny") == 0 ? 1 : (int32_t)((total + MK_SHARD_BYTES - 1) / MK_SHARD_BYTES);
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
        st = mk_write_json(j, path);
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
    char tok[4200];
    snprintf(tok, sizeof tok, "%s/tokenizer.model", o.out);
    int32_t tv = o.cfg.vocab_size < MK_TOK_VOCAB ? o.cfg.vocab_size : MK_TOK_VOCAB;
    if ((st = gm_mkdirs(o.out)) || (st = mk_config(&o, o.out)) || (st = gm_spm_train(o.corpus, tv, tok)) ||
        (st = mk_weights(&o, o.out))) {
        fprintf(stderr, "gemma-mkmodel: %s: %s\n", gm_status_str(st), gm_last_error());
        return 1;
    }
    return 0;
}
