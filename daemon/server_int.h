/* server_int.h - what the modules of gemmad's loop share (not a public header).
 *
 *   server.c  lifecycle and the event loop (zmq_poll over the client ROUTER, the workers, the HTTP
 *             front door and the signal pipe)
 *   admit.c   one admission path for both front doors: a gd_gen_req is checked, tokenized and queued;
 *             request lifetime (complete, mark dirty, free)
 *   rpc.c     the protobuf front door: ZeroMQ clients, their messages, one ServerMessage per client per step
 *   steps.c   the step pipeline: plan and submit, collect tokens, stream them; the workers' state (start,
 *             failure, restart with back-off, the step watchdog) - never blocking the loop
 *   front_http.c  the OpenAI-compatible HTTP front door (--http-listen): JSON and server-sent events;
 *             front_http_routes.c: /v1/models, /health, /metrics, /tokenize, /detokenize
 *
 * A request (gd_req) belongs to one front door (gd_front); its output - token ids, a text delta with
 * stop strings applied, the finish - is produced once, in steps.c, and each front door formats it.
 *
 * Choices (n > 1, OpenAI's `n`): a request has r->n_ch output sequences, r->ch[0..n_ch) (one unless
 * n > 1; none only while it is being admitted; without sequences while its prompt is tokenized,
 * gd_req_tokenizing). Choice i samples with seed + i. What a front door
 * reads of choice c = &r->ch[i], at each flush of a dirty request:
 *   new token ids   c->seq ? c->seq->tokens + c->seq->n_prompt + c->n_sent, up to sched_seq_generated(c->seq)
 *                   (then set c->n_sent to it);
 *   new text        txo_ready(c->tx, &len) when c->tx (then txo_consume(c->tx) once sent);
 *   its end         c->done with c->finish, the first time (then set c->reported): the choice's last chunk;
 * gd_choice_pending(c) says whether any of these is there. The request ends (r->done: r->finish, r->err,
 * r->errmsg, its usage) once every choice has: a front door sends the request's end with the last choice
 * that finishes, and frees r after that. */
#ifndef GM_SERVER_INT_H
#define GM_SERVER_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/clock.h"
#include "common/model_config.h"
#include "common/sampling.h"
#include "common/tokenizer.h"
#include "ctl/step.h"
#include "daemon/cluster_glue.h"
#include "daemon/config.h"
#include "daemon/metrics.h"
#include "daemon/sched.h"
#include "daemon/server.h"
#include "daemon/textout.h"
#include "daemon/tokq.h"
#include "daemon/u64map.h"
#include "daemon/workers.h"
#include "proto/gemma.pb-c.h"

#define GD_VERSION "0.2.0"
#define GD_PROTOCOL_VERSION 1
#define GD_MAX_STOP 16
#define GD_MAX_STOP_LEN 256
#define GD_MAX_STOP_IDS SCHED_MAX_STOP_IDS
#define GD_MAX_CHAT_MSGS 1024
#define GD_RECV_BATCH 4096
#define GD_ID_MAX 256
#define GD_CLIENT_SNDHWM 256  /* replies ZeroMQ queues per client; beyond, they wait in the requests */
#define GD_STALL_RETRY_MS 20  /* how often a client that is not reading is tried again */

typedef Gemma__V1__ErrorCode err_code;
typedef Gemma__V1__FinishReason fin_reason;

typedef struct gd_client gd_client;
typedef struct gd_req gd_req;
typedef struct gd_pending gd_pending; /* admit.c: a request whose prompt is being tokenized */
typedef struct gd_beam gd_beam;       /* beam_run.c: a beam search request's search */

typedef enum gd_front {
    GD_FRONT_RPC = 0, /* a ZeroMQ client (rpc.c) */
    GD_FRONT_HTTP,    /* an HTTP connection (the OpenAI API) */
} gd_front;

