/* gemma-generate - offline generation, logits dumps and perplexity with one engine.
 *
 * stdout carries only the continuation (streamed through gm_gen_stream) and one
 * final "\n", or "perplexity: X"; everything else goes to stderr.
 * Exit status: 0 ok, 1 runtime error (model, tokenizer, engine), 2 bad usage. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/gen_stream.h"
#include "common/log.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "worker/engine.h"

#define LOGITS_BUDGET (32ll << 20) /* floats of logits per step when every row is wanted */
#define PREFILL_CHUNK 512          /* tokens per prefill step */

typedef struct gen_opts {
    const char *model, *prompt, *dump, *dump_tokens, *ppl;
    bool chat;
    int64_t max_tokens;
    gm_sampling samp;
    gm_backend backend;
    int32_t kv_block;
    gm_quant quant;
    gm_kv_dtype kv_dtype;
    int lm_head_fp8;
} gen_opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-generate --model DIR --prompt TEXT [options]\n"
            "       gemma-generate --model DIR --perplexity TEXTFILE [options]\n"
            "Generates a continuation of TEXT offline and prints only it on stdout, then one newline.\n\n"
            "  --model DIR          Hugging Face Gemma checkpoint directory\n"
            "  --prompt TEXT        the prompt (BOS is prepended)\n"
            "  --chat               wrap the prompt in the Gemma chat template; stop at <end_of_turn>\n"
            "  --max-tokens N       most tokens to generate (default 128; 0 allowed)\n"
            "  --temperature T      0 = greedy (default 0)\n"
            "  --top-k K            keep the K most likely tokens (default 0 = all)\n"
            "  --top-p P            nucleus mass in (0, 1] (default 1)\n"
            "  --seed S             sampling seed (default 0)\n"
            "  --backend B          cpu or cuda (default cpu)\n"
            "  --dump-logits FILE   write float32 logits [prompt_tokens, vocab] of a teacher-forced\n"
            "                       pass over the prompt (BOS included), row-major\n"
            "  --dump-tokens FILE   write the prompt's token ids (BOS included) as raw int32\n"
            "  --perplexity FILE    print `perplexity: X` of FILE's text (context-sized windows,\n"
            "                       each starting with BOS)\n"
            "  --kv-block-size N    tokens per KV block (default 16)\n"
            "  --quant Q            none, fp8 or awq (default none)\n"
            "  --kv-dtype D         auto, bf16 or fp8 (default auto)\n"
            "  --lm-head T          bf16 or fp8: the LM head's weights and inputs in e4m3 (default bf16)\n"
            "  --help               this text\n");
}

