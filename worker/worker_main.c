/* worker_main.c - gemma-worker: one tensor-parallel rank of a replica.
 *
 * Connects a DEALER to the coordinator's control ROUTER (proto/control.proto),
 * says Hello, receives its WorkerSpec (what its engine is created with: argv
 * names only the coordinator, the rank and the session), builds its engine
 * (CPU ranks meet in a shared-memory communicator), answers Ready (the sizes it
 * chose and why, and the spec it received; or the load error), then runs every
 * StepPlan it receives, in order; rank 0 answers each with a StepResult, other
 * ranks only on error. Plans are deltas against per-slot state (ctl/slots.h);
 * the engine checks each step (ctl/check.h); after a failed step the worker
 * forgets every table, so a plan that does not resend a slot in full is
 * refused rather than run on a stale one. Plans are decoded by hand
 * (ctl/plan.h), into a bump arena that is reset after each message.
 * Exits on Shutdown, when the parent gemmad dies (PR_SET_PDEATHSIG set by the
 * spawner, plus a getppid check), or when an ipc:// coordinator socket goes away. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/args.h"
#include "common/log.h"
#include "common/status.h"
#include "parallel/comm.h"
#include "ctl/msg.h"
#include "ctl/plan.h"
#include "ctl/slots.h"
#include "proto/control.pb-c.h"
#include "worker/engine.h"

#ifdef GM_HAVE_NCCL
#include <nccl.h>
#endif

typedef Gemma__Control__V1__ControlMessage ctl_msg;

typedef struct wm_args {
    const char *control;
    int32_t rank, tp;
    const char *shm;
    const char *session;
    long parent_pid;
    int log_level;
} wm_args;

/* A bump arena for protobuf-c unpacking: one block reused for every message;
 * what does not fit is malloc'd and the block grows at the next reset. */
typedef struct wm_arena {
    uint8_t *base;
    size_t cap, used;
    void **extra; /* overflow allocations, freed at reset */
    size_t n_extra, extra_cap, extra_bytes;
} wm_arena;

static void *wm_arena_alloc(void *ad, size_t n)
{
    wm_arena *a = ad;
    n = (n + 15) & ~(size_t)15;
    if (a->used + n <= a->cap) {
        void *p = a->base + a->used;
        a->used += n;
        return p;
    }
    if (a->n_extra == a->extra_cap) {
        size_t cap = a->extra_cap ? a->extra_cap * 2 : 16;
        void **e = realloc(a->extra, cap * sizeof *e);
        if (!e)
            return NULL;
        a->extra = e;
        a->extra_cap = cap;
    }
    void *p = malloc(n);
    if (!p)
        return NULL;
    a->extra[a->n_extra++] = p;
    a->extra_bytes += n;
    return p;
}

static void wm_arena_free(void *ad, void *p)
{
    (void)ad, (void)p; /* everything goes at the next reset */
}

static void wm_arena_reset(wm_arena *a)
{
    for (size_t i = 0; i < a->n_extra; i++)
        free(a->extra[i]);
    if (a->extra_bytes) {
        size_t want = (a->used + a->extra_bytes) * 2;
        uint8_t *b = malloc(want);
        if (b) {
            free(a->base);
            a->base = b;
            a->cap = want;
        }
    }
    a->n_extra = 0;
    a->extra_bytes = 0;
    a->used = 0;
}

static void wm_arena_destroy(wm_arena *a)
{
    wm_arena_reset(a);
    free(a->base);
    free(a->extra);
    memset(a, 0, sizeof *a);
}