/* One output sequence of a request (see above). */
typedef struct gd_choice {
    sched_seq *seq;   /* NULL until the request is queued (rejected before scheduling, or tokenizing) */
    gm_detok *dt;     /* NULL without a tokenizer */
    txo *tx;          /* its text, stop strings applied; NULL when rejected early in admission */
    int32_t n_sent;   /* generated tokens already handed to the front door */
    bool done;        /* finished: finish says how */
    bool reported;    /* its last chunk went out */
    fin_reason finish;
    /* log-probabilities, one entry per token this choice generated, in order (gd_req_logprobs reads them;
     * the request's lp_top alternatives each) */
    int32_t n_lp, lp_cap;
    float *lp;        /* [n_lp] token i's log-probability */
    int32_t *lp_ids;  /* [n_lp * lp_top] token i's alternatives at i * lp_top, most likely first */
    float *lp_alts;   /* [n_lp * lp_top] their log-probabilities, same layout */
} gd_choice;

struct gd_req {
    gd_front front;
    gd_client *cl;    /* RPC: the client connection */
    void *conn;       /* HTTP: the front door's per-request state; NULL once the connection is gone */
    uint64_t rid;     /* RPC: the client's request id; HTTP: a serial */
    gd_choice *ch;    /* [n_ch] its output sequences (owned) */
    int32_t n_ch;
    int32_t n_done;   /* choices finished */
    bool stream, done, dirty;
    int32_t n_prompt;
    int32_t min_tokens; /* stop strings are looked for from this many generated tokens on (every choice) */
    int32_t lp_top;     /* log-probability alternatives kept per token: the request's top_logprobs;
                         * -1 = none asked (gd_choice's lp arrays stay empty) */
    fin_reason finish; /* of the request: the last choice's, or the error / cancellation that ended all */
    err_code err;
    char *errmsg;     /* owned, or NULL */
    double t_arrival, t_sched, t_first, t_end; /* ms, monotonic */
    gd_pending *pend; /* while its prompt is tokenized off the loop (tokq.h); owned */
    uint64_t tok_job; /* that job's key in gd_server.tok_jobs, 0 = none */
    int64_t charge;   /* bytes counted in gd_server.waiting_bytes until it first runs or is freed */
    gd_beam *beam;    /* beam search (beam_run.c), or NULL; owned */
    float beam_length_penalty;
    bool beam_early_stopping;
    gd_req *dirty_next;
    gd_req *live_prev, *live_next; /* every request not yet freed, in arrival order */
};

struct gd_client {
    uint8_t id[GD_ID_MAX];
    size_t id_len;
    uint64_t hash;
    gd_client *hnext; /* same hash */
    u64map reqs;      /* request id -> gd_req */
    gd_req *dirty_head, *dirty_tail;
    bool dirty;
    gd_client *dirty_next;
    double stalled_since; /* ms: its queue has been full since then (0 = it is reading) */
    double retry_ms;      /* when to try it again */
};

typedef struct gd_counters {
    int64_t requests_total, requests_finished, requests_failed, requests_cancelled;
    int64_t prompt_tokens, completion_tokens, steps, worker_restarts;
} gd_counters;

/* A generation request as either front door hands it to admission (borrowed pointers). */
typedef enum gd_prompt_kind {
    GD_PROMPT_NONE = 0,
    GD_PROMPT_TEXT, /* tokenized by gemmad, BOS prepended */
    GD_PROMPT_IDS,  /* used verbatim */
    GD_PROMPT_CHAT, /* the model's chat template */
} gd_prompt_kind;

