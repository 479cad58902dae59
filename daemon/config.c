/* config.c - gemmad settings from defaults, a libconfig file and flags (flags win). */
#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <string.h>

#include "common/args.h"
#include "daemon/spec.h"
#include "common/gguf_model.h"
#include "common/gguf_quants.h"
#include "common/log.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "http/http.h"

void gd_config_defaults(gd_config *c)
{
    memset(c, 0, sizeof(*c));
    c->backend = GM_BACKEND_CPU;
    c->tp = 1;
    c->kv_block_size = 16;
    c->kv_memory = -1; /* unset: the workers derive it (ctl/sizing.h) */
    c->max_waiting = 100000;
    c->listen = strdup("tcp://127.0.0.1:5555");
    c->log_level = GM_LOG_INFO;
    c->use_graphs = true;
    c->run_ahead = true;
    c->prefix_cache = true;
    c->shutdown_timeout_ms = 30000;
    c->http_max_body = 8 << 20;
    c->http_max_connections = 4096;
    c->step_timeout_ms = 10000;
    c->step_warmup_ms = 120000;
    c->client_stall_ms = 10000;
    c->client_output_bytes = 4 << 20;
    c->max_waiting_memory = 256 << 20;
}

void gd_config_free(gd_config *c)
{
    free(c->model);
    free(c->listen);
    free(c->worker_bin);
    free(c->config_path);
    free(c->http_listen);
    free(c->api_key);
    free(c->api_key_file);
    free(c->served_model_name);
    c->model = c->listen = c->worker_bin = c->config_path = NULL;
    c->http_listen = c->api_key = c->api_key_file = c->served_model_name = NULL;
    glue_config_free(&c->cluster);
}

static const char *level_name(int l)
{
    static const char *n[] = {"debug", "info", "warn", "error", "off"};
    return l >= 0 && l <= 4 ? n[l] : "info";
}

static void set_str(char **dst, const char *v)
{
    char *d = strdup(v);
    if (d) {
        free(*dst);
        *dst = d;
    }
}

/* An optional string setting: "" unsets it. */
static void set_opt_str(char **dst, const char *v)
{
    if (*v) {
        set_str(dst, v);
    } else {
        free(*dst);
        *dst = NULL;
    }
}

/* The API key from a file (http/http.h). */
static gm_status read_key_file(gd_config *c, const char *path)
{
    char *key = NULL;
    gm_status st = http_read_key_file(path, &key);
    if (st != GM_OK)
        return st;
    free(c->api_key);
    c->api_key = key;
    set_str(&c->api_key_file, path);
    return GM_OK;
}

/* One setting by name, from a string value (flags) -- shared by file and flags
 * for the string-typed keys. Returns GM_OK or GM_ERR_INVALID_ARG with a message
 * that the caller prefixes with where the value came from. */
