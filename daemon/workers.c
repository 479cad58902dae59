/* workers.c - the coordinator's worker pool: fork/exec gemma-worker per rank,
 * step plans out over a ZeroMQ ROUTER (proto/control.proto), tokens back.
 *
 * Resources of one pool: a private directory (mkdtemp, mode 0700) holding the
 * ipc:// control socket, the ROUTER bound there, for tp > 1 on cpu a POSIX shm
 * segment for the workers' all-reduce, and the child processes. Each start is a
 * new "session": workers' routing ids are "<rank>.<session>", so anything a
 * killed worker sent before a restart is recognised and dropped. */
#define _GNU_SOURCE /* pipe2 */
#include "daemon/workers.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/gguf_model.h"
#include "common/log.h"
#include "ctl/msg.h"
#include "ctl/plan.h"
#include "ctl/slots.h"
#include "parallel/comm.h"
#include "proto/control.pb-c.h"

typedef Gemma__Control__V1__ControlMessage ctl_msg;

#define WK_MAX_RANKS 64
#define WK_ID_MAX 64
#define WK_MAX_INFLIGHT 2

struct wk_pool {
    wk_pool_opts o;         /* copy; worker_bin points at the copy below; after the first start the
                             * spec's sizing fields hold what the ranks decided (restarts ask for it) */
    char *worker_bin;       /* owned */
    int32_t tp;
    char dir[256];          /* private dir of the ipc socket */
    char ipc_path[300];
    char endpoint[320];
    char shm_name[64];      /* "" when no segment */
    int64_t shm_elems;
    void *ctx, *sock;
    pid_t pids[WK_MAX_RANKS]; /* 0 = not running (reaped) */
    unsigned session;
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
};

static int64_t wk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *wk_log_name(int32_t lvl)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    return lvl >= 0 && lvl <= 4 ? names[lvl] : "info";
}

/* The spec rank r is to be created with. */
static void wk_spec_for(const wk_pool *p, int r, gm_worker_spec *out)
{
    *out = p->o.spec;
    if (out->backend == GM_BACKEND_CUDA) /* one GPU per rank, counted from the configured device */
        out->device += r;
}

void wk_pool_rank_spec(const wk_pool *p, int32_t r, gm_worker_spec *out)
{
    *out = p->spec_sent[r];
}

static gm_status wk_status(int32_t s)
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

static gm_status wk_send(wk_pool *p, int r, const ctl_msg *m)
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

/* Receive one [id][payload] message without blocking; *m NULL when nothing or malformed.
 * Returns the sender's rank in this session, or -1 (message dropped). */
static int wk_recv(wk_pool *p, ctl_msg **m, bool *got)
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

/* Kill every running rank with SIGKILL and reap it. */
static void wk_kill_all(wk_pool *p)
{
    for (int r = 0; r < p->tp; r++)
        if (p->pids[r] > 0)
            kill(p->pids[r], SIGKILL);
    for (int r = 0; r < p->tp; r++) {
        if (p->pids[r] > 0) {
            while (waitpid(p->pids[r], NULL, 0) < 0 && errno == EINTR) {
            }
            p->pids[r] = 0;
        }
    }
}

/* Drop everything queued on the socket (stale replies of a killed session). */
static void wk_drain(wk_pool *p)
{
    for (;;) {
        ctl_msg *m = NULL;
        bool got = false;
        wk_recv(p, &m, &got);
        if (m)
            gemma__control__v1__control_message__free_unpacked(m, NULL);
        if (!got)
            break;
    }
}

static void wk_shm_remove(wk_pool *p)
{
    if (p->shm_name[0]) {
        gm_shm_comm_unlink(p->shm_name);
        p->shm_name[0] = 0;
    }
}

static gm_status wk_shm_make(wk_pool *p)
{
    wk_shm_remove(p);
    if (p->tp <= 1 || p->o.spec.backend != GM_BACKEND_CPU)
        return GM_OK;
    static atomic_uint counter;
    snprintf(p->shm_name, sizeof p->shm_name, "/gemmad-%d-%u", (int)getpid(), atomic_fetch_add(&counter, 1u));
    gm_status st = gm_shm_comm_create(p->shm_name, p->tp, p->shm_elems);
    if (st != GM_OK)
        p->shm_name[0] = 0;
    return st;
}

