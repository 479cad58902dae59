/* gemma_client.h - C client library for gemmad (protobuf gemma.v1 over ZeroMQ).
 *
 * One gmc_client is one connection (a ZeroMQ DEALER socket) to one gemmad. Many
 * generate requests may be in flight on it at once (gemma-bench drives 1000
 * concurrent streams through a single client); their output arrives as events
 * that gmc_poll() hands back, tagged with the request id and the caller's
 * user pointer. Blocking helpers (gmc_generate, gmc_health, gmc_stats) are
 * built on the same machinery and can be mixed with in-flight streams: events
 * of other requests that arrive meanwhile are queued for the next gmc_poll().
 *
 * Threading: a gmc_client is not thread-safe; use one per thread.
 *
 * Typical streaming use:
 *
 *     gmc_client *c;
 *     if (gmc_connect("tcp://127.0.0.1:5555", 5000, &c) != GMC_OK) { ...gmc_connect_error()... }
 *     gmc_params p;
 *     gmc_params_init(&p);
 *     p.prompt = "Why is the sky blue?";
 *     p.max_tokens = 64;
 *     uint64_t id;
 *     gmc_submit(c, &p, NULL, &id);
 *     gmc_event ev[64];
 *     for (bool done = false; !done;) {
 *         int n = gmc_poll(c, ev, 64, 1000);   // < 0: transport error
 *         for (int i = 0; i < n; i++) {
 *             fwrite(ev[i].text, 1, ev[i].text_len, stdout);
 *             if (ev[i].finished) done = true; // ev[i].error != GMC_OK on failure
 *         }
 *     }
 *     gmc_close(&c);
 */
#ifndef GEMMA_CLIENT_H
#define GEMMA_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Major protocol version this library speaks (gemma.v1). */
#define GMC_PROTOCOL_VERSION 1

/* Result and error codes. Values 1..99 are the daemon's typed errors and equal
 * proto/gemma.proto's ErrorCode numbers; 100+ are raised by the library itself. */
typedef enum gmc_code {
    GMC_OK = 0,
    GMC_ERR_INVALID_ARGUMENT = 1,    /* bad parameter (temperature < 0, top_p outside (0,1], ...) */
    GMC_ERR_PROMPT_TOO_LONG = 2,     /* prompt + max_tokens can never fit the context / KV pool */
    GMC_ERR_OVERLOADED = 3,          /* the daemon's queue is full; retry later */
    GMC_ERR_CANCELLED = 4,           /* the request was cancelled */
    GMC_ERR_INTERNAL = 5,            /* a daemon bug or unexpected failure */
    GMC_ERR_WORKER_FAILED = 6,       /* a worker process died or failed the step; the daemon restarts them */
    GMC_ERR_UNSUPPORTED_VERSION = 7, /* the daemon speaks another major protocol version */
    GMC_ERR_MALFORMED = 8,           /* the daemon could not decode our frame */
    GMC_ERR_NOT_FOUND = 9,           /* e.g. cancel of an unknown request id */
    GMC_ERR_SHUTTING_DOWN = 10,      /* the daemon is stopping and accepts no new work */
    GMC_ERR_UNKNOWN_TYPE = 11,       /* a message type the daemon does not know */
    GMC_ERR_DUPLICATE_ID = 12,       /* a request id already in flight on this connection */
    GMC_ERR_UNAVAILABLE = 13,        /* no worker is up (loading, or restarting after a failure); retry later */
    GMC_ERR_NONFINITE_LOGITS = 14,   /* the model's logits for this request were NaN or Inf */
    GMC_ERR_TIMEOUT = 100,           /* no answer within the timeout (library) */
    GMC_ERR_TRANSPORT = 101,         /* ZeroMQ failure, bad endpoint (library) */
    GMC_ERR_PROTOCOL = 102,          /* the daemon sent something we cannot decode (library) */
    GMC_ERR_NOMEM = 103,             /* allocation failed (library) */
} gmc_code;

/* Short fixed name of a code, e.g. "PROMPT_TOO_LONG". Never NULL. */
const char *gmc_code_name(gmc_code c);

/* Why a generation ended. */
typedef enum gmc_finish {
    GMC_FINISH_NONE = 0,      /* not finished yet (a streamed chunk) */
    GMC_FINISH_LENGTH = 1,    /* max_tokens reached, or the context is full */
    GMC_FINISH_STOP = 2,      /* EOS, <end_of_turn> (chat), a stop id or a stop string */
    GMC_FINISH_CANCELLED = 3, /* gmc_cancel, or the daemon cancelled it (shutdown) */
    GMC_FINISH_ERROR = 4,     /* see gmc_event.error / error_message */
} gmc_finish;

