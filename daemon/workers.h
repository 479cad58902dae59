/* workers.h - the coordinator's side of its workers: spawn, step plans out, tokens back, restart.
 *
 * gemmad runs one gemma-worker process per tensor-parallel rank (fork/exec of the
 * gemma-worker binary beside gemmad). Every rank receives every step plan over
 * the control plane (proto/control.proto on ZeroMQ ipc://); rank 0 answers with
 * the sampled tokens. Up to two steps are in flight (run-ahead): the second is
 * sent before the first one's tokens are back, and a decode whose token is not
 * known yet carries -1 (worker/engine.h: the slot's previous sample).
 *
 * Plans go out as deltas: the pool remembers, per slot, how many blocks of the
 * slot's table and which sampling parameters the ranks already hold, and sends
 * only the blocks appended since (the whole table, flagged reset, when an entry
 * starts at position 0, shrinks, or follows a restart or a failed step). So a
 * caller must keep a slot's block table append-only between entries that start
 * at position 0 - the scheduler does: a slot changes hands only through a new
 * or recomputed sequence, which starts at 0. */
#ifndef GM_WORKERS_H
#define GM_WORKERS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "worker/engine.h"

typedef struct wk_pool wk_pool;

typedef struct wk_pool_opts {
    const char *worker_bin; /* path of gemma-worker; NULL = beside the running executable */
    gm_engine_opts engine;  /* what every rank's engine is created with (tp_rank/comm filled per rank) */
    int32_t log_level;      /* gm_log_level for the workers */
    int32_t ready_timeout_ms; /* how long a (re)start may take before it fails (0 = 600 s) */
} wk_pool_opts;

/* Spawn engine.tp_size workers and wait until every rank has loaded its shard
 * (their progress goes to gemmad's stderr). Fails with the worker's own error
 * message (e.g. the loader's) when a rank cannot start. */
gm_status wk_pool_start(const wk_pool_opts *o, wk_pool **out);

/* KV blocks each rank's pool holds (the smallest over ranks). */
int64_t wk_pool_kv_blocks(const wk_pool *p);
/* The model config the workers loaded. */
const gm_model_config *wk_pool_config(const wk_pool *p);

/* The ZeroMQ socket to poll for ZMQ_POLLIN (results and worker errors). Borrowed. */
void *wk_pool_socket(wk_pool *p);

/* Send one step plan to every rank (non-blocking; at most two steps in flight;
 * the ranks run them in order). The arrays in seqs are copied before return. */
gm_status wk_pool_submit(wk_pool *p, const gm_seq_step *seqs, int32_t n_seqs);

/* After the socket polled readable: if the oldest in-flight step's result is
 * there, copy its n_seqs sampled tokens into tokens (-1 where no logits were
 * asked), set *done and return GM_OK (call again for the next one). A
 * worker-side failure of any step in flight returns its status with the
 * worker's message and abandons every step in flight; the server then restarts
 * the pool (wk_pool_restart), though the ranks can still take new plans. */
gm_status wk_pool_collect(wk_pool *p, int32_t *tokens, int32_t n_seqs, bool *done);

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
