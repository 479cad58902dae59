/* workers.c - the coordinator's worker pool: step plans out over a ZeroMQ ROUTER
 * (proto/control.proto), tokens back, liveness, shutdown. Sessions (a private
 * directory and control socket each, spawning, Hello/Ready) are workers_start.c.
 *
 * Resources of one pool: a ZeroMQ context; per session a private directory
 * (mkdtemp, mode 0700) holding the ipc:// control socket and an owner file, the
 * ROUTER bound there, for tp > 1 on cpu a POSIX shm segment for the workers'
 * all-reduce, and the child processes. Workers' routing ids are
 * "<rank>.<session>", so anything a killed worker sent is recognised and dropped. */
#include "daemon/workers.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/gguf_model.h"
#include "common/log.h"
#include "ctl/msg.h"
#include "ctl/plan.h"
#include "daemon/workers_int.h"

/* The spec rank r is to be created with. */
void wk_spec_for(const wk_pool *p, int r, gm_worker_spec *out)
{
    *out = p->o.spec;
    if (out->backend == GM_BACKEND_CUDA) /* one GPU per rank, counted from the configured device */
        out->device += r;
}

void wk_pool_rank_spec(const wk_pool *p, int32_t r, gm_worker_spec *out)
{
    *out = p->spec_sent[r];
}

gm_status wk_status(int32_t s)
{
    return s > 0 && s < GM_STATUS_COUNT ? (gm_status)s : GM_ERR_INTERNAL;
}

/* Rank of a routing id "<rank>.<session>" of the current session; -1 otherwise. */
static int wk_rank_of(const wk_pool *p, const char *id, size_t len)
{
    char buf[WK_ID_MAX];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, id, len);
    buf[len] = 0;
    int r = -1;
    unsigned sess = 0;
    char extra;
    if (sscanf(buf, "%d.%u%c", &r, &sess, &extra) != 2 || sess != p->session || r < 0 || r >= p->tp)
        return -1;
    return r;
}

static void wk_ident(const wk_pool *p, int r, char *buf, size_t cap)
{
    snprintf(buf, cap, "%d.%u", r, p->session);
}

