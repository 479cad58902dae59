/* steps.c - the step pipeline (server_int.h): plan and submit steps, collect the sampled tokens, turn
 * them into each request's output; and the workers' state: start, failure, restart, watchdog.
 *
 * Per step (the hot path, 1000+ sequences at a time on the null backend): collect tokens ->
 * sched_commit_step -> per sequence: detokenize, stop strings, mark its request dirty -> plan and
 * submit the next step -> the front doors flush.
 *
 * Run-ahead (run_ahead = true, the default): two steps are in flight, so the workers always have the
 * next plan queued when a step ends and never wait on this loop; step k+1 is planned before step k's
 * tokens are back (sched.h).
 *
 * The workers never block the loop: a (re)start is launched and then moved on from the loop
 * (workers.h: STARTING -> READY / FAILED) while Health says not serving and new requests are refused
 * with UNAVAILABLE. A failed launch is retried after 0.5 s, doubling up to 30 s; only a failure of the
 * FIRST start ends gemmad (a typo must not leave a daemon up that can never serve).
 *
 * The step watchdog. A step's clock starts when it can start running: when it was sent, or when the
 * step before it finished, whichever is later. Its allowance is
 *     max(step_timeout_ms, WD_K x p99 step time, WD_K x p99 time per token x the step's tokens)
 * over the last MET_WINDOW steps (the per-token term covers a long prefill after many short decodes),
 * and at least step_warmup_ms for the first WD_WARMUP_STEPS steps after each (re)start (CUDA graph
 * capture, first-use autotuning). A step past its allowance fails the workers exactly like a crash:
 * its requests end with WORKER_FAILED and the workers are killed and restarted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "daemon/server_int.h"

#define WD_K 10             /* a step may take this many times the recent p99 */
#define WD_WARMUP_STEPS 8   /* steps after a (re)start that get step_warmup_ms */
#define WD_REFRESH 64       /* steps between two p99 refreshes */
#define RESTART_MIN_MS 500  /* first retry of a failed launch */
#define RESTART_MAX_MS 30000

/* ---- the workers' state ---- */

/* Launch a new worker set; a launch that fails at once is retried after the back-off. */
static void workers_launch(gd_server *s)
{
    s->pool_ok = false;
    if (wk_pool_launch(s->pool) == WK_STATE_FAILED && s->sch) {
        s->next_restart_ms = gm_now_ms() + s->restart_backoff_ms;
        GM_ERROR("worker restart failed: %s; retrying in %d ms", wk_pool_error(s->pool), s->restart_backoff_ms);
        s->restart_backoff_ms = s->restart_backoff_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS
                                                                            : s->restart_backoff_ms * 2;
    }
}

void gd_workers_failed(gd_server *s, const char *why)
{
    GM_ERROR("workers failed: %s; restarting them", why);
    int32_t n = sched_fail_running(s->sch, s->failed);
    for (int32_t i = 0; i < n; i++) {
        gd_req *r = s->failed[i]->user;
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__WORKER_FAILED,
                     "a worker failed (%s); gemmad is restarting its workers", why);
    }
    for (sched_seq *q; (q = sched_first_waiting(s->sch));) { /* no worker to run them for a while */
        gd_req_complete(s, q->user, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__UNAVAILABLE,
                        "the workers failed (%s); gemmad is restarting them: retry", why);
        if (q->state != SCHED_FINISHED) /* every choice of its request ended with it; never loop on one */
            sched_finish_seq(s->sch, q, SCHED_FINISH_ERROR);
    }
    sched_abandon(s->sch);
    s->n_plans = 0;
    s->c.worker_restarts++;
    workers_launch(s);
    gd_rpc_flush(s); /* tell them now (the HTTP front door writes at the loop's next turn) */
    gd_http_flush(s);
}

/* The workers are ready for the first time: the scheduler is sized from what they decided. */
static gm_status workers_first_ready(gd_server *s)
{
    const gd_config *cfg = s->cfg;
    s->mcfg = *wk_pool_config(s->pool);
    const gm_sizing *sz = wk_pool_sizing(s->pool); /* what the workers decided (ctl/sizing.h) */
    s->max_context = sz->max_context;
    sched_opts so = {0};
    so.max_seqs = sz->max_seqs;
    so.max_tokens_per_step = sz->max_tokens;
    so.max_context = s->max_context;
    so.max_waiting = cfg->max_waiting;
    so.kv_blocks = wk_pool_kv_blocks(s->pool);
    so.kv_block_size = cfg->kv_block_size;
    so.eos_id = s->mcfg.eos_id > 0 ? s->mcfg.eos_id : GM_TOK_EOS;
    so.eot_id = s->chat.end_of_turn;
    so.prefix_cache = cfg->prefix_cache;
    s->sch = sched_new(&so);
    if (!s->sch)
        return gm_fail(GM_ERR_INVALID_ARG, "scheduler: %s", gm_last_error());
    s->depth = cfg->run_ahead ? 2 : 1;
    s->step_tokens = calloc((size_t)so.max_seqs, sizeof(int32_t));
    s->failed = calloc((size_t)so.max_seqs, sizeof(sched_seq *));
    if (!s->step_tokens || !s->failed)
        return gm_fail(GM_ERR_NOMEM, "step buffers");
    GM_INFO("serving %s on %s: %lld KV blocks of %d tokens, %d seqs, %d tokens/step, context %d, vocab %d%s%s",
            cfg->model ? cfg->model : "(no model)", cfg->listen, (long long)so.kv_blocks, so.kv_block_size,
            so.max_seqs, so.max_tokens_per_step, so.max_context, s->mcfg.vocab_size,
            s->tok ? "" : ", no tokenizer", cfg->run_ahead ? "" : ", no run-ahead");
    return GM_OK;
}