typedef struct wm_state {
    wm_args a;
    void *ctx, *sock, *mon;
    bool exit_on_disconnect;
    gm_worker_spec spec; /* as received from the coordinator */
    gm_comm *comm;
    gm_engine *eng;
    int64_t kv_blocks; /* block ids a plan may append (Start may lower it) */
    int32_t *tokens;   /* [max_seqs] step output */
    int32_t *verify;   /* [max_tokens] step output: the verify entries' samples (speculative decoding) */
    int64_t verify_cap;
    gm_token_logprobs *lps; /* [max_seqs] step output: log-probabilities of the entries that ask */
    Gemma__Control__V1__TokenLogprobs *tl, **tlp; /* [max_seqs] their StepResult messages */
    uint8_t nccl_id[128]; /* CUDA, tp > 1: the ncclUniqueId every rank joins with */
    gm_seq_step *seqs; /* [max_seqs] a plan as whole step entries */
    ctl_slots slots;   /* per slot, what the plans so far have built */
    wm_arena arena;
    ProtobufCAllocator alloc; /* over arena */
    uint8_t *txbuf;    /* StepResult packing */
    size_t txcap;
} wm_state;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-worker --control ENDPOINT --rank R [--tp N] [--shm NAME] [--log-level L]\n"
            "\n"
            "One tensor-parallel rank of a gemmad replica. gemmad starts these itself;\n"
            "a launcher (Slurm, mpirun) may start them by hand with the coordinator's endpoint.\n"
            "Everything about the engine (model, backend, device, KV and batch sizes) comes\n"
            "from the coordinator after connecting (control.proto: WorkerSpec).\n"
            "\n"
            "  --control ENDPOINT     coordinator's control socket (ipc://... or tcp://...)\n"
            "  --rank R               this rank, 0..N-1\n"
            "  --tp N                 tensor-parallel size (default 1)\n"
            "  --shm NAME             shared-memory segment of the CPU communicator (tp > 1, cpu)\n"
            "  --log-level debug|info|warn|error|off\n"
            "  --session S            tag of this worker set (set by gemmad; part of the routing id)\n"
            "  --parent-pid P         exit when the parent is no longer P (set by gemmad)\n"
            "  --help\n");
}

static int parse_args(int argc, char **argv, wm_args *a)
{
    memset(a, 0, sizeof *a);
    a->rank = -1;
    a->tp = 1;
    a->log_level = GM_LOG_INFO;
    int64_t parent = 0;
    args_opt opts[] = {
        {"control", ARGS_STRING, &a->control},
        {"rank", ARGS_INT, &a->rank, 0, 1023},
        {"tp", ARGS_INT, &a->tp, 1, 1024},
        {"shm", ARGS_STRING, &a->shm},
        {"session", ARGS_STRING, &a->session},
        {"parent-pid", ARGS_INT64, &parent, 1, INT32_MAX},
        {"log-level", ARGS_CHOICE, &a->log_level, .choices = "debug|info|warn|error|off"},
        {NULL},
    };
    args_spec spec = {"gemma-worker", opts};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        usage(stdout);
        return 1;
    }
    if (rc != ARGS_OK)
        return -1; /* engine settings come from the coordinator (WorkerSpec), not from flags */
    a->parent_pid = (long)parent;
    if (!a->control || a->rank < 0) {
        fprintf(stderr, "gemma-worker: --control and --rank are required (try --help)\n");
        return -1;
    }
    if (a->rank >= a->tp) {
        fprintf(stderr, "gemma-worker: --rank %d out of range for --tp %d\n", (int)a->rank, (int)a->tp);
        return -1;
    }
    return 0;
}

/* Serialize and send one control message; GM_ERR_ZMQ on failure. */
static gm_status wm_send(wm_state *s, const ctl_msg *m)
{
    size_t n = gemma__control__v1__control_message__get_packed_size(m);
    if (n > s->txcap) {
        size_t cap = n < 4096 ? 4096 : n * 2;
        uint8_t *b = realloc(s->txbuf, cap);
        if (!b)
            return gm_fail(GM_ERR_NOMEM, "control message of %zu bytes", n);
        s->txbuf = b;
        s->txcap = cap;
    }
    gemma__control__v1__control_message__pack(m, s->txbuf);
    int rc;
    do
        rc = zmq_send(s->sock, s->txbuf, n, 0);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return gm_fail(GM_ERR_ZMQ, "send to %s: %s", s->a.control, zmq_strerror(errno));
    return GM_OK;
}

