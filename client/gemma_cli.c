/* gemma_cli.c - gemma-cli: one generation, a health probe or the stats of a running gemmad. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/gemma_client.h"
#include "common/args.h"
#include "common/jsonw.h"

#define CLI_MAX_STOP 16
#define CLI_MAX_STOP_IDS 64

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-cli [options] [PROMPT]\n"
            "Send PROMPT (or stdin when none is given) to gemmad and print the continuation,\n"
            "then one newline. Errors go to stderr with the daemon's typed code; exit status 1.\n"
            "\n"
            "  --endpoint E       gemmad endpoint (default $GEMMAD_ENDPOINT or tcp://127.0.0.1:5555)\n"
            "  --chat             format PROMPT as one user turn of Gemma's chat template\n"
            "  --max-tokens N     the most tokens to generate (default 128); 0 = no limit: until EOS,\n"
            "                     a stop string or id, or the context is full (as in gemma.proto)\n"
            "  --temperature T    0 = greedy (default)\n"
            "  --top-k K          0 = off (default)\n"
            "  --top-p P          (0, 1], default 1\n"
            "  --seed S           sampling seed (default 0)\n"
            "  --stop STR         stop string (repeatable, up to %d)\n"
            "  --stop-id ID       stop token id (repeatable)\n"
            "  --ignore-eos       do not stop at EOS\n"
            "  --presence-penalty P   [-2, 2]: lower the logits of tokens already generated (OpenAI)\n"
            "  --frequency-penalty F  [-2, 2]: lower them by F times their count so far (OpenAI)\n"
            "  --repetition-penalty R > 0: the logits of tokens of the prompt or the output: positive ones\n"
            "                     divided by R, negative ones multiplied (Hugging Face, vLLM; 1 = off)\n"
            "  --min-tokens N     EOS, stop ids and stop strings cannot end the output before N tokens\n"
            "  --speculative-tokens K  speculative decoding by prompt lookup: K (1..16) tokens drafted\n"
            "                     per step; 0 = gemmad's default, -1 = off (docs/SPECULATIVE.md)\n"
            "  --logprobs N       ask for each token's log-probability and its N (0..20) most likely\n"
            "                     alternatives (--top-logprobs N is the same)\n"
            "  --print-logprobs   print one JSON line per generated token instead of the text:\n"
            "                     {\"id\", \"token\", \"logprob\", \"top_logprobs\": [{\"id\", \"token\", \"logprob\"}]}\n"
            "                     (--logprobs 0 unless given)\n"
            "  --beam-width W     beam search over W (2..8) hypotheses; prints the best one (implies\n"
            "                     --no-stream; greedy only)\n"
            "  --length-penalty L the score of a hypothesis is sum logprob / tokens^L (default 1)\n"
            "  --early-stopping   end the search once W hypotheses are finished\n"
            "  --tokens           PROMPT is a list of token ids (\"2,651,6037\"), used verbatim\n"
            "  --print-ids        print the generated token ids (space separated) instead of text\n"
            "  --no-stream        ask for one final reply instead of a stream\n"
            "  --timeout MS       give up after MS milliseconds (default: connect 10000, generate none)\n"
            "  --server-key F     CurveZMQ: the server's public key file NAME.key (gemma-keygen)\n"
            "  --client-key F     CurveZMQ: this client's NAME.key_secret (its public key must be\n"
            "                     in the server's curve_allow)\n"
            "  --health           exit 0 when gemmad is ready to serve (prints its state)\n"
            "  --stats            print gemmad's statistics\n"
            "  --help             this text\n"
            "Options take their value as --opt VALUE or --opt=VALUE.\n",
            CLI_MAX_STOP);
}

static char *read_stdin(size_t *len)
{
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    if (!b)
        return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return NULL;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0)
            break;
    }
    b[n] = 0;
    *len = n;
    return b;
}

typedef struct cli_lists {
    const char **stops;
    int n_stops;
    int32_t *ids;
    int n_ids;
} cli_lists;

static gm_status cli_add_stop(void *ctx, const char *v)
{
    cli_lists *l = ctx;
    if (l->n_stops == CLI_MAX_STOP)
        return gm_fail(GM_ERR_INVALID_ARG, "at most %d stop strings", CLI_MAX_STOP);
    l->stops[l->n_stops++] = v;
    return GM_OK;
}

static gm_status cli_add_stop_id(void *ctx, const char *v)
{
    cli_lists *l = ctx;
    int64_t n;
    if (!args_parse_i64(v, 0, INT32_MAX, &n))
        return gm_fail(GM_ERR_INVALID_ARG, "not a token id");
    if (l->n_ids == CLI_MAX_STOP_IDS)
        return gm_fail(GM_ERR_INVALID_ARG, "at most %d stop ids", CLI_MAX_STOP_IDS);
    l->ids[l->n_ids++] = (int32_t)n;
    return GM_OK;
}

/* "2,651 6037" -> ids; false on a bad entry. */
static bool parse_ids(const char *s, int32_t **ids, int32_t *n)
{
    size_t cap = 16;
    *n = 0;
    *ids = malloc(cap * sizeof(int32_t));
    if (!*ids)
        return false;
    while (*s) {
        while (*s == ',' || *s == ' ' || *s == '\n' || *s == '\t')
            s++;
        if (!*s)
            break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v > INT32_MAX)
            return false;
        if ((size_t)*n == cap) {
            int32_t *ni = realloc(*ids, cap * 2 * sizeof(int32_t));
            if (!ni)
                return false;
            *ids = ni;
            cap *= 2;
        }
        (*ids)[(*n)++] = (int32_t)v;
        s = end;
    }
    return true;
}

