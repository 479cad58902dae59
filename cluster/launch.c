/* launch.c - rank, size and local rank from Slurm / Open MPI / PMI environment variables. */
#include "cluster/launch.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *gc_launcher_name(gc_launcher l)
{
    switch (l) {
    case GC_LAUNCHER_NONE: return "none";
    case GC_LAUNCHER_SLURM: return "slurm";
    case GC_LAUNCHER_OMPI: return "ompi";
    case GC_LAUNCHER_PMI: return "pmi";
    }
    return "?";
}

/* Parse env var name as a non-negative int32 into *out. Returns 0 unset, 1 set, -1 bad. */
static int env_int(const char *name, int32_t *out)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < 0 || x > INT32_MAX) {
        gm_fail(GM_ERR_INVALID_ARG, "environment variable %s='%s' is not a non-negative integer", name, v);
        return -1;
    }
    *out = (int32_t)x;
    return 1;
}

/* Slurm's SLURM_TASKS_PER_NODE ("2(x3),1": 2 tasks on each of 3 nodes, then 1)
 * -> tasks on node `node`, or -1 when it cannot be read. */
static int32_t slurm_tasks_on_node(const char *s, int32_t node)
{
    int32_t idx = 0;
    while (s && *s) {
        char *end;
        long tasks = strtol(s, &end, 10);
        if (end == s || tasks <= 0)
            return -1;
        long rep = 1;
        s = end;
        if (*s == '(') {
            if (s[1] != 'x')
                return -1;
            rep = strtol(s + 2, &end, 10);
            if (end == s + 2 || *end != ')' || rep <= 0)
                return -1;
            s = end + 1;
        }
        if (node < idx + rep)
            return (int32_t)tasks;
        idx += (int32_t)rep;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return -1;
}

/* Read one launcher's variable set. Returns 1 found, 0 absent, -1 bad value. */
static int detect_ompi(gc_launch_info *li)
{
    int r = env_int("OMPI_COMM_WORLD_RANK", &li->rank);
    if (r <= 0)
        return r;
    int s = env_int("OMPI_COMM_WORLD_SIZE", &li->size);
    if (s == 0)
        gm_fail(GM_ERR_INVALID_ARG, "OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_SIZE is not");
    if (s <= 0)
        return -1;
    li->local_rank = 0;
    li->local_size = 1;
    if (env_int("OMPI_COMM_WORLD_LOCAL_RANK", &li->local_rank) < 0 ||
        env_int("OMPI_COMM_WORLD_LOCAL_SIZE", &li->local_size) < 0 ||
        env_int("OMPI_COMM_WORLD_NODE_RANK", &li->node_id) < 0)
        return -1;
    const char *job = getenv("OMPI_MCA_ess_base_jobid");
    if (job)
        snprintf(li->job_id, sizeof(li->job_id), "%s", job);
    li->launcher = GC_LAUNCHER_OMPI;
    return 1;
}

static int detect_pmi(gc_launch_info *li)
{
    int r = env_int("PMI_RANK", &li->rank);
    if (r <= 0)
        return r;
    int s = env_int("PMI_SIZE", &li->size);
    if (s == 0)
        gm_fail(GM_ERR_INVALID_ARG, "PMI_RANK is set but PMI_SIZE is not");
    if (s <= 0)
        return -1;
    li->local_rank = 0;
    li->local_size = 1;
    /* MPICH's hydra and Intel MPI name the local rank so; PMI_LOCAL_RANK is PMIx-ish */
    int lr = env_int("MPI_LOCALRANKID", &li->local_rank);
    if (lr == 0)
        lr = env_int("PMI_LOCAL_RANK", &li->local_rank);
    int ls = env_int("MPI_LOCALNRANKS", &li->local_size);
    if (ls == 0)
        ls = env_int("PMI_LOCAL_SIZE", &li->local_size);
    if (lr < 0 || ls < 0)
        return -1;
    li->launcher = GC_LAUNCHER_PMI;
    return 1;
}

static int detect_slurm(gc_launch_info *li)
{
    int r = env_int("SLURM_PROCID", &li->rank);
    if (r <= 0)
        return r;
    int s = env_int("SLURM_NTASKS", &li->size);
    if (s == 0)
        s = env_int("SLURM_NPROCS", &li->size);
    if (s == 0)
        gm_fail(GM_ERR_INVALID_ARG, "SLURM_PROCID is set but SLURM_NTASKS is not");
    if (s <= 0)
        return -1;
    li->local_rank = 0;
    li->local_size = 1;
    if (env_int("SLURM_LOCALID", &li->local_rank) < 0 || env_int("SLURM_NODEID", &li->node_id) < 0 ||
        env_int("SLURM_NNODES", &li->num_nodes) < 0)
        return -1;
    int32_t ls = -1;
    const char *tpn = getenv("SLURM_TASKS_PER_NODE");
    if (tpn && li->node_id >= 0)
        ls = slurm_tasks_on_node(tpn, li->node_id);
    if (ls < 0 && env_int("SLURM_NTASKS_PER_NODE", &ls) < 0)
        return -1;
    if (ls > 0)
        li->local_size = ls;
    else if (li->local_rank >= li->local_size)
        li->local_size = li->local_rank + 1;
    const char *job = getenv("SLURM_JOB_ID");
    if (job)
        snprintf(li->job_id, sizeof(li->job_id), "%s", job);
    li->launcher = GC_LAUNCHER_SLURM;
    return 1;
}

gm_status gc_launch_detect(gc_launch_info *out)
{
    gc_launch_info li = {.launcher = GC_LAUNCHER_NONE, .rank = 0, .size = 1, .local_rank = 0,
                         .local_size = 1, .node_id = -1, .num_nodes = -1};
    int (*order[])(gc_launch_info *) = {detect_ompi, detect_pmi, detect_slurm};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        gc_launch_info t = li;
        int r = order[i](&t);
        if (r < 0)
            return GM_ERR_INVALID_ARG; /* detail already recorded */
        if (r > 0) {
            li = t;
            break;
        }
    }
    if (li.size < 1 || li.rank >= li.size)
        return gm_fail(GM_ERR_INVALID_ARG, "%s launcher: rank %d is not below size %d",
                       gc_launcher_name(li.launcher), li.rank, li.size);
    if (li.local_size < 1 || li.local_rank >= li.local_size)
        return gm_fail(GM_ERR_INVALID_ARG, "%s launcher: local rank %d is not below local size %d",
                       gc_launcher_name(li.launcher), li.local_rank, li.local_size);
    if (li.num_nodes > 0 && li.node_id >= li.num_nodes)
        return gm_fail(GM_ERR_INVALID_ARG, "%s launcher: node id %d is not below %d nodes",
                       gc_launcher_name(li.launcher), li.node_id, li.num_nodes);
    *out = li;
    return GM_OK;
}