static bool parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_f(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

/* Returns 0, or 2 after printing why. */
static int parse_args(int argc, char **argv, gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_tokens = 128;
    o->samp = GM_SAMPLING_GREEDY;
    o->backend = GM_BACKEND_CPU;
    o->kv_block = 16;
    enum { O_MODEL = 1, O_PROMPT, O_CHAT, O_MAXTOK, O_TEMP, O_TOPK, O_TOPP, O_SEED, O_BACKEND, O_DUMP, O_PPL,
           O_KVB, O_QUANT, O_KVD, O_DUMPTOK, O_LMH, O_HELP };
    static const struct option lo[] = { /* in enum order: error messages name lo[c - 1] */
        {"model", required_argument, 0, O_MODEL},        {"prompt", required_argument, 0, O_PROMPT},
        {"chat", no_argument, 0, O_CHAT},                {"max-tokens", required_argument, 0, O_MAXTOK},
        {"temperature", required_argument, 0, O_TEMP},   {"top-k", required_argument, 0, O_TOPK},
        {"top-p", required_argument, 0, O_TOPP},         {"seed", required_argument, 0, O_SEED},
        {"backend", required_argument, 0, O_BACKEND},    {"dump-logits", required_argument, 0, O_DUMP},
        {"perplexity", required_argument, 0, O_PPL},     {"kv-block-size", required_argument, 0, O_KVB},
        {"quant", required_argument, 0, O_QUANT},        {"kv-dtype", required_argument, 0, O_KVD},
        {"dump-tokens", required_argument, 0, O_DUMPTOK}, {"lm-head", required_argument, 0, O_LMH},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0},
    };
    int c;
    int64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        const char *a = optarg;
        switch (c) {
        case O_MODEL:
            o->model = a;
            break;
        case O_PROMPT:
            o->prompt = a;
            break;
        case O_CHAT:
            o->chat = true;
            break;
        case O_MAXTOK:
            if (!parse_i64(a, 0, INT32_MAX, &o->max_tokens))
                goto bad;
            break;
        case O_TEMP:
            if (!parse_f(a, &o->samp.temperature) || o->samp.temperature < 0)
                goto bad;
            break;
        case O_TOPK:
            if (!parse_i64(a, 0, INT32_MAX, &v))
                goto bad;
            o->samp.top_k = (int32_t)v;
            break;
        case O_TOPP:
            if (!parse_f(a, &o->samp.top_p) || !(o->samp.top_p > 0.0f) || o->samp.top_p > 1.0f)
                goto bad;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(a, &end, 10);
            if (errno || end == a || *end || a[0] == '-')
                goto bad;
            o->samp.seed = s;
            break;
        }
        case O_BACKEND: {
            int b = gm_backend_parse(a);
            if (b < 0 || b == GM_BACKEND_NULL)
                goto bad;
            o->backend = (gm_backend)b;
            break;
        }
        case O_DUMP:
            o->dump = a;
            break;
        case O_DUMPTOK:
            o->dump_tokens = a;
            break;
        case O_PPL:
            o->ppl = a;
            break;
        case O_KVB:
            if (!parse_i64(a, 1, 1 << 16, &v))
                goto bad;
            o->kv_block = (int32_t)v;
            break;
        case O_QUANT:
            if ((v = gm_quant_parse(a)) < 0)
                goto bad;
            o->quant = (gm_quant)v;
            break;
        case O_LMH:
            if (strcmp(a, "bf16") && strcmp(a, "fp8"))
                goto bad;
            o->lm_head_fp8 = !strcmp(a, "fp8");
            break;
        case O_KVD:
            if ((v = gm_kv_dtype_parse(a)) < 0)
                goto bad;
            o->kv_dtype = (gm_kv_dtype)v;
            break;
        case O_HELP:
            usage(stdout);
            exit(0);
        case '?':
        default:
            if (optopt && optopt < O_HELP + 1 && optopt > 0)
                fprintf(stderr, "gemma-generate: --%s needs a value\n", lo[optopt - 1].name);
            else
                fprintf(stderr, "gemma-generate: unknown option '%s'\n", argv[optind - 1]);
            fprintf(stderr, "try gemma-generate --help\n");
            return 2;
        }
        continue;
    bad:
        fprintf(stderr, "gemma-generate: --%s: bad value '%s'\n", lo[c - 1].name, a);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "gemma-generate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->model) {
        fprintf(stderr, "gemma-generate: --model DIR is required (try --help)\n");
        return 2;
    }
    if (!o->prompt && !o->ppl) {
        fprintf(stderr, "gemma-generate: --prompt TEXT (or --perplexity FILE) is required (try --help)\n");
        return 2;
    }
    return 0;
}

static int fail_status(const char *what, gm_status st)
{
    const char *d = gm_last_error();
    fprintf(stderr, "gemma-generate: %s: %s%s%s\n", what, gm_status_str(st), d && *d ? ": " : "", d ? d : "");
    return 1;
}

/* An engine for one sequence of at most ctx tokens, steps of at most chunk tokens: explicit
 * sizes, so the sizing rule (ctl/sizing.h, applied by gm_engine_create as in gemma-worker)
 * keeps them; what it decided is logged at debug level. */