/* Append a formatted argument; a failed strdup leaves a NULL that wk_argv reports. */
static void wk_arg(char **av, int *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void wk_arg(char **av, int *n, const char *fmt, ...)
{
    char b[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    av[(*n)++] = strdup(b);
}

/* argv (NULL-terminated, caller frees with wk_argv_free) of rank r's gemma-worker:
 * how to reach us and who it is; everything else comes in its WorkerSpec. */
static char **wk_argv(const wk_pool *p, int r)
{
    enum { MAXA = 24 };
    char **av = calloc(MAXA, sizeof *av);
    if (!av)
        return NULL;
    int n = 0;
    wk_arg(av, &n, "%s", p->worker_bin);
    wk_arg(av, &n, "--control");
    wk_arg(av, &n, "%s", p->endpoint);
    wk_arg(av, &n, "--rank");
    wk_arg(av, &n, "%d", r);
    wk_arg(av, &n, "--tp");
    wk_arg(av, &n, "%d", (int)p->tp);
    if (p->shm_name[0]) {
        wk_arg(av, &n, "--shm");
        wk_arg(av, &n, "%s", p->shm_name);
    }
    wk_arg(av, &n, "--session");
    wk_arg(av, &n, "%u", p->session);
    wk_arg(av, &n, "--parent-pid");
    wk_arg(av, &n, "%d", (int)getpid());
    wk_arg(av, &n, "--log-level");
    wk_arg(av, &n, "%s", wk_log_name(p->o.log_level));
    for (int i = 0; i < n; i++)
        if (!av[i]) {
            for (int j = 0; j < n; j++)
                free(av[j]);
            free(av);
            return NULL;
        }
    return av;
}

static void wk_argv_free(char **av)
{
    if (!av)
        return;
    for (int i = 0; av[i]; i++)
        free(av[i]);
    free(av);
}

/* fork/exec rank r. The child dies with us (PR_SET_PDEATHSIG) and keeps no fd of ours but 0-2. */
static gm_status wk_spawn(wk_pool *p, int r)
{
    char **av = wk_argv(p, r);
    if (!av)
        return gm_fail(GM_ERR_NOMEM, "worker argv");
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        wk_argv_free(av);
        return gm_fail(GM_ERR_IO, "pipe: %s", strerror(errno));
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pfd[0]);
        close(pfd[1]);
        wk_argv_free(av);
        return gm_fail(GM_ERR_IO, "fork: %s", strerror(e));
    }
    if (pid == 0) { /* child: async-signal-safe calls only */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
#ifdef SYS_close_range
        syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */);
#endif
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(av[0], av);
        int e = errno;
        ssize_t w = write(pfd[1], &e, sizeof e);
        (void)w;
        _exit(127);
    }
    close(pfd[1]);
    int e = 0;
    ssize_t n;
    do
        n = read(pfd[0], &e, sizeof e);
    while (n < 0 && errno == EINTR);
    close(pfd[0]);
    p->pids[r] = pid;
    if (n == (ssize_t)sizeof e) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        p->pids[r] = 0;
        gm_status st = gm_fail(GM_ERR_IO, "cannot run worker %s: %s", av[0], strerror(e));
        wk_argv_free(av);
        return st;
    }
    wk_argv_free(av);
    return GM_OK;
}

static const char *wk_exit_str(int st, char *buf, size_t cap)
{
    if (WIFSIGNALED(st))
        snprintf(buf, cap, "killed by signal %d", WTERMSIG(st));
    else
        snprintf(buf, cap, "exited with code %d", WEXITSTATUS(st));
    return buf;
}

/* Answer rank r's Hello with the spec its engine is created with. */
static gm_status wk_send_spec(wk_pool *p, int r)
{
    wk_spec_for(p, r, &p->spec_sent[r]);
    Gemma__Control__V1__WorkerSpec ws;
    ctl_spec_pack(&p->spec_sent[r], &ws);
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SPEC;
    m.spec = &ws;
    return wk_send(p, r, &m);
}

/* Rank r is ready (n_ready ranks were before it): check the spec it received
 * against the one sent, and merge its sizes into p->sizing (smallest over ranks). */