/* Value of a {name} variable; false when unknown. */
static bool launch_var(const gc_launch_info *li, const char *name, size_t n, long long *out)
{
    struct {
        const char *name;
        long long v;
    } vars[] = {{"rank", li->rank}, {"size", li->size}, {"local_rank", li->local_rank},
                {"local_size", li->local_size}, {"node_id", li->node_id}};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        if (strlen(vars[i].name) == n && memcmp(vars[i].name, name, n) == 0) {
            *out = vars[i].v;
            return true;
        }
    return false;
}

gm_status gc_launch_expand(const char *tmpl, const gc_launch_info *li, char *out, size_t cap)
{
    size_t o = 0;
    if (cap == 0)
        return gm_fail(GM_ERR_INVALID_ARG, "no room to expand '%s'", tmpl);
    for (const char *s = tmpl; *s;) {
        char piece[300];
        size_t plen;
        if (*s != '{') {
            piece[0] = *s++;
            plen = 1;
        } else {
            const char *close = strchr(s, '}');
            if (!close)
                return gm_fail(GM_ERR_INVALID_ARG, "'%s': '{' without '}'", tmpl);
            const char *name = s + 1;
            size_t n = (size_t)(close - name);
            long long base = 0;
            const char *plus = memchr(name, '+', n);
            if (plus) {
                char *end;
                base = strtoll(name, &end, 10);
                if (end != plus)
                    return gm_fail(GM_ERR_INVALID_ARG, "'%s': expected {NUMBER+name}", tmpl);
                n -= (size_t)(plus + 1 - name);
                name = plus + 1;
            }
            if (n == 4 && memcmp(name, "host", 4) == 0 && !plus) {
                if (gethostname(piece, sizeof(piece) - 1) != 0)
                    snprintf(piece, sizeof(piece), "localhost");
                piece[sizeof(piece) - 1] = 0;
            } else if (n == 6 && memcmp(name, "job_id", 6) == 0 && !plus) {
                snprintf(piece, sizeof(piece), "%s", li->job_id);
            } else {
                long long v;
                if (!launch_var(li, name, n, &v))
                    return gm_fail(GM_ERR_INVALID_ARG, "'%s': unknown variable {%.*s}", tmpl, (int)n, name);
                snprintf(piece, sizeof(piece), "%lld", base + v);
            }
            plen = strlen(piece);
            s = close + 1;
        }
        if (o + plen + 1 > cap)
            return gm_fail(GM_ERR_INVALID_ARG, "'%s' expands to more than %zu bytes", tmpl, cap - 1);
        memcpy(out + o, piece, plen);
        o += plen;
    }
    out[o] = 0;
    return GM_OK;
}