static gm_status wm_send_hello(wm_state *s, const char *identity)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    Gemma__Control__V1__Hello h = GEMMA__CONTROL__V1__HELLO__INIT;
    h.version = GEMMA__CONTROL__V1__CONTROL_VERSION__CONTROL_VERSION_CURRENT;
    h.rank = s->a.rank;
    h.tp_size = s->a.tp;
    h.pid = (int32_t)getpid();
    h.host = host;
    h.identity = (char *)identity;
    h.external = s->a.parent_pid == 0;
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_HELLO;
    m.hello = &h;
    return wm_send(s, &m);
}

/* Ready: the engine's sizes and why, the spec as received, the model; or the load error. */
static gm_status wm_send_ready(wm_state *s, gm_status st, const char *err)
{
    Gemma__Control__V1__Ready r = GEMMA__CONTROL__V1__READY__INIT;
    Gemma__Control__V1__ModelConfig mc;
    Gemma__Control__V1__WorkerSpec sp;
    r.rank = s->a.rank;
    r.ok = st == GM_OK;
    r.status = (int32_t)st;
    r.error = (char *)(err ? err : "");
    if (s->spec.kv_block_size > 0) { /* the spec arrived */
        ctl_spec_pack(&s->spec, &sp);
        r.spec = &sp;
    }
    if (s->eng) {
        ctl_model_pack(&s->eng->cfg, &mc);
        r.model = &mc;
        ctl_sizing_pack(&s->eng->sizing, &r);
        r.kv_block_size = s->eng->opts.kv_block_size;
    }
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_READY;
    m.ready = &r;
    return wm_send(s, &m);
}

/* The log-probabilities of the entries of the step just run that asked for them, into r. */
static void wm_result_logprobs(wm_state *s, int32_t n, Gemma__Control__V1__StepResult *r)
{
    size_t k = 0;
    for (int32_t i = 0; i < n; i++) {
        if (!gm_seq_step_wants_logprobs(&s->seqs[i]))
            continue;
        const gm_token_logprobs *lp = &s->lps[i];
        Gemma__Control__V1__TokenLogprobs *t = &s->tl[k];
        gemma__control__v1__token_logprobs__init(t);
        t->seq = i;
        t->logprob = lp->logprob;
        t->n_top_ids = t->n_top_logprobs = (size_t)lp->n_top;
        t->top_ids = (int32_t *)lp->top_ids;
        t->top_logprobs = (float *)lp->top_logprobs;
        s->tlp[k++] = t;
    }
    r->logprobs = s->tlp;
    r->n_logprobs = k;
}

static gm_status wm_send_result(wm_state *s, uint64_t step_id, gm_status st, const char *msg,
                                const int32_t *tokens, int32_t n)
{
    Gemma__Control__V1__StepResult r = GEMMA__CONTROL__V1__STEP_RESULT__INIT;
    r.step_id = step_id;
    r.rank = s->a.rank;
    r.status = (int32_t)st;
    r.message = (char *)(msg ? msg : "");
    if (st == GM_OK && tokens) {
        r.tokens = (int32_t *)tokens;
        r.n_tokens = (size_t)n;
        wm_result_logprobs(s, n, &r);
        int64_t nv = 0;
        for (int32_t i = 0; i < n; i++)
            nv += s->seqs[i].logits_mode == GM_LOGITS_VERIFY ? s->seqs[i].n_tokens : 0;
        r.verify_tokens = s->verify;
        r.n_verify_tokens = (size_t)nv;
    }
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_RESULT;
    m.result = &r;
    return wm_send(s, &m);
}

