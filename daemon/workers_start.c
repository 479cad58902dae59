/* workers_start.c - worker sessions (workers.h): each (re)start gets a fresh private directory with
 * an owner file and its own ipc:// control socket, spawns every rank and waits for their Ready
 * without ever blocking the caller: wk_pool_launch starts it, wk_pool_advance moves it on.
 *
 * Killed ranks are never waited for: they go to a reap list that every advance reaps with
 * WNOHANG. A new session spawns once the last one's ranks are gone (a GPU frees its memory only
 * then), or after WK_REAP_MS, whichever comes first. */
#define _GNU_SOURCE /* pipe2 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

#include "common/log.h"
#include "ctl/msg.h"
#include "daemon/workers_int.h"
#include "parallel/comm.h"

#define WK_REAP_MS 10000     /* spawn anyway when killed ranks are not gone after this */
#define WK_DEAD_GRACE_MS 1000 /* a rank that exited while starting: read what it sent until then */
#define WK_OWNER "owner"      /* a session directory's file holding gemmad's pid */
#define WK_SOCK "control"

static const char *wk_log_name(int32_t lvl)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    return lvl >= 0 && lvl <= 4 ? names[lvl] : "info";
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

const char *wk_exit_str(int st, char *buf, size_t cap)
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

/* ---- killing and reaping ---- */

void wk_kill_all(wk_pool *p)
{
    for (int r = 0; r < p->tp; r++) {
        if (p->pids[r] <= 0)
            continue;
        kill(p->pids[r], SIGKILL);
        if (p->n_reap < WK_MAX_REAP) {
            p->reap[p->n_reap++] = p->pids[r];
        } else { /* cannot happen with sane limits: wait for it rather than leak a zombie */
            while (waitpid(p->pids[r], NULL, 0) < 0 && errno == EINTR) {
            }
        }
        p->pids[r] = 0;
    }
}

bool wk_reap(wk_pool *p)
{
    for (int32_t i = 0; i < p->n_reap;) {
        pid_t w = waitpid(p->reap[i], NULL, WNOHANG);
        if (w == p->reap[i] || (w < 0 && errno == ECHILD))
            p->reap[i] = p->reap[--p->n_reap];
        else
            i++;
    }
    return p->n_reap == 0;
}

/* ---- session directories ---- */

/* Remove dir's files of ours (the socket, the owner file), then dir itself if that emptied it. */
static void wk_remove_dir(const char *dir)
{
    char f[640];
    snprintf(f, sizeof f, "%s/" WK_SOCK, dir);
    unlink(f);
    snprintf(f, sizeof f, "%s/" WK_OWNER, dir);
    unlink(f);
    rmdir(dir);
}

int wk_clean_stale_dirs(const char *tmpdir)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "gemmad-", 7) != 0)
            continue;
        char dir[512], owner[640];
        snprintf(dir, sizeof dir, "%s/%s", tmpdir, e->d_name);
        struct stat sb;
        if (lstat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || sb.st_uid != getuid())
            continue;
        snprintf(owner, sizeof owner, "%s/" WK_OWNER, dir);
        int fd = open(owner, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) /* no owner file: an older gemmad's, or one being made right now: leave it */
            continue;
        char buf[32] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        long pid = n > 0 ? strtol(buf, NULL, 10) : 0;
        if (pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue; /* alive (or not ours to judge) */
        wk_remove_dir(dir);
        if (access(dir, F_OK) != 0) {
            GM_INFO("removed %s, left behind by gemmad pid %ld which is gone", dir, pid);
            removed++;
        }
    }
    closedir(d);
    return removed;
}

/* A fresh private directory (mode 0700) with an owner file holding our pid. */
static gm_status wk_make_dir(wk_pool *p)
{
    snprintf(p->dir, sizeof p->dir, "%s/gemmad-XXXXXX", p->tmpdir);
    if (!mkdtemp(p->dir)) {
        int e = errno;
        char want[256];
        snprintf(want, sizeof want, "%s", p->dir);
        p->dir[0] = 0;
        return gm_fail(GM_ERR_IO, "mkdtemp(%s): %s", want, strerror(e));
    }
    char owner[300];
    snprintf(owner, sizeof owner, "%s/" WK_OWNER, p->dir);
    int fd = open(owner, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd >= 0) {
        char pid[32];
        int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
        ssize_t w = write(fd, pid, (size_t)n);
        (void)w;
        close(fd);
    }
    snprintf(p->ipc_path, sizeof p->ipc_path, "%s/" WK_SOCK, p->dir);
    snprintf(p->endpoint, sizeof p->endpoint, "ipc://%s", p->ipc_path);
    return GM_OK;
}