/* Send one serialized message to rank r (ROUTER_MANDATORY: unknown peer = error). */
static gm_status wk_send_raw(wk_pool *p, int r, const void *buf, size_t n)
{
    char id[WK_ID_MAX];
    wk_ident(p, r, id, sizeof id);
    if (zmq_send(p->sock, id, strlen(id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(p->sock, buf, n, ZMQ_DONTWAIT) < 0)
        return gm_fail(GM_ERR_ZMQ, "send to worker rank %d: %s", r, zmq_strerror(errno));
    return GM_OK;
}

gm_status wk_send(wk_pool *p, int r, const ctl_msg *m)
{
    size_t n = gemma__control__v1__control_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return gm_fail(GM_ERR_NOMEM, "control message of %zu bytes", n);
    gemma__control__v1__control_message__pack(m, buf);
    gm_status st = wk_send_raw(p, r, buf, n);
    free(buf);
    return st;
}

int wk_recv(wk_pool *p, ctl_msg **m, bool *got)
{
    *m = NULL;
    *got = false;
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    if (zmq_msg_recv(&id, p->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        return -1;
    }
    *got = true;
    int rank = wk_rank_of(p, zmq_msg_data(&id), zmq_msg_size(&id));
    int more = zmq_msg_more(&id);
    zmq_msg_close(&id);
    if (!more)
        return -1;
    zmq_msg_init(&body);
    if (zmq_msg_recv(&body, p->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&body);
        return -1;
    }
    while (zmq_msg_more(&body)) { /* extra frames: drop them */
        zmq_msg_t x;
        zmq_msg_init(&x);
        int rc = zmq_msg_recv(&x, p->sock, ZMQ_DONTWAIT);
        int mm = rc >= 0 && zmq_msg_more(&x);
        zmq_msg_close(&x);
        if (!mm)
            break;
    }
    if (rank >= 0) {
        *m = gemma__control__v1__control_message__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
        if (!*m)
            GM_WARN("malformed control message from worker rank %d dropped", rank);
    }
    zmq_msg_close(&body);
    return *m ? rank : -1;
}

/* Nothing in flight any more, and no slot state assumed on the ranks: the next
 * plan resends every slot it names in full (after a restart or a failed step). */
void wk_forget(wk_pool *p)
{
    p->n_inflight = 0;
    ctl_slots_forget(&p->sent);
}

static void wk_release(wk_pool *p)
{
    wk_kill_all(p);
    wk_session_close(p);
    for (int32_t i = 0; i < p->n_reap; i++) /* SIGKILLed: gone in moments */
        while (waitpid(p->reap[i], NULL, 0) < 0 && errno == EINTR) {
        }
    p->n_reap = 0;
    if (p->ctx)
        zmq_ctx_term(p->ctx);
    ctl_slots_free(&p->sent);
    free(p->spec_sent);
    free(p->echo);
    free(p->echoed);
    free(p->sp);
    free(p->sa);
    free(p->spp);
    free(p->buf);
    free(p->lp);
    free(p->lp_has);
    free(p->vt);
    free(p->worker_bin);
    free(p);
}

/* gemma-worker beside the running executable. */
static char *wk_default_bin(void)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return NULL;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!slash)
        return NULL;
    slash[1] = 0;
    size_t len = strlen(self) + strlen("gemma-worker") + 1;
    char *out = malloc(len);
    if (out)
        snprintf(out, len, "%sgemma-worker", self);
    return out;
}

/* Largest all-reduce the CPU engine does: [max_tokens, hidden] or a vocab row (doubles). */
static int64_t wk_shm_elems(const wk_pool_opts *o)
{
    int64_t elems = (int64_t)1 << 20;
    gm_model_config cfg;
    if (o->spec.model_dir[0] && gm_checkpoint_config(o->spec.model_dir, &cfg) == GM_OK) { /* dir or GGUF */
        int64_t tok = o->spec.max_tokens > 0 ? o->spec.max_tokens : GM_SIZING_HOST_TOKENS;
        elems = tok * (int64_t)cfg.hidden_size;
        if (elems < cfg.vocab_size)
            elems = cfg.vocab_size;
    }
    gm_clear_error();
    if (elems < 4096)
        elems = 4096;
    if (elems > ((int64_t)1 << 22))
        elems = (int64_t)1 << 22; /* 32 MiB a rank; larger all-reduces go in chunks */
    return elems;
}

gm_status wk_pool_new(const wk_pool_opts *o, wk_pool **out)
{
    if (!out)
        return gm_fail(GM_ERR_INVALID_ARG, "wk_pool_new: out is NULL");
    *out = NULL;
    if (!o)
        return gm_fail(GM_ERR_INVALID_ARG, "wk_pool_new: options are NULL");
    gm_status st = ctl_spec_check(&o->spec);
    if (st != GM_OK)
        return st;
    int32_t tp = o->spec.tp_size;
    if (tp > WK_MAX_RANKS)
        return gm_fail(GM_ERR_INVALID_ARG, "tp %d exceeds %d ranks", (int)tp, WK_MAX_RANKS);
    if (o->spec.backend != GM_BACKEND_NULL && !o->spec.model_dir[0])
        return gm_fail(GM_ERR_INVALID_ARG, "no model directory given");
    wk_pool *p = calloc(1, sizeof *p);
    if (!p)
        return gm_fail(GM_ERR_NOMEM, "worker pool");
    p->o = *o;
    p->tp = tp;
    p->dead_rank = -1;
    p->worker_bin = o->worker_bin ? strdup(o->worker_bin) : wk_default_bin();
    p->o.worker_bin = p->worker_bin;
    const char *tmp = o->tmpdir ? o->tmpdir : getenv("TMPDIR");
    if (!tmp || !tmp[0] || strlen(tmp) > 60) /* the socket path must fit sockaddr_un */
        tmp = "/tmp";
    snprintf(p->tmpdir, sizeof p->tmpdir, "%s", tmp);
    p->o.tmpdir = p->tmpdir;
    p->spec_sent = calloc((size_t)tp, sizeof *p->spec_sent);
    p->echo = calloc((size_t)tp, sizeof *p->echo);
    p->echoed = calloc((size_t)tp, sizeof *p->echoed);
    p->ctx = zmq_ctx_new();
    if (!p->spec_sent || !p->echo || !p->echoed || !p->ctx) {
        wk_release(p);
        return gm_fail(GM_ERR_NOMEM, "worker pool");
    }
    if (!p->worker_bin) {
        wk_release(p);
        return gm_fail(GM_ERR_NOMEM, "worker pool: cannot find the gemma-worker path");
    }
    if (access(p->worker_bin, X_OK) != 0) {
        st = gm_fail(GM_ERR_NOT_FOUND, "worker binary %s: %s", p->worker_bin, strerror(errno));
        wk_release(p);
        return st;
    }
    p->shm_elems = wk_shm_elems(&p->o);
    wk_clean_stale_dirs(p->tmpdir);
    *out = p;
    return GM_OK;
}

int64_t wk_pool_kv_blocks(const wk_pool *p)
{
    return p ? p->kv_blocks : 0;
}

const gm_model_config *wk_pool_config(const wk_pool *p)
{
    return p ? &p->cfg : NULL;
}

const gm_sizing *wk_pool_sizing(const wk_pool *p)
{
    return p ? &p->sizing : NULL;
}

const gm_worker_spec *wk_pool_spec_echo(const wk_pool *p, int32_t r)
{
    return p && r >= 0 && r < p->tp && p->echoed[r] ? &p->echo[r] : NULL;
}

void *wk_pool_socket(wk_pool *p)
{
    return p ? p->sock : NULL;
}

bool wk_pool_busy(const wk_pool *p)
{
    return p && p->n_inflight > 0;
}

int32_t wk_pool_inflight(const wk_pool *p)
{
    return p ? p->n_inflight : 0;
}

static bool wk_grow(void **a, size_t n, size_t elem)
{
    void *q = realloc(*a, n * elem);
    if (!q)
        return false;
    *a = q;
    return true;
}

gm_status wk_pool_submit(wk_pool *p, const gm_seq_step *seqs, int32_t n_seqs, const gm_block_copy *copies,
                         int32_t n_copies)
{
    _Static_assert(sizeof(gm_block_copy) == 2 * sizeof(int32_t), "block copies go out as int32 pairs");
    if (!p || n_seqs <= 0 || !seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "submit: empty step (%d sequences)", (int)n_seqs);
    if (n_copies < 0 || (n_copies > 0 && !copies))
        return gm_fail(GM_ERR_INVALID_ARG, "submit: %d block copies", (int)n_copies);
    if (p->state != WK_STATE_READY)
        return gm_fail(GM_ERR_INTERNAL, "submit: the workers are not ready");
    if (p->n_inflight >= WK_MAX_INFLIGHT)
        return gm_fail(GM_ERR_INVALID_ARG, "submit: %d steps are already in flight", (int)p->n_inflight);
    if ((size_t)n_seqs > p->plan_cap) {
        size_t cap = p->plan_cap ? p->plan_cap : 64;
        while (cap < (size_t)n_seqs)
            cap *= 2;
        if (!wk_grow((void **)&p->sp, cap, sizeof *p->sp) || !wk_grow((void **)&p->sa, cap, sizeof *p->sa) ||
            !wk_grow((void **)&p->spp, cap, sizeof *p->spp))
            return gm_fail(GM_ERR_NOMEM, "submit: %d sequences", (int)n_seqs);
        p->plan_cap = cap;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        const gm_seq_step *s = &seqs[i];
        if (s->n_tokens < 0 || (s->n_tokens > 0 && !s->tokens) || s->n_blocks < 0 ||
            (s->n_blocks > 0 && !s->block_table))
            return gm_fail(GM_ERR_INVALID_ARG, "submit: seq %d has bad arrays", (int)i);
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        ctl_slots_put(&p->sent, &seqs[i], &p->sp[i], &p->sa[i]);
        p->spp[i] = &p->sp[i];
    }
    Gemma__Control__V1__StepPlan plan = GEMMA__CONTROL__V1__STEP_PLAN__INIT;
    plan.step_id = p->step_id + 1;
    plan.seqs = p->spp;
    plan.n_seqs = (size_t)n_seqs;
    plan.block_copies = (int32_t *)copies; /* (src, dst) pairs */
    plan.n_block_copies = 2 * (size_t)n_copies;
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN;
    m.plan = &plan;
    size_t n = ctl_plan_size(&m); /* = protobuf-c's bytes, without its reflective walk */
    if (n > p->buf_cap) {
        size_t cap = p->buf_cap ? p->buf_cap : 65536;
        while (cap < n)
            cap *= 2;
        if (!wk_grow((void **)&p->buf, cap, 1)) {
            wk_forget(p);
            return gm_fail(GM_ERR_NOMEM, "submit: plan of %zu bytes", n);
        }
        p->buf_cap = cap;
    }
    ctl_plan_pack(&m, n, p->buf);
    gm_status st = GM_OK;
    for (int r = 0; r < p->tp && st == GM_OK; r++)
        st = wk_send_raw(p, r, p->buf, n);
    p->step_id++; /* a half-sent step is abandoned: its results are ignored */
    if (st != GM_OK) {
        wk_forget(p);
        return st;
    }
    p->inflight_id[p->n_inflight] = p->step_id;
    p->inflight_n[p->n_inflight] = n_seqs;
    p->n_inflight++;
    return GM_OK;
}

/* Keep the log-probabilities of a finished step of n entries (rank 0's result res). */
static gm_status wk_take_logprobs(wk_pool *p, const Gemma__Control__V1__StepResult *res, int32_t n)
{
    p->lp_any = res->n_logprobs > 0;
    if (!p->lp_any)
        return GM_OK;
    if ((size_t)n > p->lp_cap) {
        if (!wk_grow((void **)&p->lp, (size_t)n, sizeof *p->lp) || !wk_grow((void **)&p->lp_has, (size_t)n, 1)) {
            p->lp_any = false;
            return gm_fail(GM_ERR_NOMEM, "log-probabilities of %d sequences", (int)n);
        }
        p->lp_cap = (size_t)n;
    }
    memset(p->lp_has, 0, (size_t)n);
    for (size_t k = 0; k < res->n_logprobs; k++) {
        const Gemma__Control__V1__TokenLogprobs *t = res->logprobs[k];
        if (t->seq < 0 || t->seq >= n || t->n_top_ids != t->n_top_logprobs || t->n_top_ids > GM_MAX_TOP_LOGPROBS) {
            p->lp_any = false;
            return gm_fail(GM_ERR_INTERNAL, "worker rank 0 returned log-probabilities for sequence %d of %d with %zu "
                           "ids and %zu values", (int)t->seq, (int)n, t->n_top_ids, t->n_top_logprobs);
        }
        gm_token_logprobs *o = &p->lp[t->seq];
        o->logprob = t->logprob;
        o->n_top = (int32_t)t->n_top_ids;
        if (t->n_top_ids) {
            memcpy(o->top_ids, t->top_ids, t->n_top_ids * sizeof *o->top_ids);
            memcpy(o->top_logprobs, t->top_logprobs, t->n_top_ids * sizeof *o->top_logprobs);
        }
        p->lp_has[t->seq] = 1;
    }
    return GM_OK;
}

/* Keep the verify samples of a finished step (rank 0's result res). */
static gm_status wk_take_verify(wk_pool *p, const Gemma__Control__V1__StepResult *res)
{
    p->n_vt = 0;
    if (res->n_verify_tokens > p->vt_cap) {
        if (!wk_grow((void **)&p->vt, res->n_verify_tokens, sizeof *p->vt))
            return gm_fail(GM_ERR_NOMEM, "%zu verify samples", res->n_verify_tokens);
        p->vt_cap = res->n_verify_tokens;
    }
    if (res->n_verify_tokens)
        memcpy(p->vt, res->verify_tokens, res->n_verify_tokens * sizeof *p->vt);
    p->n_vt = res->n_verify_tokens;
    return GM_OK;
}

const int32_t *wk_pool_verify(const wk_pool *p, int64_t *n)
{
    *n = p ? (int64_t)p->n_vt : 0;
    return p ? p->vt : NULL;
}

const gm_token_logprobs *wk_pool_logprobs(const wk_pool *p, const uint8_t **has)
{
    *has = p && p->lp_any ? p->lp_has : NULL;
    return p && p->lp_any ? p->lp : NULL;
}

static bool wk_is_inflight(const wk_pool *p, uint64_t id)
{
    for (int32_t i = 0; i < p->n_inflight; i++)
        if (p->inflight_id[i] == id)
            return true;
    return false;
}

gm_status wk_pool_collect(wk_pool *p, int32_t *tokens, int32_t n_seqs, bool *done)
{
    if (done)
        *done = false;
    if (!p || !done)
        return gm_fail(GM_ERR_INVALID_ARG, "collect: NULL pool or done");
    if (p->n_inflight > 0 && (n_seqs != p->inflight_n[0] || (n_seqs > 0 && !tokens)))
        return gm_fail(GM_ERR_INVALID_ARG, "collect: %d tokens asked, step has %d sequences", (int)n_seqs,
                       (int)p->inflight_n[0]);
    for (;;) {
        ctl_msg *m = NULL;
        bool got = false;
        int r = wk_recv(p, &m, &got);
        if (!got)
            return GM_OK;
        if (!m)
            continue;
        gm_status st = GM_OK;
        bool finished = false, failed = false;
        if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_RESULT && wk_is_inflight(p, m->result->step_id)) {
            const Gemma__Control__V1__StepResult *res = m->result;
            if (res->status != 0) { /* any rank, any step in flight: the pool has failed */
                st = gm_fail(wk_status(res->status), "%s", res->message && res->message[0] ? res->message
                                                                                           : "worker step failed");
                failed = true;
            } else if (r == 0 && res->step_id == p->inflight_id[0]) {
                if (res->n_tokens != (size_t)n_seqs) {
                    st = gm_fail(GM_ERR_INTERNAL, "worker rank 0 returned %zu tokens for %d sequences",
                                 res->n_tokens, (int)n_seqs);
                    failed = true;
                } else if ((st = wk_take_logprobs(p, res, n_seqs)) != GM_OK ||
                           (st = wk_take_verify(p, res)) != GM_OK) {
                    failed = true;
                } else {
                    memcpy(tokens, res->tokens, (size_t)n_seqs * sizeof *tokens);
                    *done = true;
                    finished = true;
                }
            } else if (r == 0) {
                st = gm_fail(GM_ERR_INTERNAL, "worker rank 0 answered step %llu before step %llu",
                             (unsigned long long)res->step_id, (unsigned long long)p->inflight_id[0]);
                failed = true;
            }
        } else if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_RESULT) {
            GM_DEBUG("stale result of step %llu from rank %d dropped", (unsigned long long)m->result->step_id, r);
        }
        gemma__control__v1__control_message__free_unpacked(m, NULL);
        if (failed) {
            wk_forget(p); /* every step in flight is abandoned; slots are resent in full */
            return st;
        }
        if (finished) {
            p->n_inflight--;
            for (int32_t i = 0; i < p->n_inflight; i++) {
                p->inflight_id[i] = p->inflight_id[i + 1];
                p->inflight_n[i] = p->inflight_n[i + 1];
            }
            return GM_OK;
        }
    }
}