static gm_status set_key_str(gd_config *c, const char *key, const char *v)
{
    int64_t n;
    char *end;
    gm_status gst = glue_config_set(&c->cluster, key, v); /* cluster keys; device templates */
    if (gst != GM_ERR_NOT_FOUND)
        return gst;
    if (!strcmp(key, "model")) {
        set_str(&c->model, v);
    } else if (!strcmp(key, "listen")) {
        if (!*v)
            return gm_fail(GM_ERR_INVALID_ARG, "listen: empty endpoint");
        set_str(&c->listen, v);
    } else if (!strcmp(key, "worker_bin")) {
        set_str(&c->worker_bin, v);
    } else if (!strcmp(key, "http_listen")) {
        set_opt_str(&c->http_listen, v);
    } else if (!strcmp(key, "api_key")) {
        set_opt_str(&c->api_key, v);
    } else if (!strcmp(key, "api_key_file")) {
        return *v ? read_key_file(c, v) : GM_OK;
    } else if (!strcmp(key, "served_model_name")) {
        set_opt_str(&c->served_model_name, v);
    } else if (!strcmp(key, "http_max_body")) {
        if (!args_parse_size(v, &n) || n < 1024 || n > (1ll << 32))
            return gm_fail(GM_ERR_INVALID_ARG, "http_max_body: '%s' is not a size in [1K, 4G] (bytes, or like 8M)", v);
        c->http_max_body = n;
    } else if (!strcmp(key, "backend")) {
        int b = gm_backend_parse(v);
        if (b < 0)
            return gm_fail(GM_ERR_INVALID_ARG, "backend: '%s' is not cpu, cuda or null", v);
        c->backend = (gm_backend)b;
    } else if (!strcmp(key, "log_level")) {
        int l = gm_log_parse_level(v);
        if (l < 0)
            return gm_fail(GM_ERR_INVALID_ARG, "log_level: '%s' is not debug, info, warn, error or off", v);
        c->log_level = l;
    } else if (!strcmp(key, "quant")) {
        int q = gm_quant_parse(v);
        if (q < 0)
            return gm_fail(GM_ERR_INVALID_ARG, "quant: '%s' is not none, fp8 or awq", v);
        c->quant = (gm_quant)q;
    } else if (!strcmp(key, "kv_dtype")) {
        int d = gm_kv_dtype_parse(v);
        if (d < 0)
            return gm_fail(GM_ERR_INVALID_ARG, "kv_dtype: '%s' is not auto, bf16 or fp8", v);
        c->kv_dtype = (gm_kv_dtype)d;
    } else if (!strcmp(key, "lm_head")) {
        if (strcmp(v, "bf16") && strcmp(v, "fp8"))
            return gm_fail(GM_ERR_INVALID_ARG, "lm_head: '%s' is not bf16 or fp8", v);
        c->lm_head_fp8 = !strcmp(v, "fp8");
    } else if (!strcmp(key, "kv_memory")) {
        if (!args_parse_size(v, &n))
            return gm_fail(GM_ERR_INVALID_ARG, "kv_memory: '%s' is not a size (bytes, or like 64M, 2G)", v);
        c->kv_memory = n;
    } else if (!strcmp(key, "max_prompt_bytes") || !strcmp(key, "max_message_bytes") ||
               !strcmp(key, "client_output_bytes") || !strcmp(key, "max_waiting_memory")) {
        if (!args_parse_size(v, &n) || n < 0 || n > ((int64_t)1 << 40))
            return gm_fail(GM_ERR_INVALID_ARG, "%s: '%s' is not a size (bytes, or like 64M, 2G)", key, v);
        *(!strcmp(key, "max_prompt_bytes")      ? &c->max_prompt_bytes
          : !strcmp(key, "max_message_bytes")   ? &c->max_message_bytes
          : !strcmp(key, "client_output_bytes") ? &c->client_output_bytes
                                                : &c->max_waiting_memory) = n;
    } else if (!strcmp(key, "kv_mem_fraction")) {
        errno = 0;
        double d = strtod(v, &end);
        if (errno || end == v || *end || !(d > 0 && d <= 1))
            return gm_fail(GM_ERR_INVALID_ARG, "kv_mem_fraction: '%s' is not in (0, 1]", v);
        c->kv_mem_fraction = d;
    } else if (!strcmp(key, "use_graphs") || !strcmp(key, "run_ahead") || !strcmp(key, "prefix_cache")) {
        bool *b = !strcmp(key, "use_graphs") ? &c->use_graphs : !strcmp(key, "run_ahead") ? &c->run_ahead
                                                                                          : &c->prefix_cache;
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "on"))
            *b = true;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "off"))
            *b = false;
        else
            return gm_fail(GM_ERR_INVALID_ARG, "%s: '%s' is not true or false", key, v);
    } else {
        /* integer keys */
        struct {
            const char *k;
            int64_t lo, hi;
        } ik[] = {
            {"tp", 1, 64},
            {"device", 0, 1024},
            {"kv_block_size", 1, 4096},
            {"kv_blocks", 0, INT32_MAX},
            {"max_tokens_per_step", 0, 1 << 20},
            {"max_seqs", 0, 1 << 20},
            {"max_context", 0, 1 << 24},
            {"max_waiting", 1, 1 << 30},
            {"shutdown_timeout_ms", 0, 24 * 3600 * 1000},
            {"ready_timeout_ms", 0, 24 * 3600 * 1000},
            {"http_max_requests", 0, 1 << 20},
            {"http_max_connections", 1, 1 << 20},
            {"step_timeout_ms", 0, 24 * 3600 * 1000},
            {"step_warmup_ms", 0, 24 * 3600 * 1000},
            {"client_stall_ms", 0, 24 * 3600 * 1000},
            {"speculative_tokens", 0, SPEC_MAX_K},
        };
        size_t i;
        for (i = 0; i < sizeof(ik) / sizeof(ik[0]); i++)
            if (!strcmp(key, ik[i].k))
                break;
        if (i == sizeof(ik) / sizeof(ik[0]))
            return gm_fail(GM_ERR_NOT_FOUND, "unknown setting '%s'", key);
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || x < ik[i].lo || x > ik[i].hi)
            return gm_fail(GM_ERR_INVALID_ARG, "%s: '%s' is not an integer in [%lld, %lld]", key, v,
                           (long long)ik[i].lo, (long long)ik[i].hi);
        if (!strcmp(key, "tp"))
            c->tp = (int32_t)x;
        else if (!strcmp(key, "device"))
            c->device = (int32_t)x;
        else if (!strcmp(key, "kv_block_size"))
            c->kv_block_size = (int32_t)x;
        else if (!strcmp(key, "kv_blocks"))
            c->kv_blocks = x;
        else if (!strcmp(key, "max_tokens_per_step"))
            c->max_tokens_per_step = (int32_t)x;
        else if (!strcmp(key, "max_seqs"))
            c->max_seqs = (int32_t)x;
        else if (!strcmp(key, "max_context"))
            c->max_context = (int32_t)x;
        else if (!strcmp(key, "max_waiting"))
            c->max_waiting = (int32_t)x;
        else if (!strcmp(key, "shutdown_timeout_ms"))
            c->shutdown_timeout_ms = (int32_t)x;
        else if (!strcmp(key, "http_max_requests"))
            c->http_max_requests = (int32_t)x;
        else if (!strcmp(key, "http_max_connections"))
            c->http_max_connections = (int32_t)x;
        else if (!strcmp(key, "step_timeout_ms"))
            c->step_timeout_ms = (int32_t)x;
        else if (!strcmp(key, "step_warmup_ms"))
            c->step_warmup_ms = (int32_t)x;
        else if (!strcmp(key, "client_stall_ms"))
            c->client_stall_ms = (int32_t)x;
        else if (!strcmp(key, "speculative_tokens"))
            c->speculative_tokens = (int32_t)x;
        else
            c->ready_timeout_ms = (int32_t)x;
    }
    return GM_OK;
}