/* "length" | "stop" | "cancelled" | "error" | "none". */
const char *gmc_finish_name(gmc_finish f);

typedef struct gmc_client gmc_client;

/* One chat message; role is "user" or "model" ("assistant" accepted). */
typedef struct gmc_chat_msg {
    const char *role;
    const char *text;
} gmc_chat_msg;

/* Everything a generate request carries. Initialise with gmc_params_init()
 * and set what you need; pointers are borrowed only for the gmc_submit /
 * gmc_generate call. Exactly one of prompt, prompt_ids, messages is used
 * (first non-empty in that order). */
typedef struct gmc_params {
    /* prompt: UTF-8 text (the daemon tokenizes it and prepends BOS) ... */
    const char *prompt;
    size_t prompt_len; /* 0 = strlen(prompt) */
    /* ... or token ids, taken verbatim (include BOS = 2 yourself) ... */
    const int32_t *prompt_ids;
    int32_t n_prompt_ids;
    /* ... or chat messages, formatted with Gemma's chat template; generation
     * also stops at <end_of_turn> (107). */
    const gmc_chat_msg *messages;
    int32_t n_messages;

    int32_t max_tokens; /* tokens to generate; 0 = until EOS or the context is full */
    float temperature;  /* 0 = greedy (default); must be >= 0 and finite */
    int32_t top_k;      /* 0 = off (default) */
    float top_p;        /* (0, 1], 1 = off (default) */
    uint64_t seed;      /* the draw at each position depends only on (seed, position) */

    const char *const *stop; /* [n_stop] stop strings; the text stops before the match */
    int32_t n_stop;          /* at most 16, each at most 256 bytes */
    const int32_t *stop_ids; /* [n_stop_ids] extra stop token ids */
    int32_t n_stop_ids;      /* at most 64 */
    bool ignore_eos;         /* keep going past EOS (benchmarks force full length) */
    int32_t n;               /* sequences from this prompt (OpenAI's n): 0 or 1 = one, at most 64;
                                sequence i samples with seed + i; events say which (index).
                                gmc_generate takes one only. */

    /* OpenAI / vLLM sampling extensions (0 = off for each) */
    float presence_penalty;   /* [-2, 2]: logit -= p for tokens among the outputs so far */
    float frequency_penalty;  /* [-2, 2]: logit -= f * a token's count among the outputs */
    float repetition_penalty; /* > 0 (0 = unset = 1): tokens of prompt or outputs, logit / r if > 0 else * r */
    int32_t min_tokens;       /* EOS, <end_of_turn>, stop ids and stop strings cannot end the output before
                                 this many tokens (<= max_tokens when that is set) */
    bool logprobs;            /* each event carries the log-probability of each of its tokens */
    int32_t top_logprobs;     /* and this many (0..20) most likely alternatives (implies logprobs) */
    int32_t speculative_tokens; /* speculative decoding by prompt lookup (docs/SPECULATIVE.md): 0 = the
                                   daemon's default, -1 = off, 1..16 tokens drafted per step */

    /* beam search: beam_width (2..8; 0 or 1 = off) hypotheses followed, the n best returned whole in
     * one final event each (stream must be false; greedy only) */
    int32_t beam_width;
    float length_penalty;     /* score = sum logprob / (generated tokens ^ length_penalty); default 1 */
    bool early_stopping;      /* end once beam_width hypotheses are finished */

    bool stream;          /* true (default): one event per decoded step; false: one final event */
    uint64_t request_id;  /* 0 = assigned by the library (unique per client); else yours,
                             must be unique among this client's in-flight requests */
} gmc_params;

/* Defaults: greedy, top_k 0, top_p 1, max_tokens 0, seed 0, stream on. */
void gmc_params_init(gmc_params *p);

/* Timings and counts measured by the daemon; in the final event. */
typedef struct gmc_usage {
    int32_t prompt_tokens;
    int32_t completion_tokens;
    double queue_ms;  /* arrival -> first scheduled */
    double ttft_ms;   /* arrival -> first token decoded */
    double total_ms;  /* arrival -> finished */
    int32_t preemptions; /* times this request was preempted and recomputed */
    int32_t cached_tokens; /* prompt tokens found in gemmad's prefix cache (their prefill skipped) */
} gmc_usage;

/* Bytes that need not be text: not NUL-terminated, possibly part of a UTF-8 character. */
typedef struct gmc_bytes {
    const char *data;
    size_t len;
} gmc_bytes;