/* Run one plan; rank 0 always answers, other ranks only when their engine fails. */
static void wm_run_plan(wm_state *s, const Gemma__Control__V1__StepPlan *p)
{
    gm_clear_error();
    gm_status st = ctl_slots_take(&s->slots, p, s->kv_blocks, s->seqs);
    if (st != GM_OK) {
        ctl_slots_forget(&s->slots);
        if (s->a.rank == 0) { /* every rank rejects it alike; rank 0 answers */
            GM_WARN("step %llu rejected: %s", (unsigned long long)p->step_id, gm_last_error());
            wm_send_result(s, p->step_id, st, gm_last_error(), NULL, 0);
        }
        return;
    }
    int32_t n = (int32_t)p->n_seqs;
    for (int32_t i = 0; i < n; i++) {
        s->tokens[i] = -1;
        s->lps[i].logprob = NAN; /* an engine that fails to fill one shows it */
        s->lps[i].n_top = 0;
    }
    gm_step_out out = {s->tokens, NULL, 0, s->lps, s->verify, s->verify_cap};
    if (p->n_block_copies % 2 || p->n_block_copies > (size_t)2 * INT32_MAX) {
        st = gm_fail(GM_ERR_INVALID_ARG, "step %llu: %zu block copy ids, not (src, dst) pairs",
                     (unsigned long long)p->step_id, p->n_block_copies);
    } else { /* the step and its copies are checked first (ctl/check.h), then the copies run, then the step */
        _Static_assert(sizeof(gm_block_copy) == 2 * sizeof(int32_t), "block copies arrive as int32 pairs");
        st = gm_engine_step_copy(s->eng, (const gm_block_copy *)p->block_copies, (int32_t)(p->n_block_copies / 2),
                                 s->seqs, n, &out);
    }
    if (st != GM_OK) {
        ctl_slots_forget(&s->slots);
        const char *why = gm_last_error();
        if (st != GM_ERR_INVALID_ARG) /* a failure */
            GM_ERROR("step %llu failed: %s: %s", (unsigned long long)p->step_id, gm_status_str(st), why);
        else if (s->a.rank == 0) /* a plan every rank refuses alike, before any collective */
            GM_WARN("step %llu rejected: %s", (unsigned long long)p->step_id, why);
        char msg[1024];
        snprintf(msg, sizeof msg, "rank %d: %s", (int)s->a.rank, why && *why ? why : gm_status_str(st));
        wm_send_result(s, p->step_id, st, msg, NULL, 0);
        return;
    }
    if (s->a.rank == 0)
        wm_send_result(s, p->step_id, GM_OK, NULL, s->tokens, n);
}

/* True when the monitor reports that the coordinator's connection went away. */
static bool wm_monitor_disconnected(wm_state *s)
{
    bool gone = false;
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, s->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        if (zmq_msg_size(&ev) >= 2) {
            uint16_t id;
            memcpy(&id, zmq_msg_data(&ev), 2);
            if (id == ZMQ_EVENT_DISCONNECTED)
                gone = true;
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        while (more) { /* the endpoint frame */
            zmq_msg_t f;
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, s->mon, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&f);
                break;
            }
            more = zmq_msg_more(&f);
            zmq_msg_close(&f);
        }
    }
    return gone;
}

static bool wm_parent_gone(const wm_state *s)
{
    return s->a.parent_pid > 0 && (long)getppid() != s->a.parent_pid;
}

/* One message from the coordinator, without blocking: decoded (ctl_msg_unpack,
 * into a's memory when given), or NULL when there is none or it is malformed. */
static ctl_msg *wm_recv(wm_state *s, ProtobufCAllocator *a)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, s->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        return NULL;
    }
    ctl_msg *m = ctl_msg_unpack(zmq_msg_data(&msg), zmq_msg_size(&msg), a);
    zmq_msg_close(&msg);
    if (!m)
        GM_WARN("malformed control message ignored");
    return m;
}

/* Start: the limits every rank shares (the smallest over ranks), so that all
 * ranks accept or reject a plan alike. */
static void wm_start(wm_state *s, const Gemma__Control__V1__Start *st)
{
    if (st->kv_num_blocks > 0 && st->kv_num_blocks < s->kv_blocks)
        s->kv_blocks = st->kv_num_blocks;
    ctl_limits l = {st->max_seqs, st->max_tokens, st->max_context, 0, 0, s->kv_blocks};
    gm_engine_share_limits(s->eng, &l);
}