gm_status gd_config_load_file(gd_config *c, const char *path)
{
    config_t cf;
    config_init(&cf);
    if (config_read_file(&cf, path) != CONFIG_TRUE) {
        gm_status st;
        if (config_error_type(&cf) == CONFIG_ERR_FILE_IO)
            st = gm_fail(GM_ERR_IO, "%s: cannot read the config file: %s", path, strerror(errno));
        else
            st = gm_fail(GM_ERR_FORMAT, "%s:%d: %s", config_error_file(&cf) ? config_error_file(&cf) : path,
                         config_error_line(&cf), config_error_text(&cf));
        config_destroy(&cf);
        return st;
    }
    config_setting_t *root = config_root_setting(&cf);
    int n = config_setting_length(root);
    gm_status st = GM_OK;
    for (int i = 0; i < n && st == GM_OK; i++) {
        config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(s);
        int line = config_setting_source_line(s);
        char buf[64];
        const char *v = NULL;
        switch (config_setting_type(s)) {
        case CONFIG_TYPE_STRING:
            v = config_setting_get_string(s);
            break;
        case CONFIG_TYPE_INT:
            snprintf(buf, sizeof(buf), "%d", config_setting_get_int(s));
            v = buf;
            break;
        case CONFIG_TYPE_INT64:
            snprintf(buf, sizeof(buf), "%lld", config_setting_get_int64(s));
            v = buf;
            break;
        case CONFIG_TYPE_FLOAT:
            snprintf(buf, sizeof(buf), "%.17g", config_setting_get_float(s));
            v = buf;
            break;
        case CONFIG_TYPE_BOOL:
            v = config_setting_get_bool(s) ? "true" : "false";
            break;
        case CONFIG_TYPE_ARRAY:
        case CONFIG_TYPE_LIST:
            break; /* v stays NULL: glue_config_set_list (curve_allow) */
        default:
            st = gm_fail(GM_ERR_FORMAT, "%s:%d: setting '%s' must be a string or a number", path, line, name);
            continue;
        }
        st = v ? set_key_str(c, name, v) : glue_config_set_list(&c->cluster, s);
        if (st != GM_OK) {
            char msg[512];
            snprintf(msg, sizeof(msg), "%s", gm_last_error());
            st = gm_fail(st == GM_ERR_NOT_FOUND ? GM_ERR_FORMAT : st, "%s:%d: %s", path, line, msg);
        }
    }
    config_destroy(&cf);
    if (st == GM_OK)
        set_str(&c->config_path, path);
    return st;
}