/* This session's ROUTER, bound in its directory. */
static gm_status wk_open_socket(wk_pool *p)
{
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

void wk_session_close(wk_pool *p)
{
    wk_shm_remove(p);
    if (p->sock)
        zmq_close(p->sock);
    p->sock = NULL;
    if (p->dir[0])
        wk_remove_dir(p->dir);
    p->dir[0] = p->ipc_path[0] = p->endpoint[0] = 0;
}

/* ---- the state machine ---- */

static wk_state wk_fail(wk_pool *p, gm_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static wk_state wk_fail(wk_pool *p, gm_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->err_st = st != GM_OK ? st : GM_ERR_INTERNAL;
    wk_kill_all(p);
    wk_session_close(p);
    wk_forget(p);
    p->state = WK_STATE_FAILED;
    GM_ERROR("worker start failed: %s", p->err);
    return p->state;
}

/* Spawn every rank of this session (the shm segment first for cpu tp > 1). */
static wk_state wk_spawn_all(wk_pool *p)
{
    gm_status st = wk_shm_make(p);
    for (int r = 0; r < p->tp && st == GM_OK; r++)
        st = wk_spawn(p, r);
    if (st != GM_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gm_last_error());
        return wk_fail(p, st, "%s", msg);
    }
    p->t_launch = (int64_t)gm_now_ms();
    p->state = WK_STATE_STARTING;
    return p->state;
}

wk_state wk_pool_launch(wk_pool *p)
{
    if (!p)
        return WK_STATE_FAILED;
    wk_kill_all(p);
    wk_session_close(p);
    wk_forget(p);
    p->session++;
    p->err[0] = 0;
    p->err_st = GM_OK;
    p->n_ready = 0;
    p->dead_rank = -1;
    for (int r = 0; r < p->tp; r++)
        p->ready[r] = p->echoed[r] = false;
    gm_status st = wk_make_dir(p);
    if (st == GM_OK)
        st = wk_open_socket(p);
    if (st != GM_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gm_last_error());
        return wk_fail(p, st, "%s", msg);
    }
    if (!wk_reap(p)) {
        p->reap_deadline = (int64_t)gm_now_ms() + WK_REAP_MS;
        p->state = WK_STATE_REAPING;
        return p->state;
    }
    return wk_spawn_all(p);
}

/* Every rank is ready: Start with the smallest pool and limits; the first start fixes the sizes. */
static wk_state wk_all_ready(wk_pool *p)
{
    const gm_worker_spec *first = &p->o.spec; /* after the first start: the sizes it decided */
    if (p->sent.n > 0 && (p->sizing.kv_num_blocks != first->kv_num_blocks || p->sizing.max_seqs != first->max_seqs ||
                          p->sizing.max_tokens != first->max_tokens || p->sizing.max_context != first->max_context))
        return wk_fail(p, GM_ERR_INTERNAL,
                       "the restarted workers decided %lld KV blocks, %d seqs, %d tokens/step, context %d; the first "
                       "start had %lld, %d, %d, %d", (long long)p->sizing.kv_num_blocks, (int)p->sizing.max_seqs,
                       (int)p->sizing.max_tokens, (int)p->sizing.max_context, (long long)first->kv_num_blocks,
                       (int)first->max_seqs, (int)first->max_tokens, (int)first->max_context);
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
    for (int r = 0; r < p->tp; r++)
        if (wk_send(p, r, &m) != GM_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", gm_last_error());
            return wk_fail(p, GM_ERR_ZMQ, "%s", msg);
        }
    /* every rank has mapped the segment: drop its name now, so a SIGKILLed gemmad leaks no shm */
    wk_shm_remove(p);
    if (p->sent.n == 0) { /* the first start: restarts ask for exactly these sizes */
        gm_status st = ctl_slots_init(&p->sent, p->max_seqs, 0);
        if (st != GM_OK)
            return wk_fail(p, st, "slot table for %d sequences", (int)p->max_seqs);
        gm_worker_spec *sp = &p->o.spec;
        sp->kv_num_blocks = p->kv_blocks;
        sp->max_seqs = p->sizing.max_seqs;
        sp->max_tokens = p->sizing.max_tokens;
        sp->max_context = p->sizing.max_context;
    }
    GM_INFO("%d worker%s ready on %s after %lld ms", (int)p->tp, p->tp > 1 ? "s" : "", p->endpoint,
            (long long)((int64_t)gm_now_ms() - p->t_launch));
    wk_log_sizing(p);
    p->state = WK_STATE_READY;
    return p->state;
}

/* One message of a starting session from rank r: GM_OK, or why the start fails. */
static gm_status wk_on_start_message(wk_pool *p, int r, const ctl_msg *m)
{
    switch (m->body_case) {
    case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_HELLO:
        if (m->hello->version != GEMMA__CONTROL__V1__CONTROL_VERSION__CONTROL_VERSION_CURRENT)
            return gm_fail(GM_ERR_FORMAT, "worker rank %d speaks control protocol %u, want %d", r, m->hello->version,
                           GEMMA__CONTROL__V1__CONTROL_VERSION__CONTROL_VERSION_CURRENT);
        GM_DEBUG("worker rank %d connected (pid %d)", r, (int)m->hello->pid);
        return wk_send_spec(p, r);
    case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_READY: {
        const Gemma__Control__V1__Ready *rd = m->ready;
        if (p->ready[r])
            return GM_OK;
        if (!rd->ok)
            return gm_fail(wk_status(rd->status), "worker rank %d: %s", r,
                           rd->error && rd->error[0] ? rd->error : "failed to load");
        gm_status st = wk_take_ready(p, r, p->n_ready, rd);
        if (st == GM_OK) {
            p->ready[r] = true;
            p->n_ready++;
        }
        return st;
    }
    case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_NCCL_ID: {
        gm_status st = GM_OK;
        for (int k = 1; r == 0 && k < p->tp && st == GM_OK; k++)
            st = wk_send(p, k, m);
        return st;
    }
    default:
        return GM_OK;
    }
}

