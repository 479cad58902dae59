/* steps.c - the step pipeline (server_int.h): plan and submit steps, collect the sampled tokens, turn
 * them into each request's output, and recover when the workers fail.
 *
 * Per step (the hot path, 1000+ sequences at a time on the null backend): collect tokens ->
 * sched_commit_step -> per sequence: detokenize, stop strings, mark its request dirty -> plan and
 * submit the next step -> the front doors flush.
 *
 * Run-ahead (run_ahead = true, the default): two steps are in flight, so the workers always have the
 * next plan queued when a step ends and never wait on this loop; step k+1 is planned before step k's
 * tokens are back (sched.h). */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "daemon/server_int.h"

/* The workers failed: every running request ends with WORKER_FAILED; restart them. */
void gd_workers_failed(gd_server *s, const char *why)
{
    GM_ERROR("workers failed: %s; restarting them", why);
    int32_t n = sched_fail_running(s->sch, s->failed);
    for (int32_t i = 0; i < n; i++) {
        gd_req *r = s->failed[i]->user;
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED,
                     "a worker failed (%s); gemmad is restarting its workers", why);
    }
    sched_abandon(s->sch);
    s->n_plans = 0;
    gd_flush_fronts(s); /* tell them before the (slow) restart */
    s->c.worker_restarts++;
    gm_status st = wk_pool_restart(s->pool);
    if (st != GM_OK) {
        GM_ERROR("worker restart failed: %s: %s; retrying in 5 s", gm_status_str(st), gm_last_error());
        s->pool_ok = false;
        s->next_restart_ms = gm_now_ms() + 5000;
    } else {
        GM_INFO("workers restarted");
        s->pool_ok = true;
    }
}

/* The oldest step in flight is done: commit its tokens, stream them. */
static void on_step_done(gd_server *s)
{
    double now = gm_now_ms();
    sched_plan *plan = &s->plans[0];
    double began = s->plan_sent_ms[0] > s->last_done_ms ? s->plan_sent_ms[0] : s->last_done_ms;
    met_step_done(&s->met, now - began); /* pipelined: the time since the previous step ended */
    s->last_done_ms = now;
    s->c.steps++;
    sched_commit_step(s->sch, plan, s->step_tokens);
    const uint8_t *lp_has = NULL;
    const gm_token_logprobs *lp = wk_pool_logprobs(s->pool, &lp_has);
    char buf[GM_DETOK_MAX_OUT];
    for (int32_t i = 0; i < plan->n; i++) {
        sched_seq *q = plan->seqs[i];
        if (!q)
            continue;
        gd_req *r = q->user;
        gd_choice *c = &r->ch[q->index];
        if (r->done || c->done)
            continue;
        bool got = plan->got[i];
        if (got) {
            if (r->t_first == 0)
                r->t_first = now;
            s->c.completion_tokens++;
            if (r->lp_top >= 0)
                gd_req_add_logprobs(r, q->index, lp && lp_has[i] ? &lp[i] : NULL);
            if (c->dt && !(q->state == SCHED_FINISHED && q->stop_token)) {
                if (r->min_tokens > 0) /* stop strings only from min_tokens outputs on, as vLLM */
                    txo_arm(c->tx, sched_seq_generated(q) >= r->min_tokens);
                size_t n = gm_detok_push(c->dt, q->tokens[q->n_tokens - 1], buf);
                if (n && txo_append(c->tx, buf, n) && q->state != SCHED_FINISHED)
                    sched_finish_seq(s->sch, q, SCHED_FINISH_STOP);
            }
        }
        if (q->state == SCHED_FINISHED) {
            switch (q->finish) {
            case SCHED_FINISH_LENGTH:
                gd_choice_complete(s, r, q->index, GEMMA__V1__FINISH_REASON__FINISH_LENGTH);
                break;
            case SCHED_FINISH_STOP:
                gd_choice_complete(s, r, q->index, GEMMA__V1__FINISH_REASON__FINISH_STOP);
                break;
            case SCHED_FINISH_CANCELLED:
                gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
                             "cancelled");
                break;
            default:
                gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                             "the engine returned no token");
                break;
            }
        } else if (got && r->stream) {
            gd_req_mark_dirty(s, r);
        }
    }
    s->n_plans--;
    for (int32_t k = 0; k < s->n_plans; k++) {
        s->plans[k] = s->plans[k + 1];
        s->plan_sent_ms[k] = s->plan_sent_ms[k + 1];
    }
}

void gd_steps_on_readable(gd_server *s)
{
    for (;;) {
        bool done = false;
        if (s->n_plans == 0) { /* nothing expected: let the pool drop stale messages */
            wk_pool_collect(s->pool, NULL, 0, &done);
            return;
        }
        gm_status st = wk_pool_collect(s->pool, s->step_tokens, s->plans[0].n, &done);
        if (st != GM_OK) {
            char why[512];
            snprintf(why, sizeof(why), "%s: %s", gm_status_str(st), gm_last_error());
            gd_workers_failed(s, why);
            return;
        }
        if (!done)
            return;
        on_step_done(s);
    }
}

/* Plan and submit steps while fewer than depth are in flight. */
void gd_steps_submit(gd_server *s)
{
    while (s->pool_ok && s->n_plans < s->depth) {
        sched_plan *plan = &s->plans[s->n_plans];
        int32_t n = sched_plan_step(s->sch, plan);
        if (n == 0)
            return;
        double now = gm_now_ms();
        for (int32_t i = 0; i < n; i++) {
            gd_req *r = plan->seqs[i]->user;
            if (r->t_sched == 0)
                r->t_sched = now;
        }
        if (plan->n_preempted)
            GM_DEBUG("step %llu: %d sequence(s) preempted", (unsigned long long)plan->serial, plan->n_preempted);
        s->plan_sent_ms[s->n_plans] = now;
        s->n_plans++; /* outstanding in the scheduler now: workers_failed abandons it */
        gm_status st = wk_pool_submit(s->pool, plan->steps, n, plan->copies, plan->n_copies);
        if (st != GM_OK) {
            char why[512];
            snprintf(why, sizeof(why), "submit: %s: %s", gm_status_str(st), gm_last_error());
            gd_workers_failed(s, why);
            return;
        }
    }
}