gm_status gd_workers_start(gd_server *s)
{
    const gd_config *cfg = s->cfg;
    wk_pool_opts wo;
    memset(&wo, 0, sizeof(wo));
    wo.worker_bin = cfg->worker_bin;
    wo.log_level = cfg->log_level;
    wo.ready_timeout_ms = cfg->ready_timeout_ms;
    gm_status st = gd_config_spec(cfg, &wo.spec);
    if (st != GM_OK)
        return st;
    GM_INFO("starting %d %s worker(s)%s%s", cfg->tp, gm_backend_name(cfg->backend), wo.spec.model_dir[0] ? " for " : "",
            wo.spec.model_dir);
    if ((st = wk_pool_new(&wo, &s->pool)) != GM_OK)
        return st;
    s->restart_backoff_ms = RESTART_MIN_MS;
    if (wk_pool_launch(s->pool) == WK_STATE_FAILED)
        return gm_fail(GM_ERR_INTERNAL, "%s", wk_pool_error(s->pool));
    return GM_OK;
}

/* The pool became ready: the first time, make the scheduler (a restart has the first start's sizes:
 * the pool fails one that does not). */
static gm_status workers_ready(gd_server *s)
{
    if (!s->sch) {
        gm_status st = workers_first_ready(s);
        if (st != GM_OK)
            return st;
    } else {
        GM_INFO("workers restarted");
    }
    s->pool_ok = true;
    s->restart_backoff_ms = RESTART_MIN_MS;
    s->steps_since_start = 0;
    return GM_OK;
}

gm_status gd_workers_tick(gd_server *s, double now)
{
    wk_state ws = wk_pool_state(s->pool);
    if (ws == WK_STATE_REAPING || ws == WK_STATE_STARTING)
        ws = wk_pool_advance(s->pool);
    if (ws == WK_STATE_READY && !s->pool_ok)
        return workers_ready(s);
    if (ws == WK_STATE_FAILED) {
        s->pool_ok = false;
        if (!s->sch)
            return gm_fail(GM_ERR_INTERNAL, "the workers did not start: %s", wk_pool_error(s->pool));
        if (s->next_restart_ms == 0) { /* a failure of a launch in progress: schedule the retry */
            GM_ERROR("worker restart failed: %s; retrying in %d ms", wk_pool_error(s->pool),
                     s->restart_backoff_ms);
            s->next_restart_ms = now + s->restart_backoff_ms;
            s->restart_backoff_ms = s->restart_backoff_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS
                                                                                : s->restart_backoff_ms * 2;
        } else if (now >= s->next_restart_ms) {
            s->next_restart_ms = 0;
            workers_launch(s);
        }
        return GM_OK;
    }
    s->next_restart_ms = 0;
    if (s->pool_ok && s->n_plans > 0 && s->cfg->step_timeout_ms > 0) {
        double began = s->plan_sent_ms[0] > s->last_done_ms ? s->plan_sent_ms[0] : s->last_done_ms;
        if (now - began > s->plan_allow_ms[0]) {
            char why[256];
            snprintf(why, sizeof why, "step %llu has run for %.0f ms, past its watchdog allowance of %.0f ms",
                     (unsigned long long)s->plans[0].serial, now - began, s->plan_allow_ms[0]);
            gd_workers_failed(s, why);
        }
    }
    return GM_OK;
}

long gd_workers_poll_ms(gd_server *s, double now, long cap)
{
    long t = cap;
    int32_t adv = wk_pool_advance_ms(s->pool);
    if (adv >= 0 && adv < t)
        t = adv;
    if (wk_pool_state(s->pool) == WK_STATE_FAILED && s->next_restart_ms > 0) {
        double left = s->next_restart_ms - now;
        if (left < t)
            t = left < 1 ? 1 : (long)left;
    }
    if (s->pool_ok && s->n_plans > 0 && s->cfg->step_timeout_ms > 0) {
        double began = s->plan_sent_ms[0] > s->last_done_ms ? s->plan_sent_ms[0] : s->last_done_ms;
        double left = began + s->plan_allow_ms[0] - now + 1;
        if (left < t)
            t = left < 1 ? 1 : (long)left;
    }
    return t;
}

void gd_workers_on_child(gd_server *s)
{
    if (s->pool_ok && !wk_pool_alive(s->pool))
        gd_workers_failed(s, "a worker process exited");
    else if (!s->pool_ok)
        gd_workers_tick(s, gm_now_ms()); /* a rank that dies while starting, a killed one to reap */
}

