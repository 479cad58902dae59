/* shm_comm.c - the CPU backend's communicator: a POSIX shared-memory segment
 * that every worker of one replica maps.
 *
 * Layout: one 4 KiB header (magic, size, max_elems, barrier words, per-rank pids),
 * then `size` slots of max_elems doubles, 64-byte aligned.
 * All-reduce: each rank copies its chunk into its slot, barrier, each rank sums
 * slots 0..N-1 in that order into its own buffer (so every rank gets the same
 * bits), barrier (nobody overwrites a slot another rank still reads).
 * The barrier is a generation counter with futex waits on the shared page. A
 * wait gives up (GM_ERR_INTERNAL) when a peer has exited or after a timeout
 * (30 s; env GM_SHM_TIMEOUT_MS overrides), and marks the segment broken so
 * every other rank fails fast too: a dead peer never hangs the survivors. */
#include "parallel/comm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

#include "common/status.h"

#define SHM_MAGIC 0x47534843u /* "GSHC" */
#define SHM_MAX_RANKS 64
#define SHM_HDR_BYTES 4096
#define SHM_SPIN 2000
#define SHM_POLL_NS 50000000L /* futex wait slice: 50 ms, then check peers */
#define SHM_DEFAULT_TIMEOUT_MS 30000

typedef struct shm_hdr {
    uint32_t magic;
    int32_t size;
    int64_t max_elems;
    _Atomic uint32_t bar_count; /* ranks arrived at the current barrier */
    _Atomic uint32_t bar_gen;   /* futex word: bumped when a barrier opens */
    _Atomic uint32_t broken;    /* nonzero: a rank gave up; every op fails */
    _Atomic int32_t pids[SHM_MAX_RANKS]; /* 0 until the rank has opened */
} shm_hdr;

_Static_assert(sizeof(shm_hdr) <= SHM_HDR_BYTES, "shm header too large");

/* The generic gm_comm functions dispatch on ops, so that another backend
 * (NCCL) can provide a struct whose first member is the same ops pointer. */
typedef struct gm_comm_ops {
    gm_status (*allreduce_f64)(gm_comm *c, double *buf, int64_t n);
    gm_status (*broadcast)(gm_comm *c, void *buf, int64_t nbytes);
    void *(*native)(gm_comm *c);
    void (*destroy)(gm_comm *c);
} gm_comm_ops;

typedef struct gm_comm_head {
    const gm_comm_ops *ops;
    int32_t rank, size;
} gm_comm_head;

typedef struct shm_comm {
    gm_comm_head head; /* first */
    shm_hdr *hdr;
    double *slots; /* [size, max_elems] f64 */
    size_t map_bytes;
    int64_t max_elems;
    int64_t timeout_ms;
} shm_comm;

static size_t shm_bytes(int32_t size, int64_t max_elems)
{
    return SHM_HDR_BYTES + (size_t)size * (size_t)max_elems * sizeof(double);
}

/* True when pid is gone or a zombie (a dead child not yet reaped still answers kill(0)). */
static int pid_dead(pid_t pid)
{
    if (pid <= 0)
        return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH)
        return 1;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* "pid (comm) S ..." */
    return p && (p[2] == 'Z' || p[2] == 'X');
}