/* Receive and handle control messages until Shutdown or the coordinator is gone. */
static int wm_loop(wm_state *s)
{
    for (;;) {
        zmq_pollitem_t items[2] = {{s->sock, 0, ZMQ_POLLIN, 0}, {s->mon, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, s->mon ? 2 : 1, 500);
        if (rc < 0 && errno != EINTR) {
            GM_ERROR("poll: %s", zmq_strerror(errno));
            return 1;
        }
        if (wm_parent_gone(s)) {
            GM_WARN("parent process exited; stopping");
            return 1;
        }
        if (s->mon && (items[1].revents & ZMQ_POLLIN) && wm_monitor_disconnected(s) && s->exit_on_disconnect) {
            GM_WARN("coordinator socket %s went away; stopping", s->a.control);
            return 1;
        }
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        ctl_msg *m = wm_recv(s, &s->alloc); /* plans by hand into the arena */
        if (!m) {
            wm_arena_reset(&s->arena);
            continue;
        }
        int stop = 0;
        switch (m->body_case) {
        case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN:
            wm_run_plan(s, m->plan);
            break;
        case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_START:
            wm_start(s, m->start);
            break;
        case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN:
            GM_INFO("shutdown: %s", m->shutdown->reason ? m->shutdown->reason : "");
            stop = 1;
            break;
        default:
            GM_WARN("unexpected control message (case %d) ignored", (int)m->body_case);
            break;
        }
        wm_arena_reset(&s->arena); /* frees m */
        if (stop)
            return 0;
    }
}

static gm_status wm_connect(wm_state *s, char *identity, size_t cap)
{
    if (s->a.session)
        snprintf(identity, cap, "%d.%s", (int)s->a.rank, s->a.session);
    else
        snprintf(identity, cap, "%d", (int)s->a.rank);
    s->ctx = zmq_ctx_new();
    if (!s->ctx)
        return gm_fail(GM_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    s->sock = zmq_socket(s->ctx, ZMQ_DEALER);
    if (!s->sock)
        return gm_fail(GM_ERR_ZMQ, "zmq_socket: %s", zmq_strerror(errno));
    int linger = 2000;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_ROUTING_ID, identity, strlen(identity));
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://gm-worker-mon-%d", (int)getpid());
    if (zmq_socket_monitor(s->sock, mon_ep, ZMQ_EVENT_DISCONNECTED) == 0) {
        s->mon = zmq_socket(s->ctx, ZMQ_PAIR);
        if (s->mon && zmq_connect(s->mon, mon_ep) != 0) {
            zmq_close(s->mon);
            s->mon = NULL;
        }
    }
    s->exit_on_disconnect = strncmp(s->a.control, "ipc://", 6) == 0;
    if (zmq_connect(s->sock, s->a.control) != 0)
        return gm_fail(GM_ERR_ZMQ, "connect %s: %s", s->a.control, zmq_strerror(errno));
    return GM_OK;
}

/* Wait for one control message of body case want (while the coordinator is up
 * and no Shutdown comes); *out is the caller's to free (free_unpacked). */
static gm_status wm_wait_for(wm_state *s, Gemma__Control__V1__ControlMessage__BodyCase want, const char *what,
                             ctl_msg **out)
{
    *out = NULL;
    for (;;) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, 500);
        if (rc < 0 && errno != EINTR)
            return gm_fail(GM_ERR_ZMQ, "poll: %s", zmq_strerror(errno));
        if (wm_parent_gone(s))
            return gm_fail(GM_ERR_CANCELLED, "parent exited while waiting for %s", what);
        if (!(it.revents & ZMQ_POLLIN))
            continue;
        ctl_msg *m = wm_recv(s, NULL);
        if (!m)
            continue;
        if (m->body_case == want) {
            *out = m;
            return GM_OK;
        }
        bool stop = m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN;
        if (!stop)
            GM_WARN("unexpected control message (case %d) ignored while waiting for %s", (int)m->body_case, what);
        gemma__control__v1__control_message__free_unpacked(m, NULL);
        if (stop)
            return gm_fail(GM_ERR_CANCELLED, "shut down while waiting for %s", what);
    }
}