/* The watchdog allowance of a step of n_tokens tokens (the rule above). */
static double step_allowance(gd_server *s, int32_t n_tokens)
{
    const gd_config *cfg = s->cfg;
    if (s->c.steps % WD_REFRESH == 0 || s->steps_since_start <= WD_WARMUP_STEPS) {
        s->wd_p99_ms = met_pct(&s->met.step, 99);
        s->wd_p99_tok_ms = met_pct(&s->met.step_tok, 99);
    }
    double a = cfg->step_timeout_ms;
    if (WD_K * s->wd_p99_ms > a)
        a = WD_K * s->wd_p99_ms;
    if (WD_K * s->wd_p99_tok_ms * n_tokens > a)
        a = WD_K * s->wd_p99_tok_ms * n_tokens;
    if (s->steps_since_start + s->n_plans < WD_WARMUP_STEPS && cfg->step_warmup_ms > a)
        a = cfg->step_warmup_ms;
    return a;
}

/* ---- the step pipeline ---- */

/* The oldest step in flight is done: commit its tokens, stream them. */
static void on_step_done(gd_server *s)
{
    double now = gm_now_ms();
    sched_plan *plan = &s->plans[0];
    double began = s->plan_sent_ms[0] > s->last_done_ms ? s->plan_sent_ms[0] : s->last_done_ms;
    met_step_done(&s->met, now - began, plan->n_tokens); /* pipelined: the time since the previous step ended */
    s->last_done_ms = now;
    s->c.steps++;
    s->steps_since_start++;
    int64_t n_vt = 0;
    const int32_t *vt = wk_pool_verify(s->pool, &n_vt);
    if (!sched_commit_verified(s->sch, plan, s->step_tokens, vt, n_vt)) {
        gd_workers_failed(s, "rank 0 returned verify samples that do not match the step");
        return;
    }
    const uint8_t *lp_has = NULL;
    const gm_token_logprobs *lp = wk_pool_logprobs(s->pool, &lp_has);
    char buf[GM_DETOK_MAX_OUT];
    for (int32_t i = 0; i < plan->n; i++) {
        sched_seq *q = plan->seqs[i];
        if (!q)
            continue;
        gd_req *r = q->user;
        if (r->beam) { /* beam search: the round's log-probabilities, no token of its own */
            gd_beam_on_step(s, r, q, plan->got[i], s->step_tokens[i], lp && lp_has[i] ? &lp[i] : NULL);
            continue;
        }
        gd_choice *c = &r->ch[q->index];
        if (r->done || c->done)
            continue;
        int32_t got = plan->got[i], base = q->n_tokens - got;
        if (got && r->t_first == 0)
            r->t_first = now;
        /* a verify entry (speculative decoding) may append several: each as if it came alone */
        for (int32_t j = 0; j < got; j++) {
            s->c.completion_tokens++;
            if (r->lp_top >= 0)
                gd_req_add_logprobs(r, q->index, lp && lp_has[i] ? &lp[i] : NULL);
            bool last = j == got - 1;
            if (c->dt && !(last && q->state == SCHED_FINISHED && q->stop_token)) {
                if (r->min_tokens > 0) /* stop strings only from min_tokens outputs on, as vLLM */
                    txo_arm(c->tx, base + j + 1 - q->n_prompt >= r->min_tokens);
                size_t n = gm_detok_push(c->dt, q->tokens[base + j], buf);
                if (n && txo_append(c->tx, buf, n)) { /* a stop string */
                    if (q->state != SCHED_FINISHED)
                        sched_finish_seq(s->sch, q, SCHED_FINISH_STOP);
                    if (!last) { /* the tokens after it never were (as without speculation) */
                        q->n_tokens = base + j + 1;
                        q->stop_token = false;
                        q->finish = SCHED_FINISH_STOP;
                        break;
                    }
                }
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
            default: /* a NaN row ends the request, every choice of it (they share the prompt's KV) */
                if (s->step_tokens[i] == GM_SAMPLE_NONFINITE)
                    gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR,
                                    GEMMA__V1__ERROR_CODE__NONFINITE_LOGITS,
                                    "the model's logits for this request were NaN or Inf at position %d: a numerical "
                                    "fault of the weights or the engine", q->n_tokens);
                else
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
        s->plan_allow_ms[k] = s->plan_allow_ms[k + 1];
    }
}

static void steps_on_readable(gd_server *s)
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
            if (r->t_sched == 0) {
                r->t_sched = now;
                gd_req_uncharge(s, r); /* running: no longer counted against max_waiting_memory */
            }
        }
        if (plan->n_preempted)
            GM_DEBUG("step %llu: %d sequence(s) preempted", (unsigned long long)plan->serial, plan->n_preempted);
        s->plan_sent_ms[s->n_plans] = now;
        s->plan_allow_ms[s->n_plans] = step_allowance(s, plan->n_tokens);
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

void gd_workers_on_readable(gd_server *s)
{
    if (s->pool_ok)
        steps_on_readable(s);
    else
        gd_workers_tick(s, gm_now_ms()); /* Hello, Ready, NCCL ids of a start in progress */
}