static long futex_wait(_Atomic uint32_t *addr, uint32_t val, long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    return syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static gm_status shm_break(shm_comm *c, const char *why, int peer)
{
    atomic_store(&c->hdr->broken, 1u);
    futex_wake_all(&c->hdr->bar_gen);
    if (peer >= 0)
        return gm_fail(GM_ERR_INTERNAL, "shm comm rank %d: peer rank %d %s", (int)c->head.rank, peer, why);
    return gm_fail(GM_ERR_INTERNAL, "shm comm rank %d: %s", (int)c->head.rank, why);
}

/* Wait until all ranks arrive; fails when the segment is broken, a peer died, or on timeout. */
static gm_status shm_barrier(shm_comm *c)
{
    shm_hdr *h = c->hdr;
    if (atomic_load(&h->broken))
        return gm_fail(GM_ERR_INTERNAL, "shm comm rank %d: a peer rank failed earlier", (int)c->head.rank);
    uint32_t gen = atomic_load(&h->bar_gen);
    if (atomic_fetch_add(&h->bar_count, 1u) + 1 == (uint32_t)c->head.size) {
        atomic_store(&h->bar_count, 0u);
        atomic_fetch_add(&h->bar_gen, 1u);
        futex_wake_all(&h->bar_gen);
        return GM_OK;
    }
    for (int i = 0; i < SHM_SPIN; i++) {
        if (atomic_load(&h->bar_gen) != gen)
            return GM_OK;
        if ((i & 63) == 63)
            sched_yield();
    }
    int64_t deadline = (int64_t)gm_now_ms() + c->timeout_ms;
    while (atomic_load(&h->bar_gen) == gen) {
        if (atomic_load(&h->broken))
            return gm_fail(GM_ERR_INTERNAL, "shm comm rank %d: a peer rank failed", (int)c->head.rank);
        for (int r = 0; r < c->head.size; r++) {
            int32_t pid = atomic_load(&h->pids[r]);
            if (r != c->head.rank && pid_dead(pid))
                return shm_break(c, "exited", r);
        }
        if ((int64_t)gm_now_ms() >= deadline)
            return shm_break(c, "peer rank timed out", -1);
        futex_wait(&h->bar_gen, gen, SHM_POLL_NS);
    }
    return GM_OK;
}

static gm_status shm_allreduce(gm_comm *gc, double *buf, int64_t n)
{
    shm_comm *c = (shm_comm *)gc;
    int32_t size = c->head.size, rank = c->head.rank;
    if (n < 0 || (n > 0 && !buf))
        return gm_fail(GM_ERR_INVALID_ARG, "shm allreduce: bad buffer (n=%lld)", (long long)n);
    if (size == 1)
        return GM_OK;
    for (int64_t off = 0; off < n; off += c->max_elems) {
        int64_t m = n - off < c->max_elems ? n - off : c->max_elems;
        double *mine = c->slots + (size_t)rank * (size_t)c->max_elems;
        memcpy(mine, buf + off, (size_t)m * sizeof(double));
        gm_status st = shm_barrier(c);
        if (st != GM_OK)
            return st;
        double *out = buf + off;
        memcpy(out, c->slots, (size_t)m * sizeof(double)); /* rank 0 first */
        for (int32_t r = 1; r < size; r++) {
            const double *s = c->slots + (size_t)r * (size_t)c->max_elems;
            for (int64_t i = 0; i < m; i++)
                out[i] += s[i];
        }
        st = shm_barrier(c);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}

static gm_status shm_broadcast(gm_comm *gc, void *buf, int64_t nbytes)
{
    shm_comm *c = (shm_comm *)gc;
    if (nbytes < 0 || (nbytes > 0 && !buf))
        return gm_fail(GM_ERR_INVALID_ARG, "shm broadcast: bad buffer (nbytes=%lld)", (long long)nbytes);
    if (c->head.size == 1)
        return GM_OK;
    int64_t chunk = c->max_elems * (int64_t)sizeof(double);
    for (int64_t off = 0; off < nbytes; off += chunk) {
        int64_t m = nbytes - off < chunk ? nbytes - off : chunk;
        if (c->head.rank == 0)
            memcpy(c->slots, (char *)buf + off, (size_t)m);
        gm_status st = shm_barrier(c);
        if (st != GM_OK)
            return st;
        if (c->head.rank != 0)
            memcpy((char *)buf + off, c->slots, (size_t)m);
        st = shm_barrier(c);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}

static void *shm_native(gm_comm *gc)
{
    (void)gc;
    return NULL;
}

static void shm_destroy(gm_comm *gc)
{
    shm_comm *c = (shm_comm *)gc;
    if (c->hdr)
        munmap(c->hdr, c->map_bytes);
    free(c);
}

static const gm_comm_ops shm_ops = {shm_allreduce, shm_broadcast, shm_native, shm_destroy};

static gm_status shm_check_name(const char *name)
{
    if (!name || name[0] != '/' || strlen(name) < 2 || strlen(name) > 200 || strchr(name + 1, '/'))
        return gm_fail(GM_ERR_INVALID_ARG, "shm comm: bad segment name '%s' (want \"/name\")",
                       name ? name : "(null)");
    return GM_OK;
}

gm_status gm_shm_comm_create(const char *name, int32_t size, int64_t max_elems)
{
    if (shm_check_name(name) != GM_OK)
        return GM_ERR_INVALID_ARG;
    if (size < 1 || size > SHM_MAX_RANKS)
        return gm_fail(GM_ERR_INVALID_ARG, "shm comm %s: size %d out of range 1..%d", name, (int)size,
                       SHM_MAX_RANKS);
    if (max_elems < 1 || max_elems > ((int64_t)1 << 40) / 8 / size)
        return gm_fail(GM_ERR_INVALID_ARG, "shm comm %s: max_elems %lld out of range", name,
                       (long long)max_elems);
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return gm_fail(GM_ERR_IO, "shm_open(%s): %s", name, strerror(errno));
    size_t bytes = shm_bytes(size, max_elems);
    if (ftruncate(fd, (off_t)bytes) != 0) {
        int e = errno;
        close(fd);
        shm_unlink(name);
        return gm_fail(GM_ERR_NOMEM, "ftruncate(%s, %zu): %s", name, bytes, strerror(e));
    }
    shm_hdr *h = mmap(NULL, SHM_HDR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (h == MAP_FAILED) {
        shm_unlink(name);
        return gm_fail(GM_ERR_NOMEM, "mmap(%s): %s", name, strerror(errno));
    }
    memset(h, 0, sizeof *h);
    h->size = size;
    h->max_elems = max_elems;
    atomic_thread_fence(memory_order_seq_cst);
    h->magic = SHM_MAGIC;
    munmap(h, SHM_HDR_BYTES);
    return GM_OK;
}

void gm_shm_comm_unlink(const char *name)
{
    if (name && name[0])
        shm_unlink(name);
}

gm_status gm_shm_comm_open(const char *name, int32_t rank, int32_t size, gm_comm **out)
{
    if (!out)
        return gm_fail(GM_ERR_INVALID_ARG, "shm comm open: out is NULL");
    *out = NULL;
    if (shm_check_name(name) != GM_OK)
        return GM_ERR_INVALID_ARG;
    if (size < 1 || rank < 0 || rank >= size)
        return gm_fail(GM_ERR_INVALID_ARG, "shm comm %s: rank %d of size %d", name, (int)rank, (int)size);
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return gm_fail(GM_ERR_IO, "shm_open(%s): %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < SHM_HDR_BYTES) {
        close(fd);
        return gm_fail(GM_ERR_FORMAT, "shm comm %s: segment too small", name);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return gm_fail(GM_ERR_NOMEM, "mmap(%s): %s", name, strerror(errno));
    shm_hdr *h = p;
    if (h->magic != SHM_MAGIC || h->size != size || h->max_elems < 1 ||
        shm_bytes(h->size, h->max_elems) > (size_t)st.st_size) {
        int32_t hs = h->size;
        munmap(p, (size_t)st.st_size);
        return gm_fail(GM_ERR_FORMAT, "shm comm %s: not a segment for %d ranks (header says %d)", name,
                       (int)size, (int)hs);
    }
    shm_comm *c = calloc(1, sizeof *c);
    if (!c) {
        munmap(p, (size_t)st.st_size);
        return gm_fail(GM_ERR_NOMEM, "shm comm %s: out of memory", name);
    }
    c->head.ops = &shm_ops;
    c->head.rank = rank;
    c->head.size = size;
    c->hdr = h;
    c->map_bytes = (size_t)st.st_size;
    c->max_elems = h->max_elems;
    c->slots = (double *)((char *)p + SHM_HDR_BYTES);
    c->timeout_ms = SHM_DEFAULT_TIMEOUT_MS;
    const char *env = getenv("GM_SHM_TIMEOUT_MS");
    if (env && atoll(env) > 0)
        c->timeout_ms = atoll(env);
    atomic_store(&h->pids[rank], (int32_t)getpid());
    *out = (gm_comm *)c;
    return GM_OK;
}

int32_t gm_comm_rank(const gm_comm *c)
{
    return c ? ((const gm_comm_head *)c)->rank : 0;
}

int32_t gm_comm_size(const gm_comm *c)
{
    return c ? ((const gm_comm_head *)c)->size : 1;
}

gm_status gm_comm_allreduce_f64(gm_comm *c, double *buf, int64_t n)
{
    if (!c)
        return gm_fail(GM_ERR_INVALID_ARG, "allreduce: comm is NULL");
    return ((gm_comm_head *)c)->ops->allreduce_f64(c, buf, n);
}

gm_status gm_comm_broadcast(gm_comm *c, void *buf, int64_t nbytes)
{
    if (!c)
        return gm_fail(GM_ERR_INVALID_ARG, "broadcast: comm is NULL");
    return ((gm_comm_head *)c)->ops->broadcast(c, buf, nbytes);
}

void *gm_comm_native(gm_comm *c)
{
    return c ? ((gm_comm_head *)c)->ops->native(c) : NULL;
}

void gm_comm_destroy(gm_comm **c)
{
    if (!c || !*c)
        return;
    ((gm_comm_head *)*c)->ops->destroy(*c);
    *c = NULL;
}