void gd_config_usage(FILE *f)
{
    fprintf(f,
            "usage: gemmad [--config FILE] [options]\n"
            "The Gemma serving daemon: answers gemma.v1 protobuf requests on a ZeroMQ ROUTER socket\n"
            "and runs the model on gemma-worker processes (one per tensor-parallel rank).\n"
            "Settings come from the defaults, then FILE (libconfig: key = value;), then the flags.\n"
            "\n"
            "  --config FILE             libconfig file (keys: the flag names with '_' for '-')\n"
            "  --model PATH              Hugging Face Gemma checkpoint directory, a Gemma .gguf file or a\n"
            "                            directory holding one (optional for --backend null)\n"
            "  --backend B               cpu | cuda | null (default cpu)\n"
            "  --tp N                    tensor-parallel ranks = worker processes (default 1)\n"
            "  --device N                first CUDA device (default 0)\n"
            "  --listen ENDPOINT         ZeroMQ endpoint (default tcp://127.0.0.1:5555)\n"
            "  --kv-block-size N         tokens per KV block (default 16)\n"
            "  --kv-memory SIZE          KV budget per rank: bytes or 64M, 2G (default: 64M on cpu/null;\n"
            "                            on cuda, --kv-mem-fraction of the memory left after the weights\n"
            "                            and runtime buffers; more than is free is an error)\n"
            "  --kv-blocks N             exactly N KV blocks (overrides --kv-memory)\n"
            "  --kv-mem-fraction F       CUDA: fraction of free memory for KV (default 0.9)\n"
            "  --max-tokens-per-step N   token budget of one step (default: 2048 on cpu/null, 8192 on\n"
            "                            cuda, less when the GPU is small)\n"
            "  --max-seqs N              running sequences (default: 64 on cpu/null; on cuda the KV pool's\n"
            "                            tokens / 256, within 8..1024)\n"
            "  --max-context N           longest sequence (default: the model's, unless the KV pool is\n"
            "                            smaller; the workers log each choice and why)\n"
            "  --max-waiting N           queued requests before OVERLOADED (default 100000)\n"
            "  --quant Q                 none | fp8 | awq (default none)\n"
            "  --kv-dtype D              auto | bf16 | fp8 (default auto)\n"
            "  --lm-head T               bf16 | fp8: the LM head's weights and inputs (default bf16)\n"
            "  --use-graphs B            CUDA graphs for decode: true | false (default true)\n"
            "  --run-ahead B             plan step k+1 before step k's tokens are back: true | false\n"
            "                            (default true; --no-run-ahead = false: one step in flight)\n"
            "  --prefix-cache B          reuse the KV of prompt prefixes seen before: true | false\n"
            "                            (default true)\n"
            "  --speculative-tokens K    speculative decoding by prompt lookup: tokens drafted per step for\n"
            "                            requests that do not choose (0..16; default 0 = off;\n"
            "                            docs/SPECULATIVE.md)\n"
            "  --worker-bin PATH         gemma-worker binary (default: beside gemmad)\n"
            "  --shutdown-timeout-ms N   SIGTERM: time for in-flight work to finish (default 30000)\n"
            "  --ready-timeout-ms N      worker start limit (default 600000)\n"
            "  --step-timeout-ms N       step watchdog: a step in flight longer than max(N, 10 x the recent\n"
            "                            p99 step time, scaled by its tokens) restarts the workers\n"
            "                            (default 10000; 0 = off)\n"
            "  --step-warmup-ms N        the watchdog's allowance for the first 8 steps after a (re)start\n"
            "                            (default 120000)\n"
            "  --max-prompt-bytes SIZE   text of one prompt, checked before tokenizing (default: the context\n"
            "                            x min(16, the tokenizer's longest piece) bytes, at least 4K)\n"
            "  --max-message-bytes SIZE  largest client frame; a larger one drops that client's connection\n"
            "                            (default: the prompt limit + 64K, at least 6 bytes per token)\n"
            "  --client-stall-ms N       a client that takes no reply for N ms while its output waits has\n"
            "                            its requests cancelled (default 10000; 0 = never)\n"
            "  --client-output-bytes SIZE  output held for a client that is not reading (default 4M)\n"
            "  --max-waiting-memory SIZE bytes of queued requests before OVERLOADED (default 256M)\n"
            "  --log-level L             debug | info | warn | error | off (default info)\n"
            "  --http-listen HOST:PORT   also serve the OpenAI-compatible HTTP API there (off by default;\n"
            "                            e.g. 127.0.0.1:8000): /v1/completions, /v1/chat/completions,\n"
            "                            /v1/models, /health, /metrics, /tokenize, /detokenize\n"
            "  --api-key KEY             require 'Authorization: Bearer KEY' on the HTTP /v1/ paths\n"
            "  --api-key-file FILE       the same, the key read from FILE's first line\n"
            "  --served-model-name NAME  the HTTP API's model name (default: the --model path's last part)\n"
            "  --http-max-body SIZE      largest HTTP request body (default 8M; 413 beyond)\n"
            "  --http-max-requests N     generation requests in flight over HTTP (default 0 = no own\n"
            "                            limit; 429 beyond, like the RPC's OVERLOADED)\n"
            "  --http-max-connections N  open HTTP connections (default 4096)\n"
            "  --check-config            validate the settings, print them, exit (0 = valid)\n"
            "  --help                    this text\n");
    glue_config_usage(f);
}

