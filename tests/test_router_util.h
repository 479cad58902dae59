/* test_router_util.h - what the gemma-router tests share: a router on a thread in front of
 * scripted fake replicas (tests/test_router_fake.h), a client that collects results, and
 * bounded waits. Include after <cmocka.h>. */
#ifndef TEST_ROUTER_UTIL_H
#define TEST_ROUTER_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "client/gemma_client.h"
#include "common/curve.h"
#include "cluster/router.h"
#include "proto/gemma.pb-c.h"
#include "tests/test_router_fake.h"

#define WAIT_MS 15000 /* upper bound of every wait: reached only when something is broken */

double ms_now(void);

/* The router under test, on a thread. */
typedef struct env {
    gc_router_config cfg;
    gc_router *r;
    pthread_t th;
    void *ctx; /* the fakes' context */
    fake_replica *f[3];
    int nf;
    char ep[256];
} env;

/* Defaults for tests (heartbeat 50 ms, dead 1000 ms) and n_fakes static fake replicas;
 * with_register: a register endpoint on loopback. Change e->cfg, then env_run. */
void env_init(env *e, int n_fakes, int max_in_flight, bool with_register);
/* Create the router from e->cfg and run it on a thread. */
void env_run(env *e);
/* env_init + env_run. */
void env_start(env *e, int n_fakes, int max_in_flight, bool with_register);
/* Stop and join the router (its config stays), so a test can change e->cfg and env_run again. */
void env_halt(env *e);
void env_stop(env *e);

int32_t up_count(env *e);
int32_t serving_count(env *e);
/* Wait (bounded) until n replicas are up and serving. */
void wait_up(env *e, int n);

/* One request's result, filled by pump. */
typedef struct res {
    int32_t toks[64];
    int n;
    bool done;
    gmc_finish fr;
    gmc_code err;
} res;

void pump(gmc_client *c, int timeout_ms);
/* Submit prompt ids [2, marker, seed] for max_tokens tokens; id 0 = the library picks. */
uint64_t submit(gmc_client *c, int32_t seed, int32_t marker, int32_t max_tokens, res *x, uint64_t id);
/* Pump until every res in xs[0..n) is done (bounded). */
void wait_done(gmc_client *c, res *xs, int n);
/* x finished normally with the fake's n tokens for seed. */
void expect_tokens(const res *x, int32_t seed, int32_t n);

/* A DEALER connected to ep (linger 0). */
void *raw_dealer(void *ctx, const char *ep);
/* Pack ClientMessage{request_id rid, Generate{tokens [2, 0, seed], max_tokens, stream}} into
 * buf[256]; returns its size. */
size_t pack_generate(uint8_t *buf, uint64_t rid, int32_t seed, int32_t max_tokens, bool stream);
/* Send a raw frame on a DEALER and parse the first reply (which must come and parse). */
Gemma__V1__ServerMessage *raw_call(void *s, const void *buf, size_t n);

/* Poll a socket monitor for the outcome of a CURVE handshake (ZMQ_EVENT_HANDSHAKE_*; 0 = none). */
int handshake_result(void *mon);
/* A DEALER with key pair kp (NULL: plain) that trusts server_pub, monitored on mon_ep (*mon). */
void *curve_dealer(void *ctx, const char *ep, const gc_keypair *kp, const char *server_pub, void **mon,
                   const char *mon_ep);

#define WAIT_UNTIL(cond)                                                                                        \
    do {                                                                                                        \
        double t0_ = ms_now();                                                                                  \
        while (!(cond) && ms_now() - t0_ < WAIT_MS)                                                             \
            usleep(2000);                                                                                       \
        assert_true(cond);                                                                                      \
    } while (0)

#endif