static gm_status wk_take_ready(wk_pool *p, int r, int n_ready, const Gemma__Control__V1__Ready *rd)
{
    gm_worker_spec want, *got = &p->echo[r];
    wk_spec_for(p, r, &want);
    if (ctl_spec_unpack(rd->spec, got) != GM_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", gm_last_error());
        return gm_fail(GM_ERR_FORMAT, "worker rank %d: its Ready carries no valid spec (%s)", r, msg);
    }
    const char *d = ctl_spec_diff(&want, got);
    if (d)
        return gm_fail(GM_ERR_INTERNAL, "worker rank %d received a different spec than was sent: '%s' differs", r, d);
    p->echoed[r] = true;
    gm_sizing z;
    ctl_sizing_unpack(rd, &z);
    if (z.kv_num_blocks < 1 || z.max_seqs < 1 || z.max_tokens < 1 || z.max_context < 1)
        return gm_fail(GM_ERR_FORMAT, "worker rank %d reports %lld KV blocks, %d seqs, %d tokens, context %d", r,
                       (long long)z.kv_num_blocks, (int)z.max_seqs, (int)z.max_tokens, (int)z.max_context);
    gm_sizing *m = &p->sizing;
    if (n_ready == 0 || r == 0) { /* rank 0's reasons; the numbers are merged below */
        gm_sizing keep = *m;
        *m = z;
        if (n_ready > 0) {
            m->kv_num_blocks = keep.kv_num_blocks, m->kv_bytes = keep.kv_bytes, m->max_seqs = keep.max_seqs;
            m->max_tokens = keep.max_tokens, m->max_context = keep.max_context;
        }
    }
    if (r == 0)
        ctl_model_unpack(rd->model, &p->cfg);
    if (n_ready > 0 && (z.max_seqs != m->max_seqs || z.max_tokens != m->max_tokens || z.max_context != m->max_context))
        GM_WARN("worker rank %d decided %d seqs, %d tokens/step, context %d; the others %d, %d, %d: all take the "
                "smallest", r, (int)z.max_seqs, (int)z.max_tokens, (int)z.max_context, (int)m->max_seqs,
                (int)m->max_tokens, (int)m->max_context);
    bool first = n_ready == 0;
    m->kv_num_blocks = first || z.kv_num_blocks < m->kv_num_blocks ? z.kv_num_blocks : m->kv_num_blocks;
    m->kv_bytes = first || z.kv_bytes < m->kv_bytes ? z.kv_bytes : m->kv_bytes;
    m->max_seqs = first || z.max_seqs < m->max_seqs ? z.max_seqs : m->max_seqs;
    m->max_tokens = first || z.max_tokens < m->max_tokens ? z.max_tokens : m->max_tokens;
    m->max_context = first || z.max_context < m->max_context ? z.max_context : m->max_context;
    return GM_OK;
}

/* Wait for Ready from every rank; answers Hellos with specs, relays NCCL ids,
 * sends Start with the smallest pool and limits. */
