/* nccl_comm.cu - thin status-returning wrappers over NCCL. */
#include "nccl_comm.h"

#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda/cuda_check.h"

#ifdef GM_HAVE_NCCL
#include <nccl.h>

struct gm_nccl {
    ncclComm_t comm;
    int32_t rank, size;
};

extern "C" gm_status gm_nccl_unique_id(uint8_t id[GM_NCCL_ID_BYTES])
{
    ncclUniqueId u;
    static_assert(sizeof u == GM_NCCL_ID_BYTES, "ncclUniqueId is 128 bytes");
    GM_NCCL_CHECK(ncclGetUniqueId(&u));
    memcpy(id, &u, sizeof u);
    return GM_OK;
}

extern "C" gm_status gm_nccl_create(const uint8_t id[GM_NCCL_ID_BYTES], int32_t rank, int32_t size, gm_nccl **out)
{
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size)
        return gm_fail(GM_ERR_INVALID_ARG, "nccl: rank %d of %d", rank, size);
    gm_nccl *c = (gm_nccl *)calloc(1, sizeof *c);
    if (!c)
        return gm_fail(GM_ERR_NOMEM, "nccl: no host memory");
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclResult_t r = ncclCommInitRank(&c->comm, size, u, rank);
    if (r != ncclSuccess) {
        free(c);
        return gm_fail(GM_ERR_NCCL, "ncclCommInitRank(rank %d of %d): %s", rank, size, ncclGetErrorString(r));
    }
    c->rank = rank;
    c->size = size;
    *out = c;
    return GM_OK;
}

extern "C" gm_status gm_nccl_allreduce_f32(gm_nccl *c, float *buf, int64_t n, cudaStream_t s)
{
    GM_NCCL_CHECK(ncclAllReduce(buf, buf, (size_t)n, ncclFloat32, ncclSum, c->comm, s));
    return GM_OK;
}

extern "C" gm_status gm_nccl_broadcast_i32(gm_nccl *c, int32_t *buf, int64_t n, int32_t root, cudaStream_t s)
{
    GM_NCCL_CHECK(ncclBroadcast(buf, buf, (size_t)n, ncclInt32, root, c->comm, s));
    return GM_OK;
}

extern "C" int32_t gm_nccl_rank(const gm_nccl *c) { return c->rank; }
extern "C" int32_t gm_nccl_size(const gm_nccl *c) { return c->size; }

extern "C" void gm_nccl_destroy(gm_nccl **cp)
{
    if (!cp || !*cp)
        return;
    ncclCommDestroy((*cp)->comm);
    free(*cp);
    *cp = NULL;
}

#else /* built without NCCL */

struct gm_nccl {
    int32_t rank, size;
};

static gm_status no_nccl(void) { return gm_fail(GM_ERR_UNSUPPORTED, "built without NCCL: tensor parallelism on CUDA is unavailable"); }

extern "C" gm_status gm_nccl_unique_id(uint8_t id[GM_NCCL_ID_BYTES]) { return no_nccl(); }
extern "C" gm_status gm_nccl_create(const uint8_t id[GM_NCCL_ID_BYTES], int32_t rank, int32_t size, gm_nccl **out)
{
    *out = NULL;
    return no_nccl();
}
extern "C" gm_status gm_nccl_allreduce_f32(gm_nccl *c, float *buf, int64_t n, cudaStream_t s) { return no_nccl(); }
extern "C" gm_status gm_nccl_broadcast_i32(gm_nccl *c, int32_t *buf, int64_t n, int32_t root, cudaStream_t s)
{
    return no_nccl();
}
extern "C" int32_t gm_nccl_rank(const gm_nccl *c) { return c ? c->rank : 0; }
extern "C" int32_t gm_nccl_size(const gm_nccl *c) { return c ? c->size : 1; }
extern "C" void gm_nccl_destroy(gm_nccl **cp) {}
#endif
