/* config.h - gemmad's settings: defaults, then a libconfig file, then command-line flags.
 *
 * File keys (all optional; flags of the same name with '-' win):
 *   model = "DIR";             backend = "cpu" | "cuda" | "null";   tp = 1;
 *   kv_block_size = 16;        kv_memory = "64M" (or bytes);        kv_blocks = 0;
 *   kv_mem_fraction = 0.9;     max_tokens_per_step = 0;             max_seqs = 0;
 *   max_context = 0;           max_waiting = 100000;                listen = "tcp://127.0.0.1:5555";
 *   log_level = "info";        quant = "none" | "fp8" | "awq";      kv_dtype = "auto" | "bf16" | "fp8";
 *   lm_head = "bf16" | "fp8";
 *   device = 0;                worker_bin = "PATH";                 shutdown_timeout_ms = 30000;
 *   ready_timeout_ms = 0;      use_graphs = true;                   run_ahead = true;
 *   http_listen = "";          api_key = "";                        api_key_file = "";
 *   http_max_body = "8M";      http_max_requests = 0;               http_max_connections = 4096;
 *   served_model_name = "";    prefix_cache = true;                 speculative_tokens = 0;
 * Limits that keep one client or one fault from stalling the rest (0 = derived or default, below):
 *   step_timeout_ms = 10000;   step_warmup_ms = 120000;             client_stall_ms = 10000;
 *   max_prompt_bytes = 0;      max_message_bytes = 0;               client_output_bytes = "4M";
 *   max_waiting_memory = "256M";
 * and the cluster keys of daemon/cluster_glue.h (router, curve, ...).
 * The sizing keys (kv_memory, kv_blocks, kv_mem_fraction, max_tokens_per_step,
 * max_seqs, max_context) left unset (0; kv_memory -1) are decided by the
 * workers from the model and the device (ctl/sizing.h), which report their
 * choice and its reason when they are ready.
 */
#ifndef GM_DAEMON_CONFIG_H
#define GM_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "daemon/cluster_glue.h"
#include "ctl/spec.h"

typedef struct gd_config {
    char *model;             /* checkpoint directory; NULL = none (null backend only) */
    gm_backend backend;
    int32_t tp;
    int32_t device;          /* first CUDA device */
    int32_t kv_block_size;   /* tokens per KV block */
    int64_t kv_memory;       /* KV budget in bytes per rank (-1 = unset: the workers derive it) */
    int64_t kv_blocks;       /* > 0: exactly this many blocks (overrides kv_memory) */
    double kv_mem_fraction;  /* CUDA: fraction of free memory after weights and buffers (0 = 0.9) */
    int32_t max_tokens_per_step; /* 0 = derived by the workers (ctl/sizing.h) */
    int32_t max_seqs;        /* running sequences; 0 = derived */
    int32_t max_context;     /* 0 = derived: the model's max_position unless the pool is smaller */
    int32_t max_waiting;     /* queued requests beyond which OVERLOADED is answered */
    char *listen;            /* ZeroMQ endpoint the ROUTER binds */
    int32_t log_level;       /* gm_log_level */
    gm_quant quant;
    gm_kv_dtype kv_dtype;
    bool lm_head_fp8;        /* lm_head = "fp8": the LM head in FP8 e4m3 */
    bool use_graphs;
    bool run_ahead;          /* two steps in flight (docs/ARCHITECTURE.md, "run-ahead"); --no-run-ahead */
    bool prefix_cache;       /* reuse the KV of cached prompt prefixes (daemon/sched.h); --prefix-cache false */
    int32_t speculative_tokens; /* speculative decoding's default k for requests that do not choose (0 = off;
                                 * docs/SPECULATIVE.md); --speculative-tokens K */
    char *worker_bin;        /* NULL = gemma-worker beside gemmad */
    int32_t shutdown_timeout_ms; /* SIGTERM: how long in-flight work may take to finish */
    int32_t ready_timeout_ms;    /* worker (re)start limit (0 = workers.h default) */
    int32_t step_timeout_ms;     /* step watchdog floor (steps.c has the rule); 0 = no watchdog */
    int32_t step_warmup_ms;      /* the watchdog's allowance for the first steps after each (re)start */
    int64_t max_prompt_bytes;    /* text of one prompt (chat: all texts); 0 = derived from the context */
    int64_t max_message_bytes;   /* ZMQ_MAXMSGSIZE of the client socket; 0 = derived from the prompt limit */
    int32_t client_stall_ms;     /* a client that takes no reply this long loses its requests; 0 = never */
    int64_t client_output_bytes; /* output held for one client that is not reading, at most */
    int64_t max_waiting_memory;  /* bytes of queued requests beyond which OVERLOADED is answered */
    char *config_path;       /* the file read, or NULL */
    /* the OpenAI-compatible HTTP API (daemon/front_http.c) */
    char *http_listen;       /* "HOST:PORT"; NULL = off */
    char *api_key;           /* bearer token the /v1/ paths require; NULL = none (from api_key or api_key_file) */
    char *api_key_file;      /* where api_key was read from, or NULL */
    int64_t http_max_body;   /* request body limit in bytes (413 beyond) */
    int32_t http_max_requests;    /* generation requests in flight over HTTP (429 beyond); 0 = no own limit */
    int32_t http_max_connections; /* open HTTP connections */
    char *served_model_name; /* the API's model name; NULL = the --model path's last component */
    glue_config cluster;     /* router, advertise, replica_name, curve* (daemon/cluster_glue.h) */
} gd_config;

/* What main should do after gd_config_from_args. */
typedef enum gd_action {
    GD_ACTION_RUN = 0,
    GD_ACTION_HELP,
    GD_ACTION_CHECK, /* --check-config: validate, print, exit */
} gd_action;

void gd_config_defaults(gd_config *c);
void gd_config_free(gd_config *c);

/* Read a libconfig file over c. Errors name the file and line:
 * "gemmad.conf:7: unknown setting 'max_seq'". */
gm_status gd_config_load_file(gd_config *c, const char *path);

/* Defaults, then --config FILE (if given), then every other flag. */
gm_status gd_config_from_args(int argc, char **argv, gd_config *c, gd_action *action);

/* Cross-field checks (model required unless backend null, ranges). */
gm_status gd_config_validate(const gd_config *c);

/* --check-config's look at the model: DIR exists and holds a config.json that parses, a tokenizer.model
 * (its absence is reported, not an error: token-id prompts still work) and safetensors whose headers
 * parse and hold the embedding; or a GGUF (a .gguf file, or a directory holding one): its metadata
 * gives a Gemma config, its vocabulary a tokenizer, and every tensor a Gemma name and a type the loader
 * dequantizes. One line per check goes to f. GM_OK when gemmad could load it. */
gm_status gd_config_check_model(const gd_config *c, FILE *f);

/* The worker spec these settings give (rank 0's device; the pool adds the rank to
 * it on cuda). Unset sizing keys stay 0: the workers derive them. */
gm_status gd_config_spec(const gd_config *c, gm_worker_spec *s);

/* The --help text. */
void gd_config_usage(FILE *f);

/* The settings in effect, one "key = value;" per line (a valid config file). */
void gd_config_print(const gd_config *c, FILE *f);

/* One string setting as libconfig reads it: key = "value"; with " and \ escaped. */
void gd_config_print_str(FILE *f, const char *key, const char *value);

#endif
