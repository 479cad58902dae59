/* gemma_cli.c - gemma-cli: one generation, a health probe or the stats of a running gemmad. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/gemma_client.h"

#define CLI_MAX_STOP 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-cli [options] [PROMPT]\n"
            "Send PROMPT (or stdin when none is given) to gemmad and print the continuation,\n"
            "then one newline. Errors go to stderr with the daemon's typed code; exit status 1.\n"
            "\n"
            "  --endpoint E       gemmad endpoint (default $GEMMAD_ENDPOINT or tcp://127.0.0.1:5555)\n"
            "  --chat             format PROMPT as one user turn of Gemma's chat template\n"
            "  --max-tokens N     tokens to generate (default 128; 0 = none, as gemma-generate;\n"
            "                     -1 = until EOS or the context is full)\n"
            "  --temperature T    0 = greedy (default)\n"
            "  --top-k K          0 = off (default)\n"
            "  --top-p P          (0, 1], default 1\n"
            "  --seed S           sampling seed (default 0)\n"
            "  --stop STR         stop string (repeatable, up to %d)\n"
            "  --stop-id ID       stop token id (repeatable)\n"
            "  --ignore-eos       do not stop at EOS\n"
            "  --tokens           PROMPT is a list of token ids (\"2,651,6037\"), used verbatim\n"
            "  --print-ids        print the generated token ids (space separated) instead of text\n"
            "  --no-stream        ask for one final reply instead of a stream\n"
            "  --timeout MS       give up after MS milliseconds (default: connect 10000, generate none)\n"
            "  --server-key F     CurveZMQ: the server's public key file NAME.key (gemma-keygen)\n"
            "  --client-key F     CurveZMQ: this client's NAME.key_secret (its public key must be\n"
            "                     in the server's curve_allow)\n"
            "  --health           exit 0 when gemmad is ready to serve (prints its state)\n"
            "  --stats            print gemmad's statistics\n"
            "  --help             this text\n",
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

static bool parse_i64(const char *s, long long lo, long long hi, long long *out)
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
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
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
    bool print_ids;
    bool any;
} cli_out;

static void on_chunk(const gmc_event *ev, void *arg)
{
    cli_out *o = arg;
    if (o->print_ids) {
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
    int32_t stop_ids[64];
    int n_stops = 0, n_stop_ids = 0;
    bool chat = false, health = false, stats = false, tokens = false, print_ids = false, no_tokens = false;
    long long timeout = 0;
    const char *prompt = NULL;
    gmc_connect_opts co;
    gmc_connect_opts_init(&co);

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n;
#define NEED_ARG                                                                                                       \
    do {                                                                                                               \
        if (!v) {                                                                                                      \
            fprintf(stderr, "gemma-cli: %s needs a value\n", a);                                                       \
            return 2;                                                                                                  \
        }                                                                                                              \
        i++;                                                                                                           \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--endpoint")) {
            NEED_ARG;
            endpoint = v;
        } else if (!strcmp(a, "--chat")) {
            chat = true;
        } else if (!strcmp(a, "--max-tokens")) {
            NEED_ARG;
            if (!parse_i64(v, INT32_MIN, INT32_MAX, &n)) {
                fprintf(stderr, "gemma-cli: --max-tokens '%s' is not an integer\n", v);
                return 2;
            }
            if (n < -1) {
                fprintf(stderr, "gemma-cli: --max-tokens %lld: must be >= -1\n", (long long)n);
                return 2;
            }
            no_tokens = n == 0;
            p.max_tokens = n < 0 ? 0 : (int32_t)n; /* the protocol's 0 means "until EOS" */
        } else if (!strcmp(a, "--temperature")) {
            NEED_ARG;
            if (!parse_f(v, &p.temperature)) {
                fprintf(stderr, "gemma-cli: --temperature '%s' is not a number\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--top-k")) {
            NEED_ARG;
            if (!parse_i64(v, INT32_MIN, INT32_MAX, &n)) {
                fprintf(stderr, "gemma-cli: --top-k '%s' is not an integer\n", v);
                return 2;
            }
            p.top_k = (int32_t)n;
        } else if (!strcmp(a, "--top-p")) {
            NEED_ARG;
            if (!parse_f(v, &p.top_p)) {
                fprintf(stderr, "gemma-cli: --top-p '%s' is not a number\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            NEED_ARG;
            char *end;
            errno = 0;
            p.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end) {
                fprintf(stderr, "gemma-cli: --seed '%s' is not an unsigned integer\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--stop")) {
            NEED_ARG;
            if (n_stops == CLI_MAX_STOP) {
                fprintf(stderr, "gemma-cli: at most %d --stop strings\n", CLI_MAX_STOP);
                return 2;
            }
            stops[n_stops++] = v;
        } else if (!strcmp(a, "--stop-id")) {
            NEED_ARG;
            if (n_stop_ids == 64 || !parse_i64(v, 0, INT32_MAX, &n)) {
                fprintf(stderr, "gemma-cli: bad --stop-id '%s' (a token id; at most 64)\n", v);
                return 2;
            }
            stop_ids[n_stop_ids++] = (int32_t)n;
        } else if (!strcmp(a, "--ignore-eos")) {
            p.ignore_eos = true;
        } else if (!strcmp(a, "--tokens")) {
            tokens = true;
        } else if (!strcmp(a, "--print-ids")) {
            print_ids = true;
        } else if (!strcmp(a, "--no-stream")) {
            p.stream = false;
        } else if (!strcmp(a, "--timeout")) {
            NEED_ARG;
            if (!parse_i64(v, 0, INT32_MAX, &timeout)) {
                fprintf(stderr, "gemma-cli: --timeout '%s' is not a number of milliseconds\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--server-key")) {
            NEED_ARG;
            co.server_key_file = v;
        } else if (!strcmp(a, "--client-key")) {
            NEED_ARG;
            co.client_key_file = v;
        } else if (!strcmp(a, "--health")) {
            health = true;
        } else if (!strcmp(a, "--stats")) {
            stats = true;
        } else if (a[0] == '-' && a[1] == '-' && a[2]) {
            fprintf(stderr, "gemma-cli: unknown option '%s' (see --help)\n", a);
            return 2;
        } else if (!prompt) {
            prompt = !strcmp(a, "--") && v ? argv[++i] : a;
        } else {
            fprintf(stderr, "gemma-cli: more than one PROMPT given ('%s'); quote the prompt\n", a);
            return 2;
        }
#undef NEED_ARG
    }

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
        return 0;
    }

    if (no_tokens) { /* --max-tokens 0: nothing to generate; print what gemma-generate prints */
        gmc_close(&c);
        putchar('\n');
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

    cli_out o = {print_ids, false};
    gmc_result r;
    rc = gmc_generate(c, &p, timeout > 0 ? (int)timeout : -1, on_chunk, &o, &r);
    int status = 0;
    if (rc != GMC_OK) {
        fflush(stdout);
        fprintf(stderr, "gemma-cli: %s: %s\n", gmc_code_name(rc), r.error_message[0] ? r.error_message : gmc_last_error(c));
        status = 1;
    } else {
        printf("\n");
    }
    fflush(stdout);
    gmc_result_free(&r);
    free(ids);
    free(owned);
    gmc_close(&c);
    return status;
}