wk_state wk_pool_advance(wk_pool *p)
{
    if (!p)
        return WK_STATE_FAILED;
    wk_reap(p);
    if (p->state == WK_STATE_REAPING) {
        if (p->n_reap > 0 && (int64_t)gm_now_ms() < p->reap_deadline)
            return p->state;
        if (p->n_reap > 0)
            GM_WARN("%d killed worker(s) not gone after %d ms; starting the new ones anyway", (int)p->n_reap,
                    WK_REAP_MS);
        return wk_spawn_all(p);
    }
    if (p->state != WK_STATE_STARTING)
        return p->state;
    for (;;) {
        ctl_msg *m = NULL;
        bool got = false;
        int r = wk_recv(p, &m, &got);
        if (!got)
            break;
        if (!m)
            continue;
        gm_status st = wk_on_start_message(p, r, m);
        gemma__control__v1__control_message__free_unpacked(m, NULL);
        if (st != GM_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", gm_last_error());
            return wk_fail(p, st, "%s", msg);
        }
    }
    if (p->n_ready == p->tp)
        return wk_all_ready(p);
    int64_t now = (int64_t)gm_now_ms();
    if (p->dead_rank < 0) {
        for (int r = 0; r < p->tp; r++) {
            int ws = 0;
            if (p->pids[r] > 0 && waitpid(p->pids[r], &ws, WNOHANG) == p->pids[r]) {
                p->pids[r] = 0;
                p->dead_rank = r;
                p->dead_status = ws;
                p->dead_grace = now + WK_DEAD_GRACE_MS;
                break;
            }
        }
    } else if (now >= p->dead_grace) {
        char why[64];
        return wk_fail(p, GM_ERR_INTERNAL, "worker rank %d %s before it was ready (see its log above)",
                       (int)p->dead_rank, wk_exit_str(p->dead_status, why, sizeof why));
    }
    int64_t limit = p->o.ready_timeout_ms > 0 ? p->o.ready_timeout_ms : 600000;
    if (now - p->t_launch >= limit)
        return wk_fail(p, GM_ERR_INTERNAL, "workers not ready after %lld ms (%d of %d ranks)", (long long)limit,
                       (int)p->n_ready, (int)p->tp);
    return p->state;
}

wk_state wk_pool_state(const wk_pool *p)
{
    return p ? p->state : WK_STATE_FAILED;
}

const char *wk_pool_error(const wk_pool *p)
{
    return p ? p->err : "no pool";
}

int32_t wk_pool_advance_ms(const wk_pool *p)
{
    if (!p)
        return -1;
    if (p->state == WK_STATE_REAPING)
        return 10;
    if (p->state == WK_STATE_STARTING)
        return p->dead_rank >= 0 ? 20 : 50;
    return p->n_reap > 0 ? 200 : -1;
}

uint32_t wk_pool_session(const wk_pool *p)
{
    return p ? p->session : 0;
}

const char *wk_pool_dir(const wk_pool *p)
{
    return p ? p->dir : "";
}

gm_status wk_pool_restart(wk_pool *p)
{
    if (!p)
        return gm_fail(GM_ERR_INVALID_ARG, "restart: NULL pool");
    if (p->session > 0)
        GM_WARN("restarting %d worker%s", (int)p->tp, p->tp > 1 ? "s" : "");
    wk_state s = wk_pool_launch(p);
    while (s == WK_STATE_REAPING || s == WK_STATE_STARTING) {
        zmq_pollitem_t it = {p->sock, 0, ZMQ_POLLIN, 0};
        int32_t wait = wk_pool_advance_ms(p);
        if (p->sock)
            zmq_poll(&it, 1, wait > 0 ? wait : 50);
        s = wk_pool_advance(p);
    }
    if (s != WK_STATE_READY)
        return gm_fail(p->err_st ? p->err_st : GM_ERR_INTERNAL, "%s", p->err);
    return GM_OK;
}

gm_status wk_pool_start(const wk_pool_opts *o, wk_pool **out)
{
    if (!out)
        return gm_fail(GM_ERR_INVALID_ARG, "wk_pool_start: out is NULL");
    wk_pool *p = NULL;
    gm_status st = wk_pool_new(o, &p);
    if (st != GM_OK)
        return st;
    st = wk_pool_restart(p);
    if (st != GM_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", gm_last_error());
        wk_pool_destroy(&p);
        return gm_fail(st, "%s", msg);
    }
    *out = p;
    return GM_OK;
}
