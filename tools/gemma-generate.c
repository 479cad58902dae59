/* gemma-generate - offline generation, logits dumps and perplexity with one engine.
 *
 * stdout carries only the continuation (streamed through gm_gen_stream) and one
 * final "\n", or "perplexity: X"; everything else goes to stderr.
 * Exit status: 0 ok, 1 runtime error (model, tokenizer, engine), 2 bad usage. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/gen_stream.h"
#include "common/gguf_model.h"
#include "common/log.h"
#include "common/model_config.h"
#include "common/tokenizer.h"
#include "worker/engine.h"

#define LOGITS_BUDGET (32ll << 20) /* floats of logits per step when every row is wanted */
#define PREFILL_CHUNK 512          /* tokens per prefill step */

typedef struct gen_opts {
    const char *model, *prompt, *dump, *dump_tokens, *ppl;
    bool chat;
    int64_t max_tokens;   /* the most tokens to generate; 0 = until EOS or the context is full */
    bool prefill_only;    /* run the prompt (and --dump-logits), generate nothing */
    int64_t ppl_ctx;      /* --perplexity window length; 0 = the model's context */
    gm_sampling samp;
    gm_backend backend;
    int32_t kv_block;
    gm_quant quant;
    gm_kv_dtype kv_dtype;
    int lm_head_fp8;
    int32_t prefill_chunk; /* 0 = the default */
} gen_opts;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-generate --model PATH --prompt TEXT [options]\n"
            "       gemma-generate --model PATH --perplexity TEXTFILE [options]\n"
            "Generates a continuation of TEXT offline and prints only it on stdout, then one newline.\n\n"
            "  --model PATH         Hugging Face Gemma checkpoint directory, a Gemma .gguf file, or a\n"
            "                       directory holding one (dequantized at load)\n"
            "  --prompt TEXT        the prompt (BOS is prepended)\n"
            "  --chat               wrap the prompt in the Gemma chat template; stop at <end_of_turn>\n"
            "  --max-tokens N       the most tokens to generate (default 128); 0 = no limit: until EOS\n"
            "                       (or <end_of_turn> with --chat) or the context is full\n"
            "  --prefill-only       run the prompt only (with --dump-logits), generate nothing\n"
            "  --temperature T      0 = greedy (default 0)\n"
            "  --top-k K            keep the K most likely tokens (default 0 = all)\n"
            "  --top-p P            nucleus mass in (0, 1] (default 1)\n"
            "  --seed S             sampling seed (default 0)\n"
            "  --presence-penalty P   [-2, 2]: logit -= P for tokens already generated (OpenAI; default 0)\n"
            "  --frequency-penalty F  [-2, 2]: logit -= F x their count among the outputs (OpenAI; default 0)\n"
            "  --repetition-penalty R > 0: tokens of the prompt or the outputs have positive logits divided\n"
            "                       by R, negative ones multiplied (Hugging Face, vLLM; default 1 = off)\n"
            "  --min-tokens N       EOS (and <end_of_turn> with --chat) cannot be sampled before N tokens\n"
            "  --backend B          cpu or cuda (default cpu)\n"
            "  --dump-logits FILE   write float32 logits [prompt_tokens, vocab] of a teacher-forced\n"
            "                       pass over the prompt (BOS included), row-major\n"
            "  --dump-tokens FILE   write the prompt's token ids (BOS included) as raw int32\n"
            "  --perplexity FILE    score FILE's text in windows of --ctx tokens, each starting with\n"
            "                       BOS; prints `tokens: N windows: W ctx: C`, then `perplexity: X`\n"
            "  --ctx N              perplexity window length (default: the model's context)\n"
            "  --kv-block-size N    tokens per KV block (default 16)\n"
            "  --prefill-chunk N    at most N prompt tokens per engine step (default 512; 1 = decode steps)\n"
            "  --quant Q            none, fp8 or awq (default none)\n"
            "  --kv-dtype D         auto, bf16 or fp8 (default auto)\n"
            "  --lm-head T          bf16 or fp8: the LM head's weights and inputs in e4m3 (default bf16)\n"
            "  --help               this text\n"
            "Options take their value as --opt VALUE or --opt=VALUE.\n");
}