typedef struct cli_out {
    bool print_ids, print_logprobs;
    bool any;
    jsonw w;
} cli_out;

/* One JSON line per token: its id, string, log-probability and alternatives. */
static void print_logprobs(cli_out *o, const gmc_event *ev)
{
    for (int32_t i = 0; i < ev->n_logprobs && i < ev->n_tokens; i++) {
        const gmc_logprob *lp = &ev->logprobs[i];
        jsonw *w = &o->w;
        jsonw_reset(w);
        jsonw_obj_begin(w);
        jsonw_key(w, "id");
        jsonw_int(w, ev->tokens[i]);
        jsonw_key(w, "token");
        jsonw_strn(w, lp->token.data, lp->token.len);
        jsonw_key(w, "logprob");
        jsonw_num(w, lp->logprob);
        jsonw_key(w, "top_logprobs");
        jsonw_arr_begin(w);
        for (int32_t k = 0; k < lp->n_top; k++) {
            jsonw_obj_begin(w);
            jsonw_key(w, "id");
            jsonw_int(w, lp->top_ids[k]);
            jsonw_key(w, "token");
            if (lp->top_tokens)
                jsonw_strn(w, lp->top_tokens[k].data, lp->top_tokens[k].len);
            else
                jsonw_null(w);
            jsonw_key(w, "logprob");
            jsonw_num(w, lp->top_logprobs[k]);
            jsonw_obj_end(w);
        }
        jsonw_arr_end(w);
        jsonw_obj_end(w);
        jsonw_raw(w, "\n", 1);
        if (jsonw_ok(w))
            fwrite(w->p, 1, w->len, stdout);
    }
}

