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
    const char *tmpdir;     /* where the control directories go; NULL = $TMPDIR or /tmp */
} wk_pool_opts;

/* The life of one worker set ("session"). Every (re)start is a new session with a fresh private
 * directory and control socket; the loop drives it with wk_pool_advance and never blocks on it:
 *
 *   wk_pool_launch:  STOPPED/READY/FAILED -> REAPING (ranks of the last session were killed and are not
 *                    reaped yet) -> STARTING (ranks spawned: Hello -> spec, Ready) -> READY
 *   any failure:     -> FAILED (wk_pool_error says why); the caller decides when to launch again */
typedef enum wk_state {
    WK_STATE_STOPPED = 0, /* no ranks yet */
    WK_STATE_REAPING,     /* waiting (at most a few seconds) for the killed ranks of the last session */
    WK_STATE_STARTING,    /* ranks spawned, not all ready: poll the socket, call wk_pool_advance */
    WK_STATE_READY,       /* every rank ready: plans may be submitted */
    WK_STATE_FAILED,      /* the last launch failed (wk_pool_error) or a rank died (wk_pool_alive) */
} wk_state;

/* A pool without processes: checks o, finds the worker binary, removes the control directories of
 * gemmads that are gone (below). Then wk_pool_launch. */
gm_status wk_pool_new(const wk_pool_opts *o, wk_pool **out);

/* Start a session without waiting: SIGKILL every rank still running (reaped in the background), a fresh
 * directory TMPDIR/gemmad-XXXXXX (mode 0700, an "owner" file with gemmad's pid) with its ipc:// control
 * socket, and the ranks spawned (or, while killed ranks are still being reaped, spawned by
 * wk_pool_advance). Returns the state; FAILED when something failed at once (wk_pool_error). */
wk_state wk_pool_launch(wk_pool *p);

/* Make progress without blocking (call after the socket polled readable, after SIGCHLD, and at least
 * every wk_pool_advance_ms): reap killed ranks, spawn, answer Hellos with specs, relay NCCL ids, take
 * Ready messages (the spec echo, the sizes), fail on a rank that exits or a launch older than
 * ready_timeout_ms, send Start when all are ready. Returns the state. */
wk_state wk_pool_advance(wk_pool *p);

wk_state wk_pool_state(const wk_pool *p);
/* Why the last launch failed ("" when it did not). Borrowed until the next launch. */
const char *wk_pool_error(const wk_pool *p);
/* The longest the caller may wait before calling wk_pool_advance again (ms; -1 = no need). */
int32_t wk_pool_advance_ms(const wk_pool *p);
/* Sessions launched so far (1 after the first launch). */
uint32_t wk_pool_session(const wk_pool *p);
/* The current session's private directory ("" when none). Borrowed. */
const char *wk_pool_dir(const wk_pool *p);

/* Blocking forms for tools and tests: new + launch + advance until READY or FAILED (then the
 * workers' own error message, e.g. the loader's, or "does not fit"). Logs each size the ranks
 * decided and why. A restart asks for exactly the sizes of the first start. */
gm_status wk_pool_start(const wk_pool_opts *o, wk_pool **out);

/* Remove the control directories TMPDIR/gemmad-* (this user's) whose owner file names a process that
 * no longer exists (a gemmad killed with SIGKILL). Returns how many were removed. */
int wk_clean_stale_dirs(const char *tmpdir);

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

/* The current session's ZeroMQ socket to poll for ZMQ_POLLIN (Hello/Ready while starting, then results
 * and worker errors); it changes at each launch, NULL before the first. Borrowed. */
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

/* The samples of the verify entries (speculative decoding, ctl/step.h) rank 0 returned with the step
 * wk_pool_collect finished last: n_tokens per such entry, in plan order; *n of them. Borrowed until the
 * next wk_pool_collect. */
const int32_t *wk_pool_verify(const wk_pool *p, int64_t *n);

/* True while a step is in flight; wk_pool_inflight: how many (0..2). */
bool wk_pool_busy(const wk_pool *p);
int32_t wk_pool_inflight(const wk_pool *p);

/* READY only: reap children without blocking; false (and the state FAILED) when any rank has exited
 * or been killed. */
bool wk_pool_alive(wk_pool *p);

/* Blocking: wk_pool_launch, then wk_pool_advance until READY or FAILED (its error). */
gm_status wk_pool_restart(wk_pool *p);

/* Ask ranks to exit, wait briefly, then kill; frees p and nulls it. */
void wk_pool_destroy(wk_pool **p);

#endif