/* The coordinator's answer to Hello: what this rank's engine is created with. */
static gm_status wm_recv_spec(wm_state *s)
{
    ctl_msg *m = NULL;
    gm_status st = wm_wait_for(s, GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SPEC, "the worker spec", &m);
    if (st != GM_OK)
        return st;
    st = ctl_spec_unpack(m->spec, &s->spec);
    gemma__control__v1__control_message__free_unpacked(m, NULL);
    if (st != GM_OK)
        return st;
    if (s->spec.tp_size != s->a.tp)
        return gm_fail(GM_ERR_INVALID_ARG, "the coordinator runs tp %d; this worker was started with --tp %d",
                       (int)s->spec.tp_size, (int)s->a.tp);
    if (s->a.tp > 1 && s->spec.backend == GM_BACKEND_CPU && !s->a.shm)
        return gm_fail(GM_ERR_INVALID_ARG, "tp %d on the cpu backend needs --shm NAME", (int)s->a.tp);
    return GM_OK;
}

/* NCCL bootstrap over the control plane: rank 0 makes the unique id and sends it
 * (NcclUniqueId); the coordinator relays it to the other ranks, which wait for it
 * here. The engine then joins the NCCL communicator with it (opts.nccl_id). */
static gm_status wm_nccl_bootstrap(wm_state *s)
{
#ifdef GM_HAVE_NCCL
    if (s->a.rank == 0) {
        ncclUniqueId id;
        ncclResult_t nr = ncclGetUniqueId(&id);
        if (nr != ncclSuccess)
            return gm_fail(GM_ERR_NCCL, "ncclGetUniqueId: %s", ncclGetErrorString(nr));
        _Static_assert(sizeof id == sizeof s->nccl_id, "ncclUniqueId is 128 bytes");
        memcpy(s->nccl_id, &id, sizeof s->nccl_id);
        Gemma__Control__V1__NcclUniqueId m = GEMMA__CONTROL__V1__NCCL_UNIQUE_ID__INIT;
        m.id.data = s->nccl_id;
        m.id.len = sizeof s->nccl_id;
        m.tp_size = s->a.tp;
        ctl_msg cm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
        cm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_NCCL_ID;
        cm.nccl_id = &m;
        return wm_send(s, &cm);
    }
    ctl_msg *m = NULL;
    gm_status st = wm_wait_for(s, GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_NCCL_ID, "the NCCL id", &m);
    if (st != GM_OK)
        return st;
    if (m->nccl_id->id.len != sizeof s->nccl_id)
        st = gm_fail(GM_ERR_FORMAT, "NCCL id of %zu bytes, want %zu", m->nccl_id->id.len, sizeof s->nccl_id);
    else
        memcpy(s->nccl_id, m->nccl_id->id.data, sizeof s->nccl_id);
    gemma__control__v1__control_message__free_unpacked(m, NULL);
    return st;
#else
    return gm_fail(GM_ERR_UNSUPPORTED, "tp %d on the cuda backend: built without NCCL", (int)s->a.tp);
#endif
}

