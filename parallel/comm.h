/* comm.h - the tensor-parallel communicator: sum-all-reduce across the ranks of one replica.
 *
 * CPU backend: a shared-memory segment that every worker maps; the sum is
 * taken in rank order on every rank, so all ranks get identical bits.
 * CUDA backend: NCCL (parallel/nccl_comm.h), one rank per GPU. */
#ifndef GM_COMM_H
#define GM_COMM_H

#include <stdint.h>

#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gm_comm gm_comm;

/* Create the shared segment (the coordinator does this once per worker set).
 * name: "/gemmad-<pid>-<n>"; max_elems: largest all-reduce, in doubles. */
gm_status gm_shm_comm_create(const char *name, int32_t size, int64_t max_elems);
/* Remove the segment's name (the mapped memory lives until the last unmap). */
void gm_shm_comm_unlink(const char *name);

/* Map the segment as `rank` of `size` (each worker). */
gm_status gm_shm_comm_open(const char *name, int32_t rank, int32_t size, gm_comm **out);

int32_t gm_comm_rank(const gm_comm *c);
int32_t gm_comm_size(const gm_comm *c);

/* In-place sum over ranks of n doubles (CPU backend's partial sums are f64 so
 * that tp=N rounds like tp=1). Blocks until every rank has called. */
gm_status gm_comm_allreduce_f64(gm_comm *c, double *buf, int64_t n);

/* Broadcast n bytes from rank 0 to all (used for sampled tokens). */
gm_status gm_comm_broadcast(gm_comm *c, void *buf, int64_t nbytes);

/* Backend-specific handle (NCCL comm for CUDA); NULL for shm. */
void *gm_comm_native(gm_comm *c);

void gm_comm_destroy(gm_comm **c);

#ifdef __cplusplus
}
#endif
#endif