/* Log-probabilities of one generated token: log_softmax of the model's raw logits at its position
 * (before penalties, min_tokens, temperature, top_k and top_p). */
typedef struct gmc_logprob {
    float logprob;              /* the token's */
    int32_t n_top;              /* gmc_params.top_logprobs */
    const int32_t *top_ids;     /* [n_top] the most likely tokens, most likely first */
    const float *top_logprobs;  /* [n_top] theirs */
    gmc_bytes token;            /* the token alone as gemmad's tokenizer spells it (a leading space for
                                   "\u2581", "<eos>" for a control token, one byte of a character for a
                                   byte-fallback token); empty when gemmad has no tokenizer */
    const gmc_bytes *top_tokens; /* [n_top] the alternatives', likewise (NULL when n_top is 0, or when
                                    the library ran out of memory) */
} gmc_logprob;

/* One piece of a request's output. All pointers are borrowed until the next
 * gmc_poll / blocking call on the same client. */
typedef struct gmc_event {
    uint64_t request_id;
    void *user;              /* the pointer given to gmc_submit */
    const int32_t *tokens;   /* [n_tokens] new token ids (stream: usually 1; non-stream: all) */
    int32_t n_tokens;
    const gmc_logprob *logprobs; /* [n_logprobs] with gmc_params.logprobs: one per token, in order */
    int32_t n_logprobs;
    const char *text;        /* UTF-8 delta, not NUL-terminated; empty without a tokenizer */
    size_t text_len;
    int32_t index;           /* n > 1: the sequence (0..n-1) this event is about */
    bool index_finished;     /* the last event of that sequence (finish_reason says how) */
    bool finished;           /* last event of this request (every sequence finished); the id is free
                                again afterwards */
    gmc_finish finish_reason; /* when index_finished or finished */
    gmc_code error;          /* when finish_reason == GMC_FINISH_ERROR (or a library failure) */
    const char *error_message; /* "" when none */
    gmc_usage usage;         /* when finished */
} gmc_event;

/* Connect to endpoint ("tcp://host:port", "ipc:///path"). With timeout_ms > 0
 * the daemon must answer a health probe within that time (else GMC_ERR_TIMEOUT
 * and *out stays NULL); timeout_ms also becomes the default timeout of the
 * blocking calls. With 0, connect lazily (ZeroMQ reconnects in the background)
 * and blocking calls wait forever. On failure gmc_connect_error() says why. */
gmc_code gmc_connect(const char *endpoint, int timeout_ms, gmc_client **out);
/* Detail of the last failed gmc_connect on this thread. */
const char *gmc_connect_error(void);

/* Options of gmc_connect_with. Initialise with gmc_connect_opts_init. */
typedef struct gmc_connect_opts {
    int timeout_ms; /* as gmc_connect's timeout_ms (default 0) */
    /* CurveZMQ (encryption + authentication, for a gemmad or gemma-router with
     * curve = true): give the server's public key and this client's key pair,
     * as files written by gemma-keygen ... */
    const char *server_key_file; /* the server's NAME.key */
    const char *client_key_file; /* this client's NAME.key_secret (mode 0600) */
    /* ... or as Z85 text (40 characters each); these win over the files. */
    const char *server_key;
    const char *client_public_key;
    const char *client_secret_key;
    /* All NULL: a plain connection, as gmc_connect. */
} gmc_connect_opts;

/* Defaults: no timeout, plain. */
void gmc_connect_opts_init(gmc_connect_opts *o);

/* gmc_connect with options (o may be NULL). With CurveZMQ, a server that
 * refuses this client's key makes the calls fail with GMC_ERR_TRANSPORT
 * ("refused ... key") as soon as the handshake is refused (or GMC_ERR_TIMEOUT
 * when the server says nothing, e.g. a wrong server key). A key file that
 * cannot be read or parsed is GMC_ERR_INVALID_ARGUMENT. */
gmc_code gmc_connect_with(const char *endpoint, const gmc_connect_opts *o, gmc_client **out);

/* Close the connection; requests still in flight are abandoned (the daemon
 * notices and cancels them). Accepts NULL; nulls *c. */
void gmc_close(gmc_client **c);

/* Detail message of the client's last failure ("" if none). Borrowed. */
const char *gmc_last_error(const gmc_client *c);

/* Send a generate request without waiting. *id (may be NULL) receives the
 * request id; user comes back in every event of this request. Parameter
 * checks happen in the daemon: a bad request ends with one finished event
 * carrying the typed error. Fails here only for a local problem (no prompt
 * at all, transport). Never blocks for long (queues up to 1,000,000 messages). */
gmc_code gmc_submit(gmc_client *c, const gmc_params *p, void *user, uint64_t *id);