static void on_chunk(const gmc_event *ev, void *arg)
{
    cli_out *o = arg;
    if (o->print_logprobs) {
        print_logprobs(o, ev);
    } else if (o->print_ids) {
        for (int32_t i = 0; i < ev->n_tokens; i++) {
            printf("%s%d", o->any ? " " : "", ev->tokens[i]);
            o->any = true;
        }
    } else if (ev->text_len) {
        fwrite(ev->text, 1, ev->text_len, stdout);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *endpoint = getenv("GEMMAD_ENDPOINT");
    if (!endpoint || !*endpoint)
        endpoint = "tcp://127.0.0.1:5555";
    gmc_params p;
    gmc_params_init(&p);
    p.max_tokens = 128;
    const char *stops[CLI_MAX_STOP];
    int32_t stop_ids[CLI_MAX_STOP_IDS];
    int n_stops = 0, n_stop_ids = 0;
    bool chat = false, health = false, stats = false, tokens = false, print_ids = false, print_lp = false;
    int64_t timeout = 0;
    const char *prompt = NULL;
    gmc_connect_opts co;
    gmc_connect_opts_init(&co);

    cli_lists lists = {stops, 0, stop_ids, 0};
    int32_t max_tokens = 128, top_k = 0, logprobs = -1;
    float top_p = 1.0f;
    const char *positional[1];
    int n_pos = 0;
    args_opt opts[] = {
        {"endpoint", ARGS_STRING, &endpoint},
        {"chat", ARGS_FLAG, &chat},
        {"max-tokens", ARGS_INT, &max_tokens, 0, INT32_MAX},
        /* sampling values are judged by gemmad, which answers INVALID_ARGUMENT with the reason */
        {"temperature", ARGS_FLOAT, &p.temperature},
        {"top-k", ARGS_INT, &top_k},
        {"top-p", ARGS_FLOAT, &top_p},
        {"seed", ARGS_UINT64, &p.seed},
        {"stop", ARGS_CALL, .call = cli_add_stop, .ctx = &lists},
        {"stop-id", ARGS_CALL, .call = cli_add_stop_id, .ctx = &lists},
        {"ignore-eos", ARGS_FLAG, &p.ignore_eos},
        {"presence-penalty", ARGS_FLOAT, &p.presence_penalty},
        {"frequency-penalty", ARGS_FLOAT, &p.frequency_penalty},
        {"repetition-penalty", ARGS_FLOAT, &p.repetition_penalty},
        {"min-tokens", ARGS_INT, &p.min_tokens, 0, INT32_MAX},
        {"speculative-tokens", ARGS_INT, &p.speculative_tokens, -1, 16},
        {"logprobs", ARGS_INT, &logprobs, 0, 20},
        {"top-logprobs", ARGS_INT, &logprobs, 0, 20},
        {"print-logprobs", ARGS_FLAG, &print_lp},
        {"beam-width", ARGS_INT, &p.beam_width, 0, 64},
        {"length-penalty", ARGS_FLOAT, &p.length_penalty},
        {"early-stopping", ARGS_FLAG, &p.early_stopping},
        {"tokens", ARGS_FLAG, &tokens},
        {"print-ids", ARGS_FLAG, &print_ids},
        {"stream", ARGS_FLAG, &p.stream, .negatable = true},
        {"timeout", ARGS_INT64, &timeout, 0, INT32_MAX},
        {"server-key", ARGS_STRING, &co.server_key_file},
        {"client-key", ARGS_STRING, &co.client_key_file},
        {"health", ARGS_FLAG, &health},
        {"stats", ARGS_FLAG, &stats},
        {NULL},
    };
    args_spec spec = {"gemma-cli", opts, positional, 1, &n_pos};
    int arc = args_parse(&spec, argc, argv);
    if (arc == ARGS_HELP) {
        usage(stdout);
        return 0;
    }
    if (arc != ARGS_OK)
        return 2;
    prompt = n_pos ? positional[0] : NULL;
    n_stops = lists.n_stops;
    n_stop_ids = lists.n_ids;
    p.max_tokens = max_tokens; /* the protocol's meaning: 0 = until EOS or the context is full */
    p.top_k = top_k;
    p.top_p = top_p;
    if (print_lp && logprobs < 0)
        logprobs = 0;
    p.logprobs = logprobs >= 0;
    p.top_logprobs = logprobs > 0 ? logprobs : 0;
    if (p.beam_width > 1) /* the hypotheses come back whole */
        p.stream = false;

    gmc_client *c = NULL;
    int ctimeout = timeout > 0 ? (int)timeout : 10000;
    co.timeout_ms = ctimeout;
    gmc_code rc = gmc_connect_with(endpoint, &co, &c);
    if (rc != GMC_OK) {
        fprintf(stderr, "gemma-cli: %s: %s\n", gmc_code_name(rc), gmc_connect_error());
        return 1;
    }
    if (health) {
        gmc_health h;
        rc = gmc_health_check(c, ctimeout, &h);
        gmc_close(&c);
        if (rc != GMC_OK) {
            fprintf(stderr, "gemma-cli: %s: %s\n", gmc_code_name(rc), "health probe failed");
            return 1;
        }
        printf("%s backend=%s tp=%d model=%s version=%s uptime=%.1fs\n",
               h.serving ? "serving" : h.shutting_down ? "shutting-down" : "not-serving", h.backend, h.tp,
               h.model[0] ? h.model : "-", h.version, h.uptime_s);
        return h.serving ? 0 : 1;
    }
    if (stats) {
        gmc_stats s;
        rc = gmc_stats_get(c, ctimeout, &s);
        if (rc != GMC_OK) {
            fprintf(stderr, "gemma-cli: %s: %s\n", gmc_code_name(rc), gmc_last_error(c));
            gmc_close(&c);
            return 1;
        }
        gmc_close(&c);
        printf("running: %d\nwaiting: %d\n", s.running, s.waiting);
        printf("kv_blocks_total: %lld\nkv_blocks_used: %lld\nkv_blocks_free: %lld\nkv_block_size: %d\n",
               (long long)s.kv_blocks_total, (long long)s.kv_blocks_used, (long long)s.kv_blocks_free,
               s.kv_block_size);
        printf("requests_total: %lld\nrequests_finished: %lld\nrequests_failed: %lld\nrequests_cancelled: %lld\n",
               (long long)s.requests_total, (long long)s.requests_finished, (long long)s.requests_failed,
               (long long)s.requests_cancelled);
        printf("preemptions: %lld\nprompt_tokens: %lld\ncompletion_tokens: %lld\nsteps: %lld\n",
               (long long)s.preemptions, (long long)s.prompt_tokens, (long long)s.completion_tokens,
               (long long)s.steps);
        printf("tokens_per_s: %.1f\nttft_p50_ms: %.2f\nttft_p99_ms: %.2f\ntpot_p50_ms: %.3f\ntpot_p99_ms: %.3f\n",
               s.tokens_per_s, s.ttft_p50_ms, s.ttft_p99_ms, s.tpot_p50_ms, s.tpot_p99_ms);
        printf("queue_p50_ms: %.2f\nqueue_p99_ms: %.2f\nstep_avg_ms: %.3f\nclients: %d\nworker_restarts: %lld\n"
               "uptime_s: %.1f\n",
               s.queue_p50_ms, s.queue_p99_ms, s.step_avg_ms, s.clients, (long long)s.worker_restarts, s.uptime_s);
        printf("prefix_cache: %s\nkv_blocks_cached: %lld\nprefix_cache_queries: %lld\nprefix_cache_hits: %lld\n"
               "prefix_cache_hit_rate: %.4f\n",
               s.prefix_cache ? "on" : "off", (long long)s.kv_blocks_cached, (long long)s.prefix_cache_queries,
               (long long)s.prefix_cache_hits, s.prefix_cache_hit_rate);
        printf("spec_steps: %lld\nspec_drafted: %lld\nspec_accepted: %lld\nspec_acceptance_rate: %.4f\n",
               (long long)s.spec_steps, (long long)s.spec_drafted, (long long)s.spec_accepted,
               s.spec_acceptance_rate);
        return 0;
    }

    char *owned = NULL;
    size_t plen = 0;
    if (!prompt) {
        owned = read_stdin(&plen);
        if (!owned) {
            fprintf(stderr, "gemma-cli: cannot read the prompt from stdin\n");
            gmc_close(&c);
            return 1;
        }
        prompt = owned;
    } else {
        plen = strlen(prompt);
    }
    int32_t *ids = NULL;
    gmc_chat_msg msg = {"user", prompt};
    if (tokens) {
        int32_t n_ids;
        if (!parse_ids(prompt, &ids, &n_ids)) {
            fprintf(stderr, "gemma-cli: --tokens: '%s' is not a list of token ids\n", prompt);
            free(ids);
            free(owned);
            gmc_close(&c);
            return 2;
        }
        p.prompt_ids = ids;
        p.n_prompt_ids = n_ids;
    } else if (chat) {
        p.messages = &msg;
        p.n_messages = 1;
    } else {
        p.prompt = prompt;
        p.prompt_len = plen;
        if (plen == 0)
            p.prompt = NULL; /* sent empty: the daemon answers INVALID_ARGUMENT */
    }
    p.stop = stops;
    p.n_stop = n_stops;
    p.stop_ids = stop_ids;
    p.n_stop_ids = n_stop_ids;

    cli_out o = {print_ids, print_lp, false, {0}};
    gmc_result r;
    rc = gmc_generate(c, &p, timeout > 0 ? (int)timeout : -1, on_chunk, &o, &r);
    int status = 0;
    if (rc != GMC_OK) {
        fflush(stdout);
        fprintf(stderr, "gemma-cli: %s: %s\n", gmc_code_name(rc), r.error_message[0] ? r.error_message : gmc_last_error(c));
        status = 1;
    } else if (!print_lp) {
        printf("\n");
    }
    fflush(stdout);
    jsonw_free(&o.w);
    gmc_result_free(&r);
    free(ids);
    free(owned);
    gmc_close(&c);
    return status;
}