bool wk_pool_alive(wk_pool *p)
{
    if (!p || p->state != WK_STATE_READY)
        return false;
    wk_reap(p);
    bool alive = true;
    for (int r = 0; r < p->tp; r++) {
        if (p->pids[r] <= 0) {
            alive = false;
            continue;
        }
        int ws = 0;
        pid_t w = waitpid(p->pids[r], &ws, WNOHANG);
        if (w == p->pids[r] || (w < 0 && errno == ECHILD)) {
            char why[64];
            GM_ERROR("worker rank %d (pid %d) %s", r, (int)p->pids[r],
                     w > 0 ? wk_exit_str(ws, why, sizeof why) : "is gone");
            p->pids[r] = 0;
            alive = false;
        }
    }
    if (!alive) {
        snprintf(p->err, sizeof p->err, "a worker process exited");
        p->err_st = GM_ERR_INTERNAL;
        p->state = WK_STATE_FAILED;
        wk_kill_all(p);
    }
    return alive;
}

void wk_pool_destroy(wk_pool **pp)
{
    if (!pp || !*pp)
        return;
    wk_pool *p = *pp;
    *pp = NULL;
    Gemma__Control__V1__Shutdown sd = GEMMA__CONTROL__V1__SHUTDOWN__INIT;
    sd.reason = "gemmad is stopping";
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN;
    m.shutdown = &sd;
    for (int r = 0; r < p->tp; r++)
        if (p->pids[r] > 0)
            wk_send(p, r, &m);
    int64_t deadline = (int64_t)gm_now_ms() + 2000;
    for (;;) {
        bool any = false;
        for (int r = 0; r < p->tp; r++) {
            if (p->pids[r] <= 0)
                continue;
            pid_t w = waitpid(p->pids[r], NULL, WNOHANG);
            if (w == p->pids[r] || (w < 0 && errno == ECHILD))
                p->pids[r] = 0;
            else
                any = true;
        }
        if (!any || (int64_t)gm_now_ms() >= deadline)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    gm_clear_error();
    wk_release(p); /* SIGKILLs and reaps whoever is left */
}
