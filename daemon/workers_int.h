/* workers_int.h - what the two halves of the worker pool share (not a public header):
 *   workers.c        the pool: step plans out, results in, liveness, shutdown
 *   workers_start.c  sessions: a private directory and control socket each, spawning, Hello/Ready,
 *                    reaping, the state machine of wk_pool_launch / wk_pool_advance */
#ifndef GM_WORKERS_INT_H
#define GM_WORKERS_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/clock.h"
#include "ctl/slots.h"
#include "daemon/workers.h"
#include "proto/control.pb-c.h"

typedef Gemma__Control__V1__ControlMessage ctl_msg;

#define WK_MAX_RANKS 64
#define WK_ID_MAX 64
#define WK_MAX_INFLIGHT 2
#define WK_MAX_REAP (4 * WK_MAX_RANKS)

struct wk_pool {
    wk_pool_opts o;         /* copy; worker_bin points at the copy below; after the first start the
                             * spec's sizing fields hold what the ranks decided (restarts ask for it) */
    char *worker_bin;       /* owned */
    char tmpdir[128];       /* where session directories go */
    int32_t tp;
    wk_state state;
    char err[1024];         /* why the last launch failed */
    gm_status err_st;
    /* the current session */
    char dir[256];          /* private dir of the ipc socket ("" = none) */
    char ipc_path[300];
    char endpoint[320];
    char shm_name[64];      /* "" when no segment */
    int64_t shm_elems;
    void *ctx, *sock;       /* sock: this session's ROUTER (NULL between sessions) */
    pid_t pids[WK_MAX_RANKS]; /* 0 = not running (reaped) */
    unsigned session;
    int64_t t_launch;       /* ms, monotonic */
    bool ready[WK_MAX_RANKS];
    int32_t n_ready;
    int32_t dead_rank, dead_status; /* a rank that exited while starting (-1 = none) */
    int64_t dead_grace;     /* read what it sent before exiting until then */
    /* killed ranks of earlier sessions, reaped without blocking */
    pid_t reap[WK_MAX_REAP];
    int32_t n_reap;
    int64_t reap_deadline;  /* REAPING: spawn anyway after this */
    /* what the ranks decided */
    int64_t kv_blocks;      /* the smallest pool over ranks */
    int32_t max_seqs;       /* slots every rank has (the smallest Ready.max_seqs) */
    gm_sizing sizing;       /* what the ranks decided (smallest over ranks), rank 0's reasons */
    gm_worker_spec *spec_sent; /* [tp] the spec each rank got at this (re)start */
    gm_worker_spec *echo;   /* [tp] the spec each rank says it received */
    bool *echoed;           /* [tp] */
    gm_model_config cfg;
    uint64_t step_id;       /* last step submitted */
    /* steps in flight, oldest first: their ids and sequence counts */
    uint64_t inflight_id[WK_MAX_INFLIGHT];
    int32_t inflight_n[WK_MAX_INFLIGHT];
    int32_t n_inflight;
    /* what every rank holds per slot once the plans sent so far have run; plans
     * carry only the difference (ctl/slots.h, without the tables) */
    ctl_slots sent;
    /* per-step scratch, reused */
    Gemma__Control__V1__SeqPlan *sp;
    Gemma__Control__V1__Sampling *sa;
    Gemma__Control__V1__SeqPlan **spp;
    size_t plan_cap;
    uint8_t *buf;
    size_t buf_cap;
    /* the log-probabilities of the step collected last (wk_pool_logprobs) */
    gm_token_logprobs *lp;
    uint8_t *lp_has;
    size_t lp_cap;
    bool lp_any;
    /* the verify samples of the step collected last (wk_pool_verify) */
    int32_t *vt;
    size_t vt_cap, n_vt;
};

/* ---- workers.c ---- */
gm_status wk_status(int32_t s);
gm_status wk_send(wk_pool *p, int r, const ctl_msg *m);
/* One [id][payload] message without blocking; *m NULL when nothing or malformed. The sender's
 * rank in this session, or -1 (message dropped). */
int wk_recv(wk_pool *p, ctl_msg **m, bool *got);
void wk_forget(wk_pool *p);
void wk_spec_for(const wk_pool *p, int r, gm_worker_spec *out);

/* ---- workers_start.c ---- */
/* SIGKILL every running rank; they are reaped later (wk_reap), never waited for here. */
void wk_kill_all(wk_pool *p);
/* Reap killed ranks without blocking; true when none is left. */
bool wk_reap(wk_pool *p);
/* Close this session's socket and remove its directory and shm segment. */
void wk_session_close(wk_pool *p);
/* "exited with code N" / "killed by signal N" into buf. */
const char *wk_exit_str(int st, char *buf, size_t cap);

#endif
