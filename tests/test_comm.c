/* test_comm.c - the shared-memory communicator across forked processes:
 * identical rank-order sums on every rank, chunking, broadcast, dead and stuck peers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/status.h"
#include "parallel/comm.h"

static void seg_name(char *buf, size_t cap, const char *tag)
{
    static int n;
    snprintf(buf, cap, "/gm-test-comm-%d-%s-%d", (int)getpid(), tag, n++);
}

/* Deterministic "random" doubles for (rank, i): wide exponent range so rounding order matters. */
static double value(int rank, int64_t i, int round)
{
    uint64_t x = (uint64_t)rank * 0x9e3779b97f4a7c15ull ^ (uint64_t)i * 0xbf58476d1ce4e5b9ull ^
                 (uint64_t)round * 0x94d049bb133111ebull;
    x ^= x >> 31;
    x *= 0xd6e8feb86659fd39ull;
    x ^= x >> 29;
    double u = (double)(x >> 11) / 9007199254740992.0; /* [0, 1) */
    int e = (int)((x >> 3) % 40) - 20;
    return (u - 0.5) * ldexp(1.0, e);
}

/* Child body: allreduce `rounds` buffers of n doubles and a broadcast; exit code 0 = bits as expected. */
static int child_run(const char *name, int rank, int size, int64_t n, int rounds)
{
    alarm(60); /* a hang kills the child, so the parent sees a failure, never a stuck test */
    gm_comm *c = NULL;
    if (gm_shm_comm_open(name, rank, size, &c) != GM_OK) {
        fprintf(stderr, "rank %d: open: %s\n", rank, gm_last_error());
        return 10;
    }
    if (gm_comm_rank(c) != rank || gm_comm_size(c) != size || gm_comm_native(c) != NULL)
        return 11;
    double *buf = malloc((size_t)n * sizeof(double));
    for (int round = 0; round < rounds; round++) {
        for (int64_t i = 0; i < n; i++)
            buf[i] = value(rank, i, round);
        if (gm_comm_allreduce_f64(c, buf, n) != GM_OK) {
            fprintf(stderr, "rank %d: allreduce: %s\n", rank, gm_last_error());
            return 12;
        }
        for (int64_t i = 0; i < n; i++) {
            double want = value(0, i, round);
            for (int r = 1; r < size; r++)
                want += value(r, i, round);
            if (memcmp(&want, &buf[i], sizeof want) != 0) {
                fprintf(stderr, "rank %d round %d elem %lld: %.17g != %.17g\n", rank, round, (long long)i,
                        buf[i], want);
                return 13;
            }
        }
    }
    /* broadcast of n*8 + 3 bytes (odd length) from rank 0 */
    int64_t nb = n * 8 + 3;
    unsigned char *bytes = malloc((size_t)nb);
    for (int64_t i = 0; i < nb; i++)
        bytes[i] = (unsigned char)(rank == 0 ? (i * 7 + 1) : 0xEE);
    if (gm_comm_broadcast(c, bytes, nb) != GM_OK)
        return 14;
    for (int64_t i = 0; i < nb; i++)
        if (bytes[i] != (unsigned char)(i * 7 + 1))
            return 15;
    free(bytes);
    free(buf);
    gm_comm_destroy(&c);
    return c == NULL ? 0 : 16;
}