/* args_parse's fallback: every --name VALUE not in the flag table is a config key ('-' -> '_'). */
static gm_status config_set_flag(void *ctx, const char *name, const char *value)
{
    char key[128];
    snprintf(key, sizeof key, "%s", name);
    for (char *p = key; *p; p++)
        if (*p == '-')
            *p = '_';
    return set_key_str(ctx, key, value);
}

gm_status gd_config_from_args(int argc, char **argv, gd_config *c, gd_action *action)
{
    gd_config_defaults(c);
    *action = GD_ACTION_RUN;
    /* --config FILE first, wherever it stands: the flags override the file */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--"))
            break;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *action = GD_ACTION_HELP;
            return GM_OK;
        }
        if (!strcmp(a, "--config") || !strncmp(a, "--config=", 9)) {
            const char *v = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v)
                return gm_fail(GM_ERR_INVALID_ARG, "--config needs a file name");
            gm_status st = gd_config_load_file(c, v);
            if (st)
                return st;
        }
    }
    const char *config_file = NULL;
    bool check = false, no_run_ahead = false;
    args_opt opts[] = {
        {"config", ARGS_STRING, &config_file}, /* read above */
        {"check-config", ARGS_FLAG, &check},
        {"no-run-ahead", ARGS_FLAG, &no_run_ahead},
        {NULL},
    };
    args_spec spec = {"gemmad", opts, .unknown = config_set_flag, .unknown_ctx = c, .quiet = true};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        *action = GD_ACTION_HELP;
        return GM_OK;
    }
    if (rc != ARGS_OK)
        return GM_ERR_INVALID_ARG; /* gm_last_error() says why */
    if (check)
        *action = GD_ACTION_CHECK;
    if (no_run_ahead)
        c->run_ahead = false;
    gm_status gst = glue_config_finish(&c->cluster, &c->listen, &c->device); /* launcher templates, curve keys */
    return gst != GM_OK ? gst : gd_config_validate(c);
}