static gm_status wk_wait_ready(wk_pool *p)
{
    bool ready[WK_MAX_RANKS] = {false};
    int n_ready = 0;
    int64_t limit = p->o.ready_timeout_ms > 0 ? p->o.ready_timeout_ms : 600000;
    int64_t deadline = wk_now_ms() + limit;
    int64_t grace = 0; /* when a rank died: read what it sent before exiting, until then */
    int dead_rank = -1, dead_status = 0;
    for (int r = 0; r < p->tp; r++)
        p->echoed[r] = false;
    while (n_ready < p->tp) {
        zmq_pollitem_t it = {p->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, 50);
        if (rc < 0 && errno != EINTR)
            return gm_fail(GM_ERR_ZMQ, "poll on %s: %s", p->endpoint, zmq_strerror(errno));
        for (;;) {
            ctl_msg *m = NULL;
            bool got = false;
            int r = wk_recv(p, &m, &got);
            if (!got)
                break;
            if (!m)
                continue;
            gm_status st = GM_OK;
            if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_HELLO) {
                if (m->hello->version != GEMMA__CONTROL__V1__CONTROL_VERSION__CONTROL_VERSION_CURRENT) {
                    st = gm_fail(GM_ERR_FORMAT, "worker rank %d speaks control protocol %u, want %d", r,
                                 m->hello->version, GEMMA__CONTROL__V1__CONTROL_VERSION__CONTROL_VERSION_CURRENT);
                } else {
                    GM_DEBUG("worker rank %d connected (pid %d)", r, (int)m->hello->pid);
                    st = wk_send_spec(p, r);
                }
            } else if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_READY && !ready[r]) {
                const Gemma__Control__V1__Ready *rd = m->ready;
                if (!rd->ok) {
                    st = gm_fail(wk_status(rd->status), "worker rank %d: %s", r,
                                 rd->error && rd->error[0] ? rd->error : "failed to load");
                } else if ((st = wk_take_ready(p, r, n_ready, rd)) == GM_OK) {
                    ready[r] = true;
                    n_ready++;
                }
            } else if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_NCCL_ID && r == 0) {
                for (int k = 1; k < p->tp && st == GM_OK; k++)
                    st = wk_send(p, k, m);
            }
            gemma__control__v1__control_message__free_unpacked(m, NULL);
            if (st != GM_OK)
                return st;
        }
        if (n_ready == p->tp)
            break;
        if (dead_rank < 0) {
            for (int r = 0; r < p->tp; r++) {
                int ws = 0;
                if (p->pids[r] > 0 && waitpid(p->pids[r], &ws, WNOHANG) == p->pids[r]) {
                    p->pids[r] = 0;
                    dead_rank = r;
                    dead_status = ws;
                    grace = wk_now_ms() + 1000;
                    break;
                }
            }
        } else if (wk_now_ms() >= grace) {
            char why[64];
            return gm_fail(GM_ERR_INTERNAL, "worker rank %d %s before it was ready (see its log above)",
                           dead_rank, wk_exit_str(dead_status, why, sizeof why));
        }
        if (wk_now_ms() >= deadline)
            return gm_fail(GM_ERR_INTERNAL, "workers not ready after %lld ms (%d of %d ranks)", (long long)limit,
                           n_ready, (int)p->tp);
    }
    p->kv_blocks = p->sizing.kv_num_blocks;
    p->max_seqs = p->sizing.max_seqs;
    Gemma__Control__V1__Start s = GEMMA__CONTROL__V1__START__INIT;
    s.kv_num_blocks = p->kv_blocks;
    s.max_seqs = p->sizing.max_seqs;
    s.max_tokens = p->sizing.max_tokens;
    s.max_context = p->sizing.max_context;
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_START;
    m.start = &s;
    for (int r = 0; r < p->tp; r++) {
        gm_status st = wk_send(p, r, &m);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}

/* One INFO line per size the ranks decided, with its reason. */
static void wk_log_sizing(const wk_pool *p)
{
    const gm_sizing *z = &p->sizing;
    GM_INFO("KV pool: %lld blocks of %d tokens (%.1f MiB per rank): %s", (long long)z->kv_num_blocks,
            (int)p->o.spec.kv_block_size, (double)z->kv_bytes / (1024.0 * 1024.0), z->why_kv);
    GM_INFO("max_seqs = %d: %s", (int)z->max_seqs, z->why_seqs);
    GM_INFO("max_tokens_per_step = %d: %s", (int)z->max_tokens, z->why_tokens);
    GM_INFO("max_context = %d: %s", (int)z->max_context, z->why_context);
}

/* Nothing in flight any more, and no slot state assumed on the ranks: the next
 * plan resends every slot it names in full (after a restart or a failed step). */
static void wk_forget(wk_pool *p)
{
    p->n_inflight = 0;
    ctl_slots_forget(&p->sent);
}

/* One session: fresh shm, spawn every rank, wait until all are ready. On failure
 * every rank spawned is killed and reaped. */
static gm_status wk_launch(wk_pool *p)
{
    p->session++;
    wk_forget(p);
    wk_drain(p);
    gm_status st = wk_shm_make(p);
    for (int r = 0; r < p->tp && st == GM_OK; r++)
        st = wk_spawn(p, r);
    if (st == GM_OK)
        st = wk_wait_ready(p);
    if (st != GM_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gm_last_error());
        wk_kill_all(p);
        wk_shm_remove(p);
        gm_fail(st, "%s", msg);
        return st;
    }
    /* every rank has mapped the segment: drop its name now, so a SIGKILLed gemmad leaks no shm */
    wk_shm_remove(p);
    if (p->sent.n == 0) { /* the first start: restarts ask for exactly these sizes */
        if ((st = ctl_slots_init(&p->sent, p->max_seqs, 0)) != GM_OK) {
            wk_kill_all(p);
            return st;
        }
        gm_worker_spec *sp = &p->o.spec;
        sp->kv_num_blocks = p->kv_blocks;
        sp->max_seqs = p->sizing.max_seqs;
        sp->max_tokens = p->sizing.max_tokens;
        sp->max_context = p->sizing.max_context;
    }
    GM_INFO("%d worker%s ready on %s", (int)p->tp, p->tp > 1 ? "s" : "", p->endpoint);
    wk_log_sizing(p);
    return GM_OK;
}