/* Returns 0, or 2 after printing why (exits 0 after --help). */
static int parse_args(int argc, char **argv, gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_tokens = 128;
    o->samp = GM_SAMPLING_GREEDY;
    o->kv_block = 16;
    int backend = 0, quant = 0, kv_dtype = 0, lm_head = 0;
    args_opt opts[] = {
        {"model", ARGS_STRING, &o->model},
        {"prompt", ARGS_STRING, &o->prompt},
        {"chat", ARGS_FLAG, &o->chat},
        {"max-tokens", ARGS_INT64, &o->max_tokens, 0, INT32_MAX},
        {"prefill-only", ARGS_FLAG, &o->prefill_only},
        {"temperature", ARGS_FLOAT, &o->samp.temperature, 0, 1e30},
        {"top-k", ARGS_INT, &o->samp.top_k, 0, INT32_MAX},
        {"top-p", ARGS_FLOAT, &o->samp.top_p, 1e-30, 1},
        {"seed", ARGS_UINT64, &o->samp.seed},
        {"presence-penalty", ARGS_FLOAT, &o->samp.presence_penalty, -2, 2},
        {"frequency-penalty", ARGS_FLOAT, &o->samp.frequency_penalty, -2, 2},
        {"repetition-penalty", ARGS_FLOAT, &o->samp.repetition_penalty, 1e-30, 1e30},
        {"min-tokens", ARGS_INT, &o->samp.min_tokens, 0, INT32_MAX},
        {"backend", ARGS_CHOICE, &backend, .choices = "cpu|cuda"},
        {"dump-logits", ARGS_STRING, &o->dump},
        {"dump-tokens", ARGS_STRING, &o->dump_tokens},
        {"perplexity", ARGS_STRING, &o->ppl},
        {"ctx", ARGS_INT64, &o->ppl_ctx, 2, INT32_MAX},
        {"kv-block-size", ARGS_INT, &o->kv_block, 1, 1 << 16},
        {"prefill-chunk", ARGS_INT, &o->prefill_chunk, 1, 1 << 20},
        {"quant", ARGS_CHOICE, &quant, .choices = "none|fp8|awq"},
        {"kv-dtype", ARGS_CHOICE, &kv_dtype, .choices = "auto|bf16|fp8"},
        {"lm-head", ARGS_CHOICE, &lm_head, .choices = "bf16|fp8"},
        {NULL},
    };
    args_spec spec = {"gemma-generate", opts};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        usage(stdout);
        exit(0);
    }
    if (rc != ARGS_OK)
        return 2;
    o->backend = backend == 1 ? GM_BACKEND_CUDA : GM_BACKEND_CPU;
    o->quant = quant == 1 ? GM_QUANT_FP8 : quant == 2 ? GM_QUANT_AWQ : GM_QUANT_NONE;
    o->kv_dtype = kv_dtype == 1 ? GM_KV_BF16 : kv_dtype == 2 ? GM_KV_FP8 : GM_KV_AUTO;
    o->lm_head_fp8 = lm_head == 1;
    if (!o->model) {
        fprintf(stderr, "gemma-generate: --model PATH is required (see --help)\n");
        return 2;
    }
    if (!o->prompt && !o->ppl) {
        fprintf(stderr, "gemma-generate: --prompt TEXT (or --perplexity FILE) is required (see --help)\n");
        return 2;
    }
    if (o->ppl_ctx && !o->ppl) {
        fprintf(stderr, "gemma-generate: --ctx sets the --perplexity window; give --perplexity FILE\n");
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

/* Tokens per step of a teacher-forced pass (every row's logits kept), at most --prefill-chunk. */
static int32_t rows_chunk(const gen_opts *o, const gm_model_config *cfg)
{
    int64_t c = LOGITS_BUDGET / cfg->vocab_size;
    c = c < 1 ? 1 : c > PREFILL_CHUNK ? PREFILL_CHUNK : c;
    return (int32_t)(o->prefill_chunk > 0 && o->prefill_chunk < c ? o->prefill_chunk : c);
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
    int64_t ctx = o->ppl_ctx > 0 ? o->ppl_ctx : cfg->max_position;
    if (ctx > cfg->max_position) {
        free(ids);
        fprintf(stderr, "gemma-generate: --ctx %lld exceeds the model's context of %d\n", (long long)ctx,
                cfg->max_position);
        return 2;
    }
    int32_t chunk = rows_chunk(o, cfg);
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
    int64_t count = 0, windows = 0;
    for (int64_t s = 0; s < n_ids; s += ctx - 1) {
        windows++;
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
    printf("tokens: %lld windows: %lld ctx: %lld\nperplexity: %.4f\n", (long long)count, (long long)windows,
           (long long)ctx, exp(nll / (double)count));
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
        gm_chat_format cf = {cfg->start_of_turn_id, cfg->end_of_turn_id, cfg->family == GM_FAMILY_GEMMA3};
        st = gm_tok_encode_chat_fmt(tok, &cf, &msg, 1, &ids, &n_ids);
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
    int64_t want = o->prefill_only ? 0 : o->max_tokens > 0 ? o->max_tokens : cfg->max_position;
    int64_t ctx = (int64_t)n_ids + want;
    if (ctx > cfg->max_position) {
        if (o->max_tokens > 0 && !o->prefill_only)
            GM_WARN("prompt (%d tokens) + --max-tokens %lld exceeds the context of %d; generation stops there",
                    n_ids, (long long)o->max_tokens, cfg->max_position);
        ctx = cfg->max_position;
    }
    int32_t chunk = o->dump ? rows_chunk(o, cfg) : o->prefill_chunk > 0 ? o->prefill_chunk : PREFILL_CHUNK;
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
    gm_gen_stream_set_stop_ids(gs, cfg->eos_id, cfg->end_of_turn_id);
    /* what min_tokens keeps from being sampled: the ids that end the output here (as gemmad's set) */
    gm_stop_set stops = {.n = 1, .ids = {cfg->eos_id}};
    if (o->chat)
        stops.ids[stops.n++] = cfg->end_of_turn_id;
    gm_sampling samp = o->samp;
    samp.n_prompt = n_ids; /* the penalties count outputs from here; min_tokens too */
    char buf[GM_DETOK_MAX_OUT];
    int64_t len = n_ids, produced = 0;
    int32_t next = -1;
    bool stop = false;
    if (want > 0 || o->dump) {
        for (int64_t p = 0; p < n_ids; p += chunk) {
            int32_t m = (int32_t)(n_ids - p < chunk ? n_ids - p : chunk);
            bool last = p + m == n_ids;
            int mode = o->dump ? GM_LOGITS_ALL : last ? GM_LOGITS_LAST : GM_LOGITS_NONE;
            gm_seq_step sq = {0, seq + p, m, (int32_t)p, bt, nbt, mode, samp, &stops};
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
    while (produced < want) {
        size_t n = gm_gen_stream_push(gs, next, buf, &stop);
        if (stop)
            break;
        fwrite(buf, 1, n, stdout);
        fflush(stdout);
        produced++;
        if (produced == want || len >= ctx)
            break;
        seq[len] = next;
        gm_seq_step sq = {0, seq + len, 1, (int32_t)len, bt, nbt, GM_LOGITS_LAST, samp, &stops};
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
    gm_checkpoint *ck = NULL; /* the config and tokenizer; the engine loads the weights */
    gm_status st = gm_checkpoint_open(o.model, 0, &ck);
    if (st)
        return fail_status("model", st);
    gm_model_config cfg = ck->cfg;
    gm_tokenizer *tok = NULL;
    st = gm_checkpoint_tokenizer(ck, &tok);
    gm_checkpoint_destroy(&ck);
    if (st)
        return fail_status("tokenizer", st);
    rc = o.ppl ? run_perplexity(&o, &cfg, tok) : run_generate(&o, &cfg, tok);
    gm_tok_destroy(&tok);
    return rc;
}
