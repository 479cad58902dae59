/* nccl_comm.h - the CUDA backend's tensor-parallel communicator: NCCL, one rank per GPU process.
 *
 * Rank 0 (or the coordinator) makes the 128-byte unique id once and ships it over the
 * control plane; every rank selects its device (cudaSetDevice) and joins with it. The
 * collectives are stream-ordered and may be captured in CUDA graphs. Without NCCL at
 * build time every call fails with GM_ERR_UNSUPPORTED. */
#ifndef GM_NCCL_COMM_H
#define GM_NCCL_COMM_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GM_NCCL_ID_BYTES 128

typedef struct gm_nccl gm_nccl;

/* A fresh ncclUniqueId, as bytes. */
gm_status gm_nccl_unique_id(uint8_t id[GM_NCCL_ID_BYTES]);

/* Join the communicator of `size` ranks as `rank` on the current device. Blocks until all
 * ranks have joined. Caller owns *out. */
gm_status gm_nccl_create(const uint8_t id[GM_NCCL_ID_BYTES], int32_t rank, int32_t size, gm_nccl **out);

/* In-place sum of n floats over the ranks, on stream s. */
gm_status gm_nccl_allreduce_f32(gm_nccl *c, float *buf, int64_t n, cudaStream_t s);

/* buf [n] int32 on every rank gets root's values, on stream s. */
gm_status gm_nccl_broadcast_i32(gm_nccl *c, int32_t *buf, int64_t n, int32_t root, cudaStream_t s);

int32_t gm_nccl_rank(const gm_nccl *c);
int32_t gm_nccl_size(const gm_nccl *c);

void gm_nccl_destroy(gm_nccl **c);

#ifdef __cplusplus
}
#endif
#endif