static gm_status make_engine(const gen_opts *o, int64_t ctx, int32_t chunk, gm_engine **e)
{
    gm_engine_opts eo;
    gm_engine_opts_init(&eo);
    eo.backend = o->backend;
    eo.model_dir = o->model;
    eo.kv_block_size = o->kv_block;
    eo.kv_num_blocks = (ctx + o->kv_block - 1) / o->kv_block;
    if (eo.kv_num_blocks < 1)
        eo.kv_num_blocks = 1;
    eo.max_seqs = 1;
    eo.max_tokens = chunk;
    eo.max_context = (int32_t)ctx;
    eo.quant = o->quant;
    eo.kv_dtype = o->kv_dtype;
    eo.lm_head_fp8 = o->lm_head_fp8;
    gm_status st = gm_engine_create(&eo, e);
    if (st == GM_OK) {
        const gm_sizing *z = &(*e)->sizing;
        GM_DEBUG("KV pool: %lld blocks: %s", (long long)z->kv_num_blocks, z->why_kv);
        GM_DEBUG("max_seqs %d: %s; max_tokens %d: %s; max_context %d: %s", z->max_seqs, z->why_seqs, z->max_tokens,
                 z->why_tokens, z->max_context, z->why_context);
    }
    return st;
}

/* Steps per token count for teacher-forced passes: every row's logits are kept. */
static int32_t rows_chunk(const gm_model_config *cfg)
{
    int64_t c = LOGITS_BUDGET / cfg->vocab_size;
    return (int32_t)(c < 1 ? 1 : c > PREFILL_CHUNK ? PREFILL_CHUNK : c);
}