/* Wait up to timeout_ms (0 = don't wait, -1 = forever) for output, then
 * return up to max_events events (>= 0), or -(gmc_code) on a transport error.
 * Returns as soon as anything is available; drains everything already
 * received (up to max_events) without further waiting. */
int gmc_poll(gmc_client *c, gmc_event *events, int max_events, int timeout_ms);

/* Ask the daemon to stop a request; it ends with a finished event whose
 * finish_reason is GMC_FINISH_CANCELLED. Non-blocking. */
gmc_code gmc_cancel(gmc_client *c, uint64_t request_id);

/* Requests submitted and not yet finished on this client. */
int64_t gmc_in_flight(const gmc_client *c);

/* The ZeroMQ socket (for zmq_poll on ZMQ_POLLIN with your own loop; then call
 * gmc_poll with timeout 0). Borrowed. Events may already be queued inside the
 * library: check gmc_pending() before sleeping on the socket. */
void *gmc_socket(gmc_client *c);
/* Events received and not yet returned by gmc_poll. */
int64_t gmc_pending(const gmc_client *c);

/* ---- blocking calls (timeout_ms: 0 = the client's default, -1 = forever) ---- */

/* The whole result of one generation. */
typedef struct gmc_result {
    int32_t *tokens; /* [n_tokens] generated ids; caller frees with gmc_result_free */
    int32_t n_tokens;
    char *text;      /* NUL-terminated UTF-8 (stop string trimmed); caller frees */
    size_t text_len;
    gmc_finish finish_reason;
    gmc_code error;
    char error_message[256];
    gmc_usage usage;
} gmc_result;

/* Submit and wait for the end. on_chunk (may be NULL) sees every streamed
 * event first (p->stream decides whether there is more than one). Returns
 * GMC_OK when the generation finished (see r->finish_reason; the daemon's
 * typed error, if any, is also returned and is in r->error). */
gmc_code gmc_generate(gmc_client *c, const gmc_params *p, int timeout_ms,
                      void (*on_chunk)(const gmc_event *ev, void *arg), void *arg, gmc_result *r);
void gmc_result_free(gmc_result *r);

typedef struct gmc_health {
    bool serving;          /* ready to accept generate requests */
    bool shutting_down;
    char model[256];       /* model directory or "" */
    char backend[16];      /* "cpu" | "cuda" | "null" */
    int32_t tp;
    uint32_t protocol_version;
    char version[32];      /* gemmad version string */
    double uptime_s;
} gmc_health;

gmc_code gmc_health_check(gmc_client *c, int timeout_ms, gmc_health *out);

typedef struct gmc_stats {
    int32_t running;           /* sequences in the running batch */
    int32_t waiting;           /* queued, not admitted (includes preempted) */
    int64_t kv_blocks_total;
    int64_t kv_blocks_used;
    int64_t kv_blocks_free;
    int32_t kv_block_size;
    int64_t requests_total;    /* accepted generate requests since start */
    int64_t requests_finished;
    int64_t requests_failed;   /* ended with an error */
    int64_t requests_cancelled;
    int64_t preemptions;       /* sequences preempted since start */
    int64_t prompt_tokens;     /* since start */
    int64_t completion_tokens; /* since start */
    int64_t steps;             /* engine steps run */
    double tokens_per_s;       /* completion tokens/s over the last few seconds */
    double ttft_p50_ms, ttft_p99_ms;   /* over the last 1024 finished requests */
    double tpot_p50_ms, tpot_p99_ms;   /* time per output token after the first */
    double queue_p50_ms, queue_p99_ms;
    double step_avg_ms;        /* mean engine step time over the last 256 steps */
    int32_t clients;           /* connected clients with requests in flight */
    int64_t worker_restarts;
    double uptime_s;
    bool prefix_cache;             /* automatic prefix caching on */
    int64_t kv_blocks_cached;      /* blocks holding cached prefixes, reusable */
    int64_t prefix_cache_queries;  /* prompt tokens looked up */
    int64_t prefix_cache_hits;     /* of those, found (prefill skipped) */
    double prefix_cache_hit_rate;  /* hits / queries */
    int64_t spec_steps;            /* speculative decoding: verify steps */
    int64_t spec_drafted;          /* tokens drafted in them */
    int64_t spec_accepted;         /* of those, confirmed by the model */
    double spec_acceptance_rate;   /* accepted / drafted */
} gmc_stats;

gmc_code gmc_stats_get(gmc_client *c, int timeout_ms, gmc_stats *out);

#ifdef __cplusplus
}
#endif
#endif