/* Build the communicator and the engine from the spec. */
static gm_status wm_load(wm_state *s)
{
    gm_engine_opts eo;
    gm_engine_opts_init(&eo);
    gm_engine_opts_set_spec(&eo, &s->spec);
    eo.tp_rank = s->a.rank;
    if (s->a.tp > 1) {
        if (eo.backend == GM_BACKEND_CPU) {
            gm_status st = gm_shm_comm_open(s->a.shm, s->a.rank, s->a.tp, &s->comm);
            if (st != GM_OK)
                return st;
            eo.comm = s->comm;
        } else if (eo.backend == GM_BACKEND_CUDA) {
            gm_status st = wm_nccl_bootstrap(s);
            if (st != GM_OK)
                return st;
            eo.nccl_id = s->nccl_id;
        }
    }
    gm_status st = gm_engine_create(&eo, &s->eng);
    if (st != GM_OK)
        return st;
    const gm_engine_opts *o = &s->eng->opts; /* the sizes decided */
    int32_t ms = o->max_seqs > 0 ? o->max_seqs : 1;
    int32_t max_blocks = (int32_t)(((int64_t)o->max_context + o->kv_block_size - 1) / o->kv_block_size);
    s->kv_blocks = s->eng->kv_num_blocks;
    s->tokens = calloc((size_t)ms, sizeof *s->tokens);
    s->seqs = calloc((size_t)ms, sizeof *s->seqs);
    s->lps = calloc((size_t)ms, sizeof *s->lps);
    s->tl = calloc((size_t)ms, sizeof *s->tl);
    s->tlp = calloc((size_t)ms, sizeof *s->tlp);
    s->verify_cap = o->max_tokens > 0 ? o->max_tokens : 1;
    s->verify = calloc((size_t)s->verify_cap, sizeof *s->verify);
    if (!s->tokens || !s->seqs || !s->lps || !s->tl || !s->tlp || !s->verify)
        return gm_fail(GM_ERR_NOMEM, "step buffers for %d sequences", (int)ms);
    return ctl_slots_init(&s->slots, ms, max_blocks > 0 ? max_blocks : 1);
}

static void wm_close(wm_state *s)
{
    gm_engine_destroy(&s->eng);
    gm_comm_destroy(&s->comm);
    free(s->tokens);
    free(s->seqs);
    free(s->lps), free(s->tl), free(s->tlp), free(s->verify);
    ctl_slots_free(&s->slots);
    free(s->txbuf);
    wm_arena_destroy(&s->arena);
    if (s->mon) {
        zmq_socket_monitor(s->sock, NULL, 0);
        zmq_close(s->mon);
    }
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx)
        zmq_ctx_term(s->ctx);
}

int main(int argc, char **argv)
{
    wm_state s;
    memset(&s, 0, sizeof s);
    s.alloc.alloc = wm_arena_alloc;
    s.alloc.free = wm_arena_free;
    s.alloc.allocator_data = &s.arena;
    int pr = parse_args(argc, argv, &s.a);
    if (pr != 0)
        return pr > 0 ? 0 : 2;
    static char tag[48];
    snprintf(tag, sizeof tag, "gemma-worker[%d]", (int)s.a.rank);
    gm_log_init(tag, (gm_log_level)s.a.log_level);
    if (wm_parent_gone(&s))
        return 1;

    char identity[128];
    gm_status st = wm_connect(&s, identity, sizeof identity);
    if (st == GM_OK)
        st = wm_send_hello(&s, identity);
    if (st != GM_OK) {
        GM_ERROR("%s", gm_last_error());
        wm_close(&s);
        return 1;
    }
    st = wm_recv_spec(&s);
    if (st == GM_OK)
        st = wm_load(&s);
    if (st != GM_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", gm_last_error()[0] ? gm_last_error() : gm_status_str(st));
        GM_ERROR("load failed: %s", err);
        wm_send_ready(&s, st, err);
        wm_close(&s); /* linger delivers the Ready */
        return 1;
    }
    GM_INFO("rank %d/%d ready: %s backend, %lld KV blocks, %d seqs, %d tokens/step, context %d", (int)s.a.rank,
            (int)s.a.tp, gm_backend_name(s.spec.backend), (long long)s.kv_blocks, (int)s.eng->opts.max_seqs,
            (int)s.eng->opts.max_tokens, (int)s.eng->opts.max_context);
    if (wm_send_ready(&s, GM_OK, NULL) != GM_OK) {
        GM_ERROR("%s", gm_last_error());
        wm_close(&s);
        return 1;
    }
    int rc = wm_loop(&s);
    wm_close(&s);
    return rc;
}
