/* allreduce_bench.cu - our NCCL communicator's all-reduce beside a plain ncclAllReduce, same run.
 *
 *   allreduce_bench [--ranks N] [--iters K]
 *
 * Forks one process per GPU (rank r on device r), as gemmad's workers are; each joins with the
 * same unique id. Message sizes are the model's: the hidden state of T tokens after o_proj and
 * down_proj, [T, hidden] float32 (our engine) for gemma-2b (2048) and gemma-7b (3072), and the
 * same element count in bf16 through plain NCCL. Bus bandwidth = 2 (N-1)/N * bytes / time. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "parallel/nccl_comm.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));     \
            _exit(1);                                                                              \
        }                                                                                          \
    } while (0)

static double time_ms(cudaStream_t s, int iters, void (*fn)(void *), void *ctx)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 5; i++)
        fn(ctx); /* warm-up */
    CK(cudaStreamSynchronize(s));
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < iters; i++)
        fn(ctx);
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms / iters;
}

typedef struct {
    gm_nccl *ours;
    ncclComm_t plain;
    float *f32;
    __nv_bfloat16 *bf16;
    int64_t n;
    cudaStream_t s;
} ctx_t;

static void run_ours(void *p)
{
    ctx_t *c = (ctx_t *)p;
    if (gm_nccl_allreduce_f32(c->ours, c->f32, c->n, c->s) != GM_OK) {
        fprintf(stderr, "gm_nccl_allreduce_f32 failed\n");
        _exit(1);
    }
}

static void run_plain(void *p)
{
    ctx_t *c = (ctx_t *)p;
    if (ncclAllReduce(c->bf16, c->bf16, (size_t)c->n, ncclBfloat16, ncclSum, c->plain, c->s) != ncclSuccess) {
        fprintf(stderr, "ncclAllReduce failed\n");
        _exit(1);
    }
}

static void rank_main(int rank, int size, const uint8_t *id_ours, const ncclUniqueId *id_plain, int iters)
{
    CK(cudaSetDevice(rank));
    ctx_t c;
    memset(&c, 0, sizeof c);
    if (gm_nccl_create(id_ours, rank, size, &c.ours) != GM_OK) {
        fprintf(stderr, "rank %d: gm_nccl_create: %s\n", rank, gm_last_error());
        _exit(1);
    }
    if (ncclCommInitRank(&c.plain, size, *id_plain, rank) != ncclSuccess) {
        fprintf(stderr, "rank %d: ncclCommInitRank failed\n", rank);
        _exit(1);
    }
    CK(cudaStreamCreate(&c.s));
    const int64_t max_n = 8192ll * 3072;
    CK(cudaMalloc(&c.f32, max_n * sizeof(float)));
    CK(cudaMalloc(&c.bf16, max_n * sizeof(__nv_bfloat16)));
    CK(cudaMemset(c.f32, 0, max_n * sizeof(float)));
    CK(cudaMemset(c.bf16, 0, max_n * sizeof(__nv_bfloat16)));
    const int hidden[2] = {2048, 3072};
    const int tokens[6] = {1, 8, 64, 256, 1024, 8192};
    if (rank == 0)
        printf("%-5s %6s %12s | %12s %10s | %12s %10s\n", "model", "tokens", "elements", "ours f32 us",
               "busbw GB/s", "nccl bf16 us", "busbw GB/s");
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < 6; t++) {
            c.n = (int64_t)hidden[h] * tokens[t];
            double mo = time_ms(c.s, iters, run_ours, &c), mp = time_ms(c.s, iters, run_plain, &c);
            double f = 2.0 * (size - 1) / size;
            if (rank == 0)
                printf("%-5s %6d %12lld | %12.1f %10.1f | %12.1f %10.1f\n", h ? "7b" : "2b", tokens[t],
                       (long long)c.n, mo * 1e3, f * c.n * 4 / (mo * 1e-3) / 1e9, mp * 1e3,
                       f * c.n * 2 / (mp * 1e-3) / 1e9);
        }
    fflush(stdout);
    gm_nccl_destroy(&c.ours);
    ncclCommDestroy(c.plain);
    _exit(0);
}

int main(int argc, char **argv)
{
    int ranks = 0, iters = 50;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) {
            printf("usage: allreduce_bench [--ranks N] [--iters K]\n"
                   "One process per GPU; our communicator's f32 all-reduce beside plain NCCL bf16\n"
                   "at the hidden-state sizes of gemma-2b and gemma-7b.\n");
            return 0;
        } else if (!strcmp(argv[i], "--ranks") && i + 1 < argc) {
            ranks = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
            iters = atoi(argv[++i]);
        } else {
            fprintf(stderr, "allreduce_bench: unknown argument '%s' (see --help)\n", argv[i]);
            return 2;
        }
    }
    if (ranks <= 0) { /* count GPUs in a child, so the parent never initialises CUDA before fork */
        int fd[2];
        if (pipe(fd) != 0)
            return 1;
        pid_t p = fork();
        if (p == 0) {
            int n = 0;
            if (cudaGetDeviceCount(&n) != cudaSuccess)
                n = 0;
            if (write(fd[1], &n, sizeof n) != (ssize_t)sizeof n)
                _exit(1);
            _exit(0);
        }
        if (read(fd[0], &ranks, sizeof ranks) != (ssize_t)sizeof ranks)
            ranks = 0;
        waitpid(p, NULL, 0);
    }
    if (ranks < 2) {
        fprintf(stderr, "allreduce_bench: needs at least 2 GPUs (found %d)\n", ranks);
        return 77;
    }
    uint8_t id_ours[GM_NCCL_ID_BYTES];
    ncclUniqueId id_plain;
    if (gm_nccl_unique_id(id_ours) != GM_OK || ncclGetUniqueId(&id_plain) != ncclSuccess) {
        fprintf(stderr, "allreduce_bench: cannot make NCCL ids: %s\n", gm_last_error());
        return 1;
    }
    pid_t kids[16];
    for (int r = 0; r < ranks && r < 16; r++) {
        kids[r] = fork();
        if (kids[r] == 0)
            rank_main(r, ranks, id_ours, &id_plain, iters);
    }
    int bad = 0;
    for (int r = 0; r < ranks && r < 16; r++) {
        int st = 0;
        waitpid(kids[r], &st, 0);
        bad |= !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return bad;
}
