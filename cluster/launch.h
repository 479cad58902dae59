/* launch.h - where this process sits in a job started by Slurm, mpirun or by hand.
 *
 * Read once at start-up from the environment the launcher sets:
 *   Open MPI  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE / _NODE_RANK
 *   PMI       PMI_RANK / PMI_SIZE (MPICH, Intel MPI: MPI_LOCALRANKID / MPI_LOCALNRANKS)
 *   Slurm     SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_NODEID / SLURM_NNODES,
 *             SLURM_TASKS_PER_NODE ("2(x3),1") for the local size, SLURM_JOB_ID
 * mpirun inside a Slurm allocation sets both, so MPI's variables win over Slurm's.
 * With none of them the process was started by hand: rank 0 of 1.
 *
 * A replica uses local_rank to pick its GPU and its port ("tcp://0.0.0.0:{5555+local_rank}"),
 * and rank as its name when it registers with gemma-router. */
#ifndef GC_LAUNCH_H
#define GC_LAUNCH_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum gc_launcher {
    GC_LAUNCHER_NONE = 0, /* by hand */
    GC_LAUNCHER_SLURM,
    GC_LAUNCHER_OMPI,
    GC_LAUNCHER_PMI,
} gc_launcher;

typedef struct gc_launch_info {
    gc_launcher launcher;
    int32_t rank;       /* 0 .. size-1 over the whole job */
    int32_t size;
    int32_t local_rank; /* 0 .. local_size-1 on this node */
    int32_t local_size;
    int32_t node_id;    /* 0 .. num_nodes-1, -1 when the launcher does not say */
    int32_t num_nodes;  /* -1 when unknown */
    char job_id[64];    /* "" when unknown */
} gc_launch_info;

/* "none" | "slurm" | "ompi" | "pmi". */
const char *gc_launcher_name(gc_launcher l);

/* Fill *out from the environment. A variable that is set but is not a number,
 * or an inconsistent set (rank >= size, local_rank >= local_size), is an error
 * naming the variable. */
gm_status gc_launch_detect(gc_launch_info *out);

/* Expand {rank} {size} {local_rank} {local_size} {node_id} {job_id} {host}
 * and {N+var} (e.g. {5555+local_rank}) in tmpl into out[cap]. An unknown
 * name or an overflow is GM_ERR_INVALID_ARG. */
gm_status gc_launch_expand(const char *tmpl, const gc_launch_info *li, char *out, size_t cap);

#endif