static void wk_release(wk_pool *p)
{
    wk_kill_all(p);
    wk_shm_remove(p);
    if (p->sock)
        zmq_close(p->sock);
    if (p->ctx)
        zmq_ctx_term(p->ctx);
    if (p->ipc_path[0])
        unlink(p->ipc_path);
    if (p->dir[0])
        rmdir(p->dir);
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

static gm_status wk_make_dir(wk_pool *p)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !tmp[0] || strlen(tmp) > 60)
        tmp = "/tmp";
    snprintf(p->dir, sizeof p->dir, "%s/gemmad-XXXXXX", tmp);
    if (!mkdtemp(p->dir)) {
        int e = errno;
        char want[256];
        snprintf(want, sizeof want, "%s", p->dir);
        p->dir[0] = 0;
        return gm_fail(GM_ERR_IO, "mkdtemp(%s): %s", want, strerror(e));
    }
    snprintf(p->ipc_path, sizeof p->ipc_path, "%s/control", p->dir);
    snprintf(p->endpoint, sizeof p->endpoint, "ipc://%s", p->ipc_path);
    return GM_OK;
}

static gm_status wk_open_socket(wk_pool *p)
{
    p->ctx = zmq_ctx_new();
    if (!p->ctx)
        return gm_fail(GM_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    p->sock = zmq_socket(p->ctx, ZMQ_ROUTER);
    if (!p->sock)
        return gm_fail(GM_ERR_ZMQ, "zmq_socket(ROUTER): %s", zmq_strerror(errno));
    int one = 1, zero = 0;
    zmq_setsockopt(p->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(p->sock, p->endpoint) != 0)
        return gm_fail(GM_ERR_ZMQ, "bind %s: %s", p->endpoint, zmq_strerror(errno));
    return GM_OK;
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

gm_status wk_pool_start(const wk_pool_opts *o, wk_pool **out)
{
    if (!out)
        return gm_fail(GM_ERR_INVALID_ARG, "wk_pool_start: out is NULL");
    *out = NULL;
    if (!o)
        return gm_fail(GM_ERR_INVALID_ARG, "wk_pool_start: options are NULL");
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
    p->worker_bin = o->worker_bin ? strdup(o->worker_bin) : wk_default_bin();
    p->o.worker_bin = p->worker_bin;
    p->spec_sent = calloc((size_t)tp, sizeof *p->spec_sent);
    p->echo = calloc((size_t)tp, sizeof *p->echo);
    p->echoed = calloc((size_t)tp, sizeof *p->echoed);
    if (!p->spec_sent || !p->echo || !p->echoed) {
        wk_release(p);
        return gm_fail(GM_ERR_NOMEM, "worker pool");
    }
    if (!p->worker_bin) {
        wk_release(p);
        return gm_fail(GM_ERR_NOMEM, "worker pool: cannot find the gemma-worker path");
    }
    if (access(p->worker_bin, X_OK) != 0) {
        gm_status st = gm_fail(GM_ERR_NOT_FOUND, "worker binary %s: %s", p->worker_bin, strerror(errno));
        wk_release(p);
        return st;
    }
    p->shm_elems = wk_shm_elems(&p->o);
    st = wk_make_dir(p);
    if (st == GM_OK)
        st = wk_open_socket(p);
    if (st == GM_OK)
        st = wk_launch(p);
    if (st != GM_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gm_last_error());
        wk_release(p);
        return gm_fail(st, "%s", msg);
    }
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
                } else if ((st = wk_take_logprobs(p, res, n_seqs)) != GM_OK) {
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
    if (!p)
        return false;
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
    return alive;
}

gm_status wk_pool_restart(wk_pool *p)
{
    if (!p)
        return gm_fail(GM_ERR_INVALID_ARG, "restart: NULL pool");
    GM_WARN("restarting %d worker%s", (int)p->tp, p->tp > 1 ? "s" : "");
    wk_kill_all(p);
    return wk_launch(p);
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
    int64_t deadline = wk_now_ms() + 2000;
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
        if (!any || wk_now_ms() >= deadline)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    gm_clear_error();
    wk_release(p); /* SIGKILLs and reaps whoever is left */
}