typedef struct gd_gen_req {
    gd_prompt_kind kind;
    const char *text;
    size_t text_len;
    const int32_t *ids;
    size_t n_ids;
    const gm_chat_msg *msgs;
    size_t n_msgs;
    int64_t max_tokens;        /* 0 = until a stop condition or the context is full */
    float temperature, top_p;  /* as sent: checked by admission; top_p 0 = 1 */
    int32_t top_k;
    uint64_t seed;
    const char *const *stops;  /* [n_stops] NUL-terminated */
    size_t n_stops;
    const int32_t *stop_ids;
    size_t n_stop_ids;
    bool stream, ignore_eos;
    /* sampling extensions (OpenAI / vLLM meanings; common/sampling.h says how the engine applies them) */
    bool logprobs;             /* the chosen token's log-probability with every token (gd_req_logprobs) */
    int32_t top_logprobs;      /* 0..20 most likely alternatives with every token (implies logprobs) */
    float presence_penalty;    /* [-2, 2]; 0 = off */
    float frequency_penalty;   /* [-2, 2]; 0 = off */
    float repetition_penalty;  /* > 0, finite; 0 or 1 = off (HF: logits of seen tokens divided or multiplied) */
    int32_t min_tokens;        /* EOS, <end_of_turn>, stop ids and stop strings cannot end the output before
                                * this many tokens; >= 0, <= max_tokens when that is set */
    int32_t n;                 /* sequences (choices) for this prompt; 0 or 1 = one, at most SCHED_MAX_N;
                                * choice i samples with seed + i, the prompt's KV is computed once (with a
                                * penalty: once per choice, daemon/sched.h); every setting above is per choice */
    /* beam search (beam_run.c): beam_width 2..8 beams, the n best hypotheses come back (n <= beam_width);
     * greedy only (temperature 0, no top_k / top_p), no penalties, min_tokens, stop strings, top_logprobs
     * or streaming */
    int32_t beam_width;        /* 0 or 1 = off */
    float length_penalty;      /* a hypothesis scores sum logprob / (generated tokens ^ length_penalty) */
    bool early_stopping;       /* end once beam_width hypotheses are finished (else: once none can improve) */
    int32_t spec_k;            /* speculative decoding: 0 = the daemon's default (--speculative-tokens), -1 = off,
                                * 1..SPEC_MAX_K tokens drafted per step (docs/SPECULATIVE.md) */
} gd_gen_req;

struct gd_server {
    const gd_config *cfg;
    void *zctx, *router;
    glue *glue;           /* CurveZMQ + router registration (daemon/cluster_glue.h) */
    wk_pool *pool;
    bool pool_ok;         /* the workers are ready and the scheduler exists: Health says serving */
    gm_status fatal;      /* the first start failed: gd_server_run returns it (gemmad exits non-zero) */
    double next_restart_ms;
    int32_t restart_backoff_ms;
    int64_t steps_since_start;  /* steps done since the workers' last (re)start */
    double plan_allow_ms[SCHED_MAX_OUTSTANDING]; /* watchdog allowance of each step in flight */
    double wd_p99_ms, wd_p99_tok_ms; /* p99 of met.step and met.step_tok, refreshed every few steps */
    gm_tokenizer *tok;
    tokq *tokq;           /* text and chat prompts are tokenized there, off the loop */
    u64map tok_jobs;      /* job -> gd_req waiting for its prompt's ids */
    uint64_t tok_serial;
    int32_t n_tokenizing; /* live requests whose ids are not back yet */
    int32_t tok_piece_max; /* bytes of the longest vocabulary piece */
    int64_t frame_limit;  /* ZMQ_MAXMSGSIZE of the client socket */
    int64_t waiting_bytes; /* memory of queued requests (admit.c: the charge rule) */
    int64_t freed_bytes;  /* request memory freed since the last malloc_trim */
    double last_trim_ms;
    gm_model_config mcfg;
    gm_chat_format chat;  /* the model's turn markers */
    int32_t max_context;
    sched *sch;
    sched_plan plans[SCHED_MAX_OUTSTANDING]; /* submitted, oldest first */
    double plan_sent_ms[SCHED_MAX_OUTSTANDING];
    int32_t n_plans;
    int32_t depth;        /* steps in flight at most: 2 with run-ahead, else 1 */
    double last_done_ms;  /* when the last step's result came */
    int32_t *step_tokens; /* [max_seqs] */
    sched_seq **failed;   /* [max_seqs] scratch of gd_workers_failed */
    u64map clients;       /* identity hash -> gd_client chain */
    int32_t n_clients;
    gd_client *dirty_head, *dirty_tail;   /* RPC clients with chunks to send */
    gd_req *http_dirty_head, *http_dirty_tail; /* HTTP requests with output to send */
    gd_req *live_head, *live_tail;
    uint64_t http_serial;
    bool stopping;
    double stop_deadline_ms;
    double start_ms;
    double next_report_ms;  /* periodic INFO line while busy */
    int64_t reported_steps;
    gd_counters c;
    gd_metrics met;       /* met.step and met.step_tok also feed the step watchdog (steps.c) */
    struct gd_http *http; /* the HTTP front door, or NULL (front_http.c) */
    /* rpc.c flush scratch */
    Gemma__V1__GenerateChunk *chunks;
    Gemma__V1__GenerateChunk **chunk_ptrs;
    Gemma__V1__Usage *usages;
    gd_req **chunk_reqs;
    size_t chunk_cap;
    Gemma__V1__TokenLogprobs *lps, **lp_ptrs; /* [lp_cap] the chunks' log-probabilities */
    size_t lp_cap;
    ProtobufCBinaryData *lp_strs; /* [lp_strs_cap] their alternatives' token strings (borrowed from tok) */
    size_t lp_strs_cap;
    uint8_t *txbuf;
    size_t txcap;
    gd_req **finished; /* requests to free after their final chunk went out */
    size_t n_finished, finished_cap;
};

