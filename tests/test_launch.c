/* test_launch.c - rank / size / local rank from Slurm, Open MPI and PMI variables, and
 * endpoint templates. Every test starts from an environment without launcher variables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/launch.h"

static const char *VARS[] = {
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NNODES",
    "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_ID", "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "OMPI_COMM_WORLD_NODE_RANK", "OMPI_MCA_ess_base_jobid", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
    "MPI_LOCALNRANKS", "PMI_LOCAL_RANK", "PMI_LOCAL_SIZE",
};

static int clean_env(void **state)
{
    for (size_t i = 0; i < sizeof(VARS) / sizeof(VARS[0]); i++)
        unsetenv(VARS[i]);
    return 0;
}

static void test_by_hand(void **state)
{
    gc_launch_info li;
    assert_int_equal(gc_launch_detect(&li), GM_OK);
    assert_int_equal(li.launcher, GC_LAUNCHER_NONE);
    assert_int_equal(li.rank, 0);
    assert_int_equal(li.size, 1);
    assert_int_equal(li.local_rank, 0);
    assert_int_equal(li.local_size, 1);
    assert_int_equal(li.node_id, -1);
    assert_string_equal(gc_launcher_name(li.launcher), "none");
}

static void test_slurm(void **state)
{
    /* srun -N 3 -n 7: 3 tasks on node 0 and 1, 1 on node 2 ("3(x2),1"); we are task 4 */
    setenv("SLURM_PROCID", "4", 1);
    setenv("SLURM_NTASKS", "7", 1);
    setenv("SLURM_LOCALID", "1", 1);
    setenv("SLURM_NODEID", "1", 1);
    setenv("SLURM_NNODES", "3", 1);
    setenv("SLURM_TASKS_PER_NODE", "3(x2),1", 1);
    setenv("SLURM_JOB_ID", "12345", 1);
    gc_launch_info li;
    assert_int_equal(gc_launch_detect(&li), GM_OK);
    assert_int_equal(li.launcher, GC_LAUNCHER_SLURM);
    assert_int_equal(li.rank, 4);
    assert_int_equal(li.size, 7);
    assert_int_equal(li.local_rank, 1);
    assert_int_equal(li.local_size, 3);
    assert_int_equal(li.node_id, 1);
    assert_int_equal(li.num_nodes, 3);
    assert_string_equal(li.job_id, "12345");
    /* the last node has one task */
    setenv("SLURM_PROCID", "6", 1);
    setenv("SLURM_LOCALID", "0", 1);
    setenv("SLURM_NODEID", "2", 1);
    assert_int_equal(gc_launch_detect(&li), GM_OK);
    assert_int_equal(li.local_size, 1);
    /* a task id beyond the job is an error naming the launcher */
    setenv("SLURM_PROCID", "7", 1);
    assert_int_equal(gc_launch_detect(&li), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "slurm"));
}

static void test_slurm_bad_values(void **state)
{
    gc_launch_info li;
    setenv("SLURM_PROCID", "x1", 1);
    setenv("SLURM_NTASKS", "2", 1);
    assert_int_equal(gc_launch_detect(&li), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "SLURM_PROCID"));
    setenv("SLURM_PROCID", "0", 1);
    unsetenv("SLURM_NTASKS");
    assert_int_equal(gc_launch_detect(&li), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "SLURM_NTASKS"));
    setenv("SLURM_NTASKS", "2", 1);
    setenv("SLURM_LOCALID", "-1", 1);
    assert_int_equal(gc_launch_detect(&li), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "SLURM_LOCALID"));
}

static void test_ompi_wins_over_slurm(void **state)
{
    /* mpirun inside an sbatch allocation: Slurm says task 0 of 1, Open MPI the truth */
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "1", 1);
    setenv("OMPI_COMM_WORLD_RANK", "5", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "8", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
    setenv("OMPI_COMM_WORLD_NODE_RANK", "1", 1);
    gc_launch_info li;
    assert_int_equal(gc_launch_detect(&li), GM_OK);
    assert_int_equal(li.launcher, GC_LAUNCHER_OMPI);
    assert_int_equal(li.rank, 5);
    assert_int_equal(li.size, 8);
    assert_int_equal(li.local_rank, 1);
    assert_int_equal(li.local_size, 4);
    assert_int_equal(li.node_id, 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "4", 1);
    assert_int_equal(gc_launch_detect(&li), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "local rank 4"));
}

static void test_pmi(void **state)
{
    setenv("PMI_RANK", "3", 1);
    setenv("PMI_SIZE", "4", 1);
    setenv("MPI_LOCALRANKID", "1", 1);
    setenv("MPI_LOCALNRANKS", "2", 1);
    gc_launch_info li;
    assert_int_equal(gc_launch_detect(&li), GM_OK);
    assert_int_equal(li.launcher, GC_LAUNCHER_PMI);
    assert_int_equal(li.rank, 3);
    assert_int_equal(li.size, 4);
    assert_int_equal(li.local_rank, 1);
    assert_int_equal(li.local_size, 2);
    unsetenv("PMI_SIZE");
    assert_int_equal(gc_launch_detect(&li), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "PMI_SIZE"));
}

static void test_expand(void **state)
{
    setenv("SLURM_PROCID", "6", 1);
    setenv("SLURM_NTASKS", "8", 1);
    setenv("SLURM_LOCALID", "2", 1);
    setenv("SLURM_NODEID", "1", 1);
    setenv("SLURM_JOB_ID", "77", 1);
    gc_launch_info li;
    assert_int_equal(gc_launch_detect(&li), GM_OK);
    char out[128];
    assert_int_equal(gc_launch_expand("tcp://0.0.0.0:{5555+local_rank}", &li, out, sizeof(out)), GM_OK);
    assert_string_equal(out, "tcp://0.0.0.0:5557");
    assert_int_equal(gc_launch_expand("replica-{job_id}-{rank}of{size}", &li, out, sizeof(out)), GM_OK);
    assert_string_equal(out, "replica-77-6of8");
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    assert_int_equal(gc_launch_expand("{host}", &li, out, sizeof(out)), GM_OK);
    assert_string_equal(out, host);
    assert_int_equal(gc_launch_expand("{nope}", &li, out, sizeof(out)), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "{nope}"));
    assert_int_equal(gc_launch_expand("{rank", &li, out, sizeof(out)), GM_ERR_INVALID_ARG);
    assert_int_equal(gc_launch_expand("{x+rank}", &li, out, sizeof(out)), GM_ERR_INVALID_ARG);
    assert_int_equal(gc_launch_expand("0123456789", &li, out, 5), GM_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_by_hand, clean_env),
        cmocka_unit_test_setup(test_slurm, clean_env),
        cmocka_unit_test_setup(test_slurm_bad_values, clean_env),
        cmocka_unit_test_setup(test_ompi_wins_over_slurm, clean_env),
        cmocka_unit_test_setup(test_pmi, clean_env),
        cmocka_unit_test_setup(test_expand, clean_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