gm_status gd_config_validate(const gd_config *c)
{
    if ((!c->model || !*c->model) && c->backend != GM_BACKEND_NULL)
        return gm_fail(GM_ERR_INVALID_ARG, "no model: give --model DIR (or model = \"DIR\"; in the config); "
                                           "only --backend null runs without one");
    if (c->backend == GM_BACKEND_NULL && c->quant != GM_QUANT_NONE)
        return gm_fail(GM_ERR_INVALID_ARG, "quant %s needs a real backend, not null", gm_quant_name(c->quant));
    if (c->backend == GM_BACKEND_NULL && c->lm_head_fp8)
        return gm_fail(GM_ERR_INVALID_ARG, "lm_head fp8 needs a real backend, not null");
    if (c->kv_blocks == 0 && c->kv_memory == 0 && c->backend != GM_BACKEND_CUDA)
        return gm_fail(GM_ERR_INVALID_ARG, "kv_memory must be > 0 (or give kv_blocks)");
    if (c->max_context > 0 && c->max_context < 2)
        return gm_fail(GM_ERR_INVALID_ARG, "max_context %d is too small", c->max_context);
    if (!c->listen || !*c->listen)
        return gm_fail(GM_ERR_INVALID_ARG, "listen: no endpoint");
    if (strncmp(c->listen, "tcp://", 6) && strncmp(c->listen, "ipc://", 6) && strncmp(c->listen, "inproc://", 9))
        return gm_fail(GM_ERR_INVALID_ARG, "listen: '%s' is not a tcp:// or ipc:// endpoint", c->listen);
    if (c->http_listen && (!strchr(c->http_listen, ':') || strstr(c->http_listen, "://")))
        return gm_fail(GM_ERR_INVALID_ARG, "http_listen: '%s' is not HOST:PORT (like 127.0.0.1:8000)", c->http_listen);
    return GM_OK;
}

/* --check-config on a GGUF checkpoint: its metadata as gemmad reads it, the tokenizer built from its
 * vocabulary, and every tensor mapped to a Gemma name with a type the loader dequantizes (nothing is
 * dequantized here). */