/* True when choice c has something its front door has not sent: tokens, text, or its end. */
static inline bool gd_choice_pending(const gd_choice *c)
{
    size_t tl = 0;
    return (c->seq && sched_seq_generated(c->seq) > c->n_sent) || (c->tx && txo_ready(c->tx, &tl) && tl > 0) ||
           (c->done && !c->reported);
}

/* True while r's prompt is tokenized off the loop (admit.c): its admission completes later, queued or
 * refused; it has its choices but no sequences yet, and nothing of it is dirty. */
static inline bool gd_req_tokenizing(const gd_req *r)
{
    return r->tok_job != 0;
}

/* ---- admit.c ---- */

/* A new request of front f (not yet admitted), linked into the live list; NULL when out of memory. */
gd_req *gd_req_new(gd_server *s, gd_front f, uint64_t rid);
/* Check g, tokenize its prompt and queue it; a rejection completes r with the error code and reason
 * (r->done, r->finish == FINISH_ERROR), which its front door sends like any final chunk. */
void gd_admit(gd_server *s, gd_req *r, const gd_gen_req *g);
/* End a request, every choice not finished yet with it: their KV blocks are freed now; the final chunks
 * go out at the next flush. */
void gd_req_complete(gd_server *s, gd_req *r, fin_reason fr, err_code code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Choice i of r finished normally (length, stop): its text is flushed; the request completes with the
 * last one. */
void gd_choice_complete(gd_server *s, gd_req *r, int32_t i, fin_reason fr);
/* Queue r's new output for its front door's next flush. */
void gd_req_mark_dirty(gd_server *s, gd_req *r);
/* Free r (its sequence, decoder, text output) and unlink it from its front door and the live list. */
void gd_req_free(gd_server *s, gd_req *r);
/* Complete every live request (shutdown deadline). */
void gd_cancel_all(gd_server *s, err_code code, const char *why);
/* Log-probabilities of token i of r's choice ch: i counts the choice's generated tokens from 0, in the
 * order their ids go out (a final stop token - EOS, <end_of_turn>, a stop id - has its entry too, though
 * it is not text). False when r asked for none (gd_gen_req.logprobs / top_logprobs), ch is not a choice
 * of r or token i has none yet. *lp gets the token's log-probability (log_softmax of the raw logits,
 * common/sampling.h); *top_ids and *top_lps point at *n_top (= the request's top_logprobs) alternatives,
 * most likely first, ties to the lower id; borrowed until the next step or gd_req_free. An entry the
 * workers failed to return reads NaN with ids -1. Layout (c = &r->ch[ch]): c->lp[i],
 * c->lp_ids[i * r->lp_top + k], c->lp_alts[i * r->lp_top + k]. */
bool gd_req_logprobs(const gd_req *r, int32_t ch, int32_t i, float *lp, const int32_t **top_ids,
                     const float **top_lps, int32_t *n_top);
/* Append the log-probabilities of the newest token of r's choice ch (lp NULL: the workers sent none). */
void gd_req_add_logprobs(gd_req *r, int32_t ch, const gm_token_logprobs *lp);
/* Before the client socket is bound: the longest piece of the tokenizer, the frame limit (from
 * ctx_bound, the largest context the workers can choose), the tokenizer thread. */
gm_status gd_admit_open(gd_server *s, int64_t ctx_bound);
void gd_admit_close(gd_server *s);
/* The tokenizer thread's socket polled readable: finish the admission of those requests. */
void gd_admit_on_tokens(gd_server *s);
/* r runs for the first time: its memory no longer counts against max_waiting_memory. */
void gd_req_uncharge(gd_server *s, gd_req *r);
/* Give freed request memory back to the system (malloc_trim) after large frees, at most once a second. */
void gd_admit_trim(gd_server *s, double now);

/* ---- beam_run.c ---- */

/* r's sequences came from the scheduler (seqs[0..width), a beam group): start its search; the choices
 * hold seqs[0..n_ch), the search the rest. */
gm_status gd_beam_start(gd_server *s, gd_req *r, sched_seq **seqs, int32_t width);
/* A step entry of beam q of r was committed (got: its log-probabilities lp came; tok: what the
 * workers returned): advance the search when the round is complete, or deliver its result. */
void gd_beam_on_step(gd_server *s, gd_req *r, sched_seq *q, bool got, int32_t tok, const gm_token_logprobs *lp);
/* r ends before its search did (gd_req_complete): every beam ends, the choices report no tokens. */
void gd_beam_end(gd_server *s, gd_req *r);
/* Free r's search and the beams it holds (gd_req_free, before the choices). */
void gd_beam_free(gd_server *s, gd_req *r);

/* ---- rpc.c ---- */

gm_status gd_rpc_open(gd_server *s);   /* the ROUTER socket, bound (before the model loads) */
void gd_rpc_read(gd_server *s);        /* up to GD_RECV_BATCH client messages, without blocking */
void gd_rpc_flush(gd_server *s);       /* one ServerMessage per dirty client */
long gd_rpc_poll_ms(gd_server *s, long cap); /* how long the loop may sleep: stalled clients are retried */
void gd_rpc_mark_dirty(gd_server *s, gd_req *r);
void gd_rpc_forget(gd_server *s, gd_req *r); /* r leaves its client's table */
void gd_rpc_close(gd_server *s);       /* every client and its requests, then the socket */

/* ---- front_http.c ---- */

gm_status gd_http_open(gd_server *s);      /* listen when cfg->http_listen is set (before the model loads) */
void gd_http_ready(gd_server *s);          /* the model is loaded: generation may be routed */
int gd_http_fd(const gd_server *s, double now); /* the fd to poll for reading; -1 without HTTP or while paced */
long gd_http_timeout_ms(gd_server *s, long t, double now); /* t, or less when HTTP wants to run sooner */
void gd_http_run(gd_server *s, bool force);    /* accept, read, write, call back (unless paced); never blocks */
void gd_http_flush(gd_server *s);          /* per dirty HTTP request, one write with all it is owed */
void gd_http_close(gd_server *s);          /* every HTTP request (freed) and the listener */

/* Flush every front door and hand the bytes to the sockets now (before a long blocking call). */
void gd_flush_fronts(gd_server *s);

/* ---- steps.c ---- */

void gd_steps_submit(gd_server *s);           /* plan and submit while fewer than depth are in flight */
/* Every running request ends with WORKER_FAILED, every waiting one with UNAVAILABLE; the workers are
 * killed and a new set launched (without waiting for it). */
void gd_workers_failed(gd_server *s, const char *why);
/* The first launch (gd_server_new); the scheduler is made when the workers are first ready. */
gm_status gd_workers_start(gd_server *s);
/* Before each sleep: move the pool's start on, relaunch failed workers when due, run the step
 * watchdog. Not GM_OK only when the FIRST start failed: gemmad then exits. */
gm_status gd_workers_tick(gd_server *s, double now);
/* The workers' socket polled readable (results, or Hello/Ready while starting). */
void gd_workers_on_readable(gd_server *s);
/* SIGCHLD, or a quiet poll: check that the workers are alive. */
void gd_workers_on_child(gd_server *s);
/* The longest the loop may sleep (ms) for the workers' sake: a start in progress, a restart due, the
 * watchdog deadline of the oldest step; at most cap. */
long gd_workers_poll_ms(gd_server *s, double now, long cap);

#endif