static int run_perplexity(const gen_opts *o, const gm_model_config *cfg, const gm_tokenizer *tok)
{
    FILE *f = fopen(o->ppl, "rb");
    if (!f) {
        fprintf(stderr, "gemma-generate: --perplexity %s: %s\n", o->ppl, strerror(errno));
        return 1;
    }
    size_t cap = 1 << 16, len = 0, n;
    char *text = malloc(cap);
    while (text && (n = fread(text + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            char *t2 = realloc(text, cap *= 2);
            if (!t2)
                free(text);
            text = t2;
        }
    }
    bool rerr = ferror(f);
    fclose(f);
    if (!text || rerr) {
        free(text);
        fprintf(stderr, "gemma-generate: --perplexity %s: read failed\n", o->ppl);
        return 1;
    }
    int32_t *ids = NULL, n_ids = 0;
    gm_status st = gm_tok_encode(tok, text, len, false, &ids, &n_ids);
    free(text);
    if (st)
        return fail_status("tokenize", st);
    if (n_ids < 1) {
        free(ids);
        fprintf(stderr, "gemma-generate: --perplexity %s: no tokens to score\n", o->ppl);
        return 1;
    }
    int64_t ctx = cfg->max_position;
    int32_t chunk = rows_chunk(cfg);
    gm_engine *e = NULL;
    if ((st = make_engine(o, ctx, chunk, &e))) {
        free(ids);
        return fail_status("engine", st);
    }
    int64_t V = cfg->vocab_size;
    float *lg = malloc((size_t)chunk * (size_t)V * sizeof(float));
    int32_t *win = malloc((size_t)ctx * sizeof(int32_t));
    int32_t *bt = malloc((size_t)((ctx + o->kv_block - 1) / o->kv_block) * sizeof(int32_t));
    int rc = 0;
    if (!lg || !win || !bt) {
        fprintf(stderr, "gemma-generate: out of memory\n");
        rc = 1;
        goto done;
    }
    int32_t nbt = (int32_t)((ctx + o->kv_block - 1) / o->kv_block);
    for (int32_t i = 0; i < nbt; i++)
        bt[i] = i;
    double nll = 0.0;
    int64_t count = 0;
    for (int64_t s = 0; s < n_ids; s += ctx - 1) {
        int64_t nt = n_ids - s < ctx - 1 ? n_ids - s : ctx - 1, wn = nt + 1;
        win[0] = GM_TOK_BOS;
        memcpy(win + 1, ids + s, (size_t)nt * sizeof(int32_t));
        for (int64_t p = 0; p < wn - 1; p += chunk) { /* the last position predicts nothing */
            int32_t m = (int32_t)(wn - 1 - p < chunk ? wn - 1 - p : chunk);
            gm_seq_step sq = {0, win + p, m, (int32_t)p, bt, nbt, GM_LOGITS_ALL, GM_SAMPLING_GREEDY};
            int32_t tk;
            gm_step_out out = {&tk, lg, chunk};
            if ((st = gm_engine_step(e, &sq, 1, &out))) {
                rc = fail_status("step", st);
                goto done;
            }
            for (int32_t r = 0; r < m; r++) {
                const float *row = lg + (int64_t)r * V;
                double mx = row[0], sum = 0.0;
                for (int64_t j = 1; j < V; j++)
                    mx = row[j] > mx ? row[j] : mx;
                for (int64_t j = 0; j < V; j++)
                    sum += exp((double)row[j] - mx);
                nll += mx + log(sum) - (double)row[win[p + r + 1]];
                count++;
            }
        }
    }
    printf("perplexity: %.4f\n", exp(nll / (double)count));
    GM_INFO("%lld tokens scored in windows of %lld", (long long)count, (long long)ctx);
done:
    free(lg), free(win), free(bt), free(ids);
    gm_engine_destroy(&e);
    return rc;
}

static int run_generate(const gen_opts *o, const gm_model_config *cfg, const gm_tokenizer *tok)
{
    int32_t *ids = NULL, n_ids = 0;
    gm_status st;
    if (o->chat) {
        gm_chat_msg msg = {"user", o->prompt};
        st = gm_tok_encode_chat(tok, &msg, 1, &ids, &n_ids);
    } else {
        st = gm_tok_encode(tok, o->prompt, strlen(o->prompt), true, &ids, &n_ids);
    }
    if (st)
        return fail_status("tokenize", st);
    if (n_ids > cfg->max_position) {
        free(ids);
        fprintf(stderr, "gemma-generate: the prompt has %d tokens; the model's context is %d\n", n_ids,
                cfg->max_position);
        return 1;
    }
    if (o->dump_tokens) {
        FILE *tf = fopen(o->dump_tokens, "wb");
        bool ok = tf && fwrite(ids, sizeof(int32_t), (size_t)n_ids, tf) == (size_t)n_ids;
        if (tf && fclose(tf) != 0)
            ok = false;
        if (!ok) {
            free(ids);
            fprintf(stderr, "gemma-generate: --dump-tokens %s: write failed\n", o->dump_tokens);
            return 1;
        }
    }
    int64_t ctx = (int64_t)n_ids + o->max_tokens;
    if (ctx > cfg->max_position) {
        GM_WARN("prompt (%d tokens) + --max-tokens %lld exceeds the context of %d; generation stops there", n_ids,
                (long long)o->max_tokens, cfg->max_position);
        ctx = cfg->max_position;
    }
    int32_t chunk = o->dump ? rows_chunk(cfg) : PREFILL_CHUNK;
    int32_t nbt = (int32_t)((ctx + o->kv_block - 1) / o->kv_block);
    int32_t *seq = malloc((size_t)ctx * sizeof(int32_t));
    int32_t *bt = malloc((size_t)nbt * sizeof(int32_t));
    float *lg = o->dump ? malloc((size_t)chunk * (size_t)cfg->vocab_size * sizeof(float)) : NULL;
    FILE *df = NULL;
    gm_engine *e = NULL;
    gm_gen_stream *gs = NULL;
    int rc = 0;
    if (!seq || !bt || (o->dump && !lg)) {
        fprintf(stderr, "gemma-generate: out of memory\n");
        rc = 1;
        goto done;
    }
    memcpy(seq, ids, (size_t)n_ids * sizeof(int32_t));
    for (int32_t i = 0; i < nbt; i++)
        bt[i] = i;
    if ((st = make_engine(o, ctx, chunk, &e))) {
        rc = fail_status("engine", st);
        goto done;
    }
    if (o->dump && !(df = fopen(o->dump, "wb"))) {
        fprintf(stderr, "gemma-generate: --dump-logits %s: %s\n", o->dump, strerror(errno));
        rc = 1;
        goto done;
    }
    gs = gm_gen_stream_new(tok, o->chat);
    if (!gs) {
        fprintf(stderr, "gemma-generate: out of memory\n");
        rc = 1;
        goto done;
    }
    char buf[GM_DETOK_MAX_OUT];
    int64_t len = n_ids, produced = 0;
    int32_t next = -1;
    bool stop = false;
    if (o->max_tokens > 0 || o->dump) {
        for (int64_t p = 0; p < n_ids; p += chunk) {
            int32_t m = (int32_t)(n_ids - p < chunk ? n_ids - p : chunk);
            bool last = p + m == n_ids;
            int mode = o->dump ? GM_LOGITS_ALL : last ? GM_LOGITS_LAST : GM_LOGITS_NONE;
            gm_seq_step sq = {0, seq + p, m, (int32_t)p, bt, nbt, mode, o->samp};
            gm_step_out out = {&next, lg, lg ? chunk : 0};
            if ((st = gm_engine_step(e, &sq, 1, &out))) {
                rc = fail_status("prefill", st);
                goto done;
            }
            if (df && fwrite(lg, sizeof(float) * (size_t)cfg->vocab_size, (size_t)m, df) != (size_t)m) {
                fprintf(stderr, "gemma-generate: --dump-logits %s: write failed\n", o->dump);
                rc = 1;
                goto done;
            }
        }
    }
    while (produced < o->max_tokens) {
        size_t n = gm_gen_stream_push(gs, next, buf, &stop);
        if (stop)
            break;
        fwrite(buf, 1, n, stdout);
        fflush(stdout);
        produced++;
        if (produced == o->max_tokens || len >= ctx)
            break;
        seq[len] = next;
        gm_seq_step sq = {0, seq + len, 1, (int32_t)len, bt, nbt, GM_LOGITS_LAST, o->samp};
        gm_step_out out = {&next, NULL, 0};
        if ((st = gm_engine_step(e, &sq, 1, &out))) {
            rc = fail_status("decode", st);
            goto done;
        }
        len++;
    }
    size_t n = gm_gen_stream_finish(gs, buf);
    fwrite(buf, 1, n, stdout);
    fputs("\n", stdout);
    fflush(stdout);
    GM_INFO("prompt %d tokens, generated %lld%s", n_ids, (long long)produced, stop ? " (stop token)" : "");
done:
    if (df && fclose(df) != 0 && rc == 0) {
        fprintf(stderr, "gemma-generate: --dump-logits %s: write failed\n", o->dump);
        rc = 1;
    }
    gm_gen_stream_destroy(&gs);
    gm_engine_destroy(&e);
    free(seq), free(bt), free(lg), free(ids);
    return rc;
}

int main(int argc, char **argv)
{
    gen_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc;
    gm_log_init("gemma-generate", GM_LOG_INFO);
    gm_model_config cfg;
    gm_status st = gm_config_load_dir(o.model, &cfg);
    if (st)
        return fail_status("model", st);
    size_t pl = strlen(o.model) + 32;
    char *tpath = malloc(pl);
    if (!tpath)
        return 1;
    snprintf(tpath, pl, "%s/tokenizer.model", o.model);
    gm_tokenizer *tok = NULL;
    st = gm_tok_load(tpath, &tok);
    free(tpath);
    if (st)
        return fail_status("tokenizer", st);
    rc = o.ppl ? run_perplexity(&o, &cfg, tok) : run_generate(&o, &cfg, tok);
    gm_tok_destroy(&tok);
    return rc;
}