static gm_status check_gguf(const char *model, FILE *f)
{
    gm_checkpoint *ck = NULL;
    gm_status st = gm_checkpoint_open(model, 0, &ck);
    if (st != GM_OK)
        return st;
    const gm_model_config *mc = &ck->cfg;
    fprintf(f, "model: %s: GGUF, Gemma %d, %d layers, hidden %d, %d/%d heads, vocab %d, context %d\n", ck->path,
            (int)mc->family, mc->num_layers, mc->hidden_size, mc->num_heads, mc->num_kv_heads, mc->vocab_size,
            mc->max_position);
    gm_tokenizer *tok = NULL;
    if ((st = gm_checkpoint_tokenizer(ck, &tok)) != GM_OK)
        fprintf(f, "tokenizer: %s: gemmad will accept token-id prompts only\n", gm_last_error());
    else
        fprintf(f, "tokenizer: the GGUF vocabulary (%d pieces)\n", gm_tok_vocab_size(tok));
    gm_tok_destroy(&tok);
    st = GM_OK;
    int64_t bytes = 0, elems = 0;
    char hf[160];
    for (int64_t i = 0; i < gguf_tensor_count(ck->gguf) && st == GM_OK; i++) {
        const gguf_tensor *t = gguf_tensor_at(ck->gguf, i);
        if (!gguf_model_hf_name(t->name, mc->family, hf, sizeof hf))
            st = gm_fail(GM_ERR_FORMAT, "weights: %s: tensor '%s' has no Gemma counterpart", ck->path, t->name);
        else if (!gguf_can_dequant(t->type))
            st = gm_fail(GM_ERR_UNSUPPORTED, "weights: %s: tensor '%s' is %s, which gemmad cannot dequantize",
                         ck->path, t->name, gguf_type_name(t->type) ? gguf_type_name(t->type) : "of an unknown type");
        bytes += (int64_t)t->nbytes, elems += t->nelem;
    }
    bool embed = gguf_find_tensor(ck->gguf, "token_embd.weight") != NULL;
    if (st == GM_OK)
        fprintf(f, "weights: %lld tensors, %.2f GB in the file, about %.2f GB dequantized (bf16)%s\n",
                (long long)gguf_tensor_count(ck->gguf), (double)bytes / 1e9, (double)elems * 2 / 1e9,
                embed ? "" : " (no token_embd.weight!)");
    if (st == GM_OK && !embed)
        st = gm_fail(GM_ERR_FORMAT, "weights: %s has no token_embd.weight", ck->path);
    gm_checkpoint_destroy(&ck);
    return st;
}

gm_status gd_config_check_model(const gd_config *c, FILE *f)
{
    if (!c->model || !*c->model) {
        fprintf(f, "model: none (the null backend runs gemma-2b's shapes)\n");
        return GM_OK;
    }
    struct stat sb;
    errno = 0;
    if (stat(c->model, &sb) != 0 || (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode)))
        return gm_fail(GM_ERR_NOT_FOUND, "model: %s is neither a directory nor a .gguf file%s%s", c->model,
                       errno ? ": " : "", errno ? strerror(errno) : "");
    if (gm_checkpoint_is_gguf(c->model))
        return check_gguf(c->model, f);
    if (!S_ISDIR(sb.st_mode))
        return gm_fail(GM_ERR_NOT_FOUND, "model: %s is not a directory", c->model);
    gm_model_config mc;
    gm_status st = gm_config_load_dir(c->model, &mc);
    if (st != GM_OK)
        return st;
    fprintf(f, "model: %s/config.json: Gemma %d, %d layers, hidden %d, %d/%d heads, vocab %d, context %d\n",
            c->model, (int)mc.family, mc.num_layers, mc.hidden_size, mc.num_heads, mc.num_kv_heads, mc.vocab_size,
            mc.max_position);
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", c->model);
    if (access(path, R_OK) == 0)
        fprintf(f, "tokenizer: %s\n", path);
    else
        fprintf(f, "tokenizer: %s is missing: gemmad will accept token-id prompts only\n", path);
    st_model *m = NULL;
    if ((st = st_model_open(c->model, &m)) != GM_OK)
        return st;
    int64_t bytes = 0;
    for (int32_t i = 0; i < st_model_count(m); i++)
        bytes += (int64_t)st_model_at(m, i)->nbytes;
    bool embed = st_model_find(m, "model.embed_tokens.weight") ||
                 st_model_find(m, "model.language_model.embed_tokens.weight");
    fprintf(f, "weights: %d tensors, %.2f GB%s\n", st_model_count(m), (double)bytes / 1e9,
            embed ? "" : " (no model.embed_tokens.weight!)");
    st_model_destroy(&m);
    if (!embed)
        return gm_fail(GM_ERR_FORMAT, "weights: %s has no model.embed_tokens.weight", c->model);
    return GM_OK;
}

