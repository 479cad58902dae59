/* workers.h - the coordinator's side of its workers: spawn, step plans out, tokens back, restart.
 *
 * gemmad runs one gemma-worker process per tensor-parallel rank (fork/exec of the
 * gemma-worker binary beside gemmad; its argv names only the control socket,
 * its rank and session). Each rank says Hello and gets its worker spec
 * (ctl/spec.h) over the control plane (proto/control.proto on ZeroMQ ipc://),
 * loads its engine and answers Ready with the sizes it decided and the spec as
 * it received it, which the pool compares field by field. Every rank receives
 * every step plan; rank 0 answers with the sampled tokens. Up to two steps are
 * in flight (run-ahead): the second is sent before the first one's tokens are
 * back, and a decode whose token is not known yet carries GM_TOKEN_PREVIOUS
 * (ctl/step.h).
 *
 * Plans go out as deltas against what the ranks hold per slot (ctl/slots.h),
 * so a caller must keep a slot's block table append-only between entries that
 * start at position 0 - the scheduler does. */
#ifndef GM_WORKERS_H
#define GM_WORKERS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/model_config.h"
#include "common/status.h"
#include "ctl/sizing.h"
#include "ctl/spec.h"
#include "ctl/step.h"

typedef struct wk_pool wk_pool;

typedef struct wk_pool_opts {
    const char *worker_bin; /* path of gemma-worker; NULL = beside the running executable */
    gm_worker_spec spec;    /* what every rank's engine is created with; device is rank 0's (cuda:
                             * rank r gets device + r) */
    int32_t log_level;      /* gm_log_level for the workers */
    int32_t ready_timeout_ms; /* how long a (re)start may take before it fails (0 = 600 s) */
} wk_pool_opts;

/* Spawn spec.tp_size workers and wait until every rank has loaded its shard
 * (their progress goes to gemmad's stderr); logs each size the ranks decided
 * and why. Fails with the worker's own error message (e.g. the loader's, or
 * "does not fit") when a rank cannot start. A restart asks for exactly the
 * sizes of the first start. */
gm_status wk_pool_start(const wk_pool_opts *o, wk_pool **out);

/* KV blocks each rank's pool holds (the smallest over ranks). */
int64_t wk_pool_kv_blocks(const wk_pool *p);
/* What the ranks decided: pool, max_seqs, max_tokens, max_context (each the
 * smallest over ranks, as sent in Start), with rank 0's reasons. */
const gm_sizing *wk_pool_sizing(const wk_pool *p);
/* The spec sent to rank r at the last (re)start (*out), and the one rank r says
 * it received (NULL before it is ready). The pool refuses to start when they differ. */
void wk_pool_rank_spec(const wk_pool *p, int32_t r, gm_worker_spec *out);
const gm_worker_spec *wk_pool_spec_echo(const wk_pool *p, int32_t r);
/* The model config the workers loaded. */
const gm_model_config *wk_pool_config(const wk_pool *p);

/* The ZeroMQ socket to poll for ZMQ_POLLIN (results and worker errors). Borrowed. */
void *wk_pool_socket(wk_pool *p);

/* Send one step plan to every rank (non-blocking; at most two steps in flight;
 * the ranks run them in order), with the block copies (copy-on-write) every
 * rank runs before it. The arrays in seqs and copies are copied before return. */
gm_status wk_pool_submit(wk_pool *p, const gm_seq_step *seqs, int32_t n_seqs, const gm_block_copy *copies,
                         int32_t n_copies);

/* After the socket polled readable: if the oldest in-flight step's result is
 * there, copy its n_seqs sampled tokens into tokens (-1 where no logits were
 * asked), set *done and return GM_OK (call again for the next one). A
 * worker-side failure of any step in flight returns its status with the
 * worker's message and abandons every step in flight; the server then restarts
 * the pool (wk_pool_restart), though the ranks can still take new plans. */
gm_status wk_pool_collect(wk_pool *p, int32_t *tokens, int32_t n_seqs, bool *done);

/* The log-probabilities rank 0 returned with the step wk_pool_collect finished last: entry i's at
 * [i] where (*has)[i] (entries whose sampling asked, ctl/step.h); NULL (and *has NULL) when no entry
 * did. Borrowed until the next wk_pool_collect. */
const gm_token_logprobs *wk_pool_logprobs(const wk_pool *p, const uint8_t **has);

/* True while a step is in flight; wk_pool_inflight: how many (0..2). */
bool wk_pool_busy(const wk_pool *p);
int32_t wk_pool_inflight(const wk_pool *p);

/* Reap children without blocking; false when any rank has exited or been killed. */
bool wk_pool_alive(wk_pool *p);

/* Kill all ranks (SIGKILL), reap them, and start a fresh set; the KV contents are lost. */
gm_status wk_pool_restart(wk_pool *p);

/* Ask ranks to exit, wait briefly, then kill; frees p and nulls it. */
void wk_pool_destroy(wk_pool **p);

#endif