/* Fork `size` ranks over a fresh segment and require every one to exit 0. */
static void run_ranks(int size, int64_t max_elems, int64_t n, int rounds)
{
    char name[96];
    seg_name(name, sizeof name, "ok");
    assert_int_equal(gm_shm_comm_create(name, size, max_elems), GM_OK);
    pid_t pids[8];
    for (int r = 0; r < size; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0)
            _exit(child_run(name, r, size, n, rounds));
    }
    for (int r = 0; r < size; r++) {
        int st = 0;
        assert_int_equal(waitpid(pids[r], &st, 0), pids[r]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    gm_shm_comm_unlink(name);
}

static void test_allreduce_2(void **state)
{
    (void)state;
    run_ranks(2, 4096, 1000, 5);
}

static void test_allreduce_4(void **state)
{
    (void)state;
    run_ranks(4, 4096, 3000, 5);
}

static void test_chunked(void **state)
{
    (void)state;
    run_ranks(2, 100, 1037, 3); /* 11 chunks, last one partial */
    run_ranks(4, 64, 1000, 2);
}

static void test_single_rank(void **state)
{
    (void)state;
    run_ranks(1, 16, 100, 1);
}

/* Child that opens and then waits for the others to fail; exit 0 = it got an error, not a hang. */
static int child_expect_error(const char *name, int rank, int size)
{
    alarm(60);
    gm_comm *c = NULL;
    if (gm_shm_comm_open(name, rank, size, &c) != GM_OK)
        return 10;
    double buf[64] = {0};
    /* a few good rounds first, then the peer goes away */
    for (int i = 0; i < 3; i++)
        if (gm_comm_allreduce_f64(c, buf, 64) != GM_OK)
            return 11;
    gm_status st = GM_OK;
    for (int i = 0; i < 100 && st == GM_OK; i++)
        st = gm_comm_allreduce_f64(c, buf, 64);
    if (st != GM_ERR_INTERNAL)
        return 12;
    if (!strstr(gm_last_error(), "rank"))
        return 13;
    /* broken for good */
    if (gm_comm_allreduce_f64(c, buf, 64) == GM_OK)
        return 14;
    gm_comm_destroy(&c);
    return 0;
}

static int child_die(const char *name, int rank, int size, int stop)
{
    gm_comm *c = NULL;
    if (gm_shm_comm_open(name, rank, size, &c) != GM_OK)
        return 10;
    double buf[64] = {0};
    for (int i = 0; i < 3; i++)
        if (gm_comm_allreduce_f64(c, buf, 64) != GM_OK)
            return 11;
    if (stop)
        raise(SIGSTOP); /* alive but stuck: the others must time out */
    return 0;           /* dead (a zombie until reaped): the others must notice */
}

static void run_failure(int size, int bad_rank, int stop)
{
    char name[96];
    seg_name(name, sizeof name, stop ? "stop" : "die");
    assert_int_equal(gm_shm_comm_create(name, size, 64), GM_OK);
    pid_t pids[8];
    for (int r = 0; r < size; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0)
            _exit(r == bad_rank ? child_die(name, r, size, stop) : child_expect_error(name, r, size));
    }
    for (int r = 0; r < size; r++) {
        if (r == bad_rank)
            continue;
        int st = 0;
        assert_int_equal(waitpid(pids[r], &st, 0), pids[r]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    int st = 0;
    if (stop)
        kill(pids[bad_rank], SIGKILL);
    assert_int_equal(waitpid(pids[bad_rank], &st, 0), pids[bad_rank]);
    gm_shm_comm_unlink(name);
}

static void test_dead_peer(void **state)
{
    (void)state;
    run_failure(2, 1, 0);
    run_failure(4, 2, 0);
}

static void test_stuck_peer_times_out(void **state)
{
    (void)state;
    setenv("GM_SHM_TIMEOUT_MS", "300", 1);
    run_failure(3, 0, 1);
    unsetenv("GM_SHM_TIMEOUT_MS");
}

static void test_bad_args(void **state)
{
    (void)state;
    gm_comm *c = (gm_comm *)1;
    assert_int_not_equal(gm_shm_comm_create("noslash", 2, 16), GM_OK);
    assert_int_not_equal(gm_shm_comm_create("/gm-test-x", 0, 16), GM_OK);
    assert_int_not_equal(gm_shm_comm_create("/gm-test-x", 2, 0), GM_OK);
    assert_int_not_equal(gm_shm_comm_open("/gm-test-does-not-exist", 0, 2, &c), GM_OK);
    assert_null(c);
    char name[96];
    seg_name(name, sizeof name, "args");
    assert_int_equal(gm_shm_comm_create(name, 2, 16), GM_OK);
    assert_int_not_equal(gm_shm_comm_create(name, 2, 16), GM_OK); /* exists */
    assert_int_not_equal(gm_shm_comm_open(name, 2, 2, &c), GM_OK);  /* rank out of range */
    assert_int_not_equal(gm_shm_comm_open(name, 0, 3, &c), GM_OK);  /* size mismatch */
    assert_int_equal(gm_shm_comm_open(name, 0, 2, &c), GM_OK);
    assert_int_not_equal(gm_comm_allreduce_f64(c, NULL, 4), GM_OK);
    assert_int_not_equal(gm_comm_allreduce_f64(NULL, NULL, 0), GM_OK);
    gm_comm_destroy(&c);
    assert_null(c);
    gm_comm_destroy(&c); /* NULL is fine */
    gm_shm_comm_unlink(name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allreduce_2),  cmocka_unit_test(test_allreduce_4),
        cmocka_unit_test(test_chunked),      cmocka_unit_test(test_single_rank),
        cmocka_unit_test(test_dead_peer),    cmocka_unit_test(test_stuck_peer_times_out),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