gm_status gd_config_spec(const gd_config *c, gm_worker_spec *s)
{
    ctl_spec_init(s);
    s->backend = c->backend;
    s->tp_size = c->tp;
    s->device = c->device;
    s->kv_block_size = c->kv_block_size;
    s->kv_num_blocks = c->kv_blocks;
    s->kv_mem_bytes = c->kv_memory > 0 ? c->kv_memory : 0; /* unset (or 0 on cuda): derived */
    s->kv_mem_fraction = c->kv_mem_fraction;
    s->max_seqs = c->max_seqs;
    s->max_tokens = c->max_tokens_per_step;
    s->max_context = c->max_context;
    s->quant = c->quant;
    s->kv_dtype = c->kv_dtype;
    s->use_graphs = c->use_graphs;
    s->lm_head_fp8 = c->lm_head_fp8;
    s->verbose = c->log_level <= GM_LOG_INFO;
    gm_status st = ctl_spec_set_model(s, c->model && *c->model ? c->model : NULL);
    return st != GM_OK ? st : ctl_spec_check(s);
}

void gd_config_print_str(FILE *f, const char *k, const char *v)
{
    fprintf(f, "%s = \"", k);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', f);
        fputc(*p, f);
    }
    fprintf(f, "\";\n");
}

void gd_config_print(const gd_config *c, FILE *f)
{
    if (c->model)
        gd_config_print_str(f, "model", c->model);
    fprintf(f, "backend = \"%s\";\n", gm_backend_name(c->backend));
    fprintf(f, "tp = %d;\ndevice = %d;\n", c->tp, c->device);
    gd_config_print_str(f, "listen", c->listen);
    fprintf(f, "kv_block_size = %d;\nkv_blocks = %lldL;\n", c->kv_block_size, (long long)c->kv_blocks);
    if (c->kv_memory >= 0)
        fprintf(f, "kv_memory = %lldL;\n", (long long)c->kv_memory);
    if (c->kv_mem_fraction > 0)
        fprintf(f, "kv_mem_fraction = %g;\n", c->kv_mem_fraction);
    fprintf(f, "max_tokens_per_step = %d;\nmax_seqs = %d;\nmax_context = %d;\nmax_waiting = %d;\n",
            c->max_tokens_per_step, c->max_seqs, c->max_context, c->max_waiting);
    fprintf(f, "quant = \"%s\";\nkv_dtype = \"%s\";\nlm_head = \"%s\";\nuse_graphs = %s;\nrun_ahead = %s;\n",
            gm_quant_name(c->quant), gm_kv_dtype_name(c->kv_dtype), c->lm_head_fp8 ? "fp8" : "bf16",
            c->use_graphs ? "true" : "false", c->run_ahead ? "true" : "false");
    fprintf(f, "prefix_cache = %s;\nspeculative_tokens = %d;\n", c->prefix_cache ? "true" : "false",
            c->speculative_tokens);
    if (c->worker_bin)
        gd_config_print_str(f, "worker_bin", c->worker_bin);
    fprintf(f, "shutdown_timeout_ms = %d;\nready_timeout_ms = %d;\nlog_level = \"%s\";\n", c->shutdown_timeout_ms,
            c->ready_timeout_ms, level_name(c->log_level));
    if (c->http_listen)
        gd_config_print_str(f, "http_listen", c->http_listen);
    if (c->api_key_file)
        gd_config_print_str(f, "api_key_file", c->api_key_file);
    else if (c->api_key)
        fprintf(f, "# api_key is set (not shown)\n");
    if (c->served_model_name)
        gd_config_print_str(f, "served_model_name", c->served_model_name);
    fprintf(f, "http_max_body = %lldL;\nhttp_max_requests = %d;\nhttp_max_connections = %d;\n",
            (long long)c->http_max_body, c->http_max_requests, c->http_max_connections);
    fprintf(f, "step_timeout_ms = %d;\nstep_warmup_ms = %d;\nclient_stall_ms = %d;\n", c->step_timeout_ms,
            c->step_warmup_ms, c->client_stall_ms);
    fprintf(f, "max_prompt_bytes = %lldL;\nmax_message_bytes = %lldL;\nclient_output_bytes = %lldL;\n"
               "max_waiting_memory = %lldL;\n",
            (long long)c->max_prompt_bytes, (long long)c->max_message_bytes, (long long)c->client_output_bytes,
            (long long)c->max_waiting_memory);
    glue_config_print(&c->cluster, f);
}
