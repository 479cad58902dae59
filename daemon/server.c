/* server.c - gemmad's lifecycle and its one event loop (server_int.h says which module does what).
 *
 * Before each sleep: move the workers' (re)start on and run the step watchdog (steps.c), plan and submit
 * steps, flush every front door's output, report; then zmq_poll over the client ROUTER, the tokenizer
 * thread's socket, the workers' socket (while a session has one), the signal pipe and the HTTP server's
 * fd (--http-listen); after it, the HTTP server runs (accepts, reads, writes). */
#define _GNU_SOURCE
#include "daemon/server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/gguf_model.h"
#include "common/log.h"
#include "daemon/server_int.h"

/* ---- lifecycle ---- */

gm_status gd_server_new(const gd_config *cfg, gd_server **out)
{
    *out = NULL;
    gd_server *s = calloc(1, sizeof(*s));
    if (!s)
        return gm_fail(GM_ERR_NOMEM, "server");
    s->cfg = cfg;
    s->start_ms = gm_now_ms();
    met_init(&s->met);
    gm_status st;

    /* the model's own config (chat markers, stop ids, context) and tokenizer - a checkpoint directory or a
     * GGUF file - read in moments: the client limits depend on them */
    s->chat = (gm_chat_format){GM_TOK_START_OF_TURN, GM_TOK_END_OF_TURN, false};
    int64_t ctx_bound = 8192; /* the null backend's gemma-2b shapes */
    gm_tokenizer *thread_tok = NULL; /* the tokenizer thread's own instance */
    if (cfg->model && *cfg->model) {
        gm_checkpoint *ck = NULL;
        if ((st = gm_checkpoint_open(cfg->model, 0, &ck)) != GM_OK)
            goto fail;
        s->chat = (gm_chat_format){ck->cfg.start_of_turn_id, ck->cfg.end_of_turn_id,
                                   ck->cfg.family == GM_FAMILY_GEMMA3};
        ctx_bound = ck->cfg.max_position;
        st = gm_checkpoint_tokenizer(ck, &s->tok);
        if (st == GM_OK && gm_checkpoint_tokenizer(ck, &thread_tok) != GM_OK)
            thread_tok = NULL; /* then the loop tokenizes itself */
        gm_checkpoint_destroy(&ck);
        if (st != GM_OK) {
            GM_WARN("%s: no tokenizer (%s): only token-id prompts are accepted and text deltas are empty", cfg->model,
                    gm_last_error());
            s->tok = NULL;
        }
    } else {
        GM_INFO("no model: null backend with gemma-2b's shapes; only token-id prompts are accepted");
    }
    if (cfg->max_context > 0 && (cfg->max_context < ctx_bound || !cfg->model))
        ctx_bound = cfg->max_context;
    gd_admit_open(s, ctx_bound);
    /* the listen endpoints before the workers: a port in use fails now, not after a model load of minutes */
    if ((st = gd_rpc_open(s)) != GM_OK || (st = gd_http_open(s)) != GM_OK) {
        gm_tok_destroy(&thread_tok);
        goto fail;
    }
    if (thread_tok && (st = tokq_new(s->zctx, thread_tok, &s->chat, &s->tokq)) != GM_OK)
        goto fail;

    /* the workers start in the background: Health says not serving until they are ready */
    if ((st = gd_workers_start(s)) != GM_OK)
        goto fail;
    if ((st = glue_start(s->glue, s->router)) != GM_OK)
        goto fail;
    *out = s;
    return GM_OK;
fail:
    {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", gm_last_error());
        gd_server_destroy(&s);
        return gm_fail(st ? st : GM_ERR_INTERNAL, "%s", msg);
    }
}

void gd_server_destroy(gd_server **ps)
{
    if (!ps || !*ps)
        return;
    gd_server *s = *ps;
    gd_http_close(s);
    tokq_destroy(&s->tokq); /* its sockets before the context goes */
    gd_rpc_close(s);
    while (s->live_head) /* requests of other front doors */
        gd_req_free(s, s->live_head);
    wk_pool_destroy(&s->pool);
    sched_destroy(&s->sch);
    gm_tok_destroy(&s->tok);
    gd_admit_close(s);
    free(s->step_tokens);
    free(s->failed);
    met_free(&s->met);
    free(s);
    *ps = NULL;
}

static void begin_shutdown(gd_server *s, int sig)
{
    if (s->stopping) {
        GM_WARN("second signal %d: cancelling in-flight work now", sig);
        s->stop_deadline_ms = gm_now_ms();
        return;
    }
    s->stopping = true;
    glue_unregister(s->glue, "shutdown");
    s->stop_deadline_ms = gm_now_ms() + s->cfg->shutdown_timeout_ms;
    GM_INFO("signal %d: shutting down; finishing %d running and %d waiting request(s) (at most %d ms)", sig,
            sched_running(s->sch), sched_waiting(s->sch), s->cfg->shutdown_timeout_ms);
}

gm_status gd_server_run(gd_server *s, int signal_fd)
{
    for (;;) {
        double now = gm_now_ms();
        /* before sleep: plan the next step, send what the last one produced */
        gm_status wst = gd_workers_tick(s, now); /* starts, restarts, the step watchdog */
        if (wst != GM_OK)
            return wst;
        if (s->stopping && now >= s->stop_deadline_ms && (!sched_idle(s->sch) || s->n_tokenizing))
            gd_cancel_all(s, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN, "gemmad shut down before the request finished");
        gd_steps_submit(s);
        gd_rpc_flush(s);
        gd_http_flush(s);
        met_rate_tick(&s->met.rate, now / 1e3, s->c.completion_tokens);
        if (now >= s->next_report_ms) {
            if (s->c.steps != s->reported_steps)
                GM_INFO("running %d, waiting %d, KV %lld/%lld blocks, %.0f tokens/s, %lld done, %lld failed, "
                        "%lld cancelled, %lld preempted",
                        sched_running(s->sch), sched_waiting(s->sch), (long long)sched_kv_used(s->sch),
                        (long long)sched_kv_total(s->sch),
                        met_rate_get(&s->met.rate, now / 1e3, s->c.completion_tokens),
                        (long long)s->c.requests_finished, (long long)s->c.requests_failed,
                        (long long)s->c.requests_cancelled, (long long)sched_preemptions(s->sch));
            s->reported_steps = s->c.steps;
            s->next_report_ms = now + 10000;
        }
        gd_admit_trim(s, now);
        if (s->stopping && sched_idle(s->sch) && !s->dirty_head && !s->http_dirty_head && !s->n_tokenizing) {
            gd_http_run(s, true); /* the last answers out */
            GM_INFO("shutdown complete: %lld requests served", (long long)s->c.requests_finished);
            return GM_OK;
        }

        zmq_pollitem_t items[5];
        int nitems = 0, i_wk = -1, i_sig = -1, i_tok = -1;
        items[nitems++] = (zmq_pollitem_t){s->router, 0, ZMQ_POLLIN, 0};
        if (s->tokq)
            i_tok = nitems, items[nitems++] = (zmq_pollitem_t){tokq_socket(s->tokq), 0, ZMQ_POLLIN, 0};
        if (wk_pool_socket(s->pool)) /* a new one at each worker (re)start, none between */
            i_wk = nitems, items[nitems++] = (zmq_pollitem_t){wk_pool_socket(s->pool), 0, ZMQ_POLLIN, 0};
        if (signal_fd >= 0)
            i_sig = nitems, items[nitems++] = (zmq_pollitem_t){NULL, signal_fd, ZMQ_POLLIN, 0};
        int http_fd = gd_http_fd(s, now);
        if (http_fd >= 0)
            items[nitems++] = (zmq_pollitem_t){NULL, http_fd, ZMQ_POLLIN, 0};
        long timeout = 1000;
        if (s->stopping) {
            double left = s->stop_deadline_ms - now;
            timeout = left < 1 ? 1 : left < 1000 ? (long)left : 1000;
        }
        timeout = gd_rpc_poll_ms(s, gd_workers_poll_ms(s, now, timeout));
        timeout = gd_http_timeout_ms(s, timeout, now);
        int rc = zmq_poll(items, nitems, timeout);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return gm_fail(GM_ERR_ZMQ, "zmq_poll: %s", zmq_strerror(errno));
        }
        gd_http_run(s, false); /* always (unless paced): cheap when idle, and its timeouts need it */
        if (i_sig >= 0 && (items[i_sig].revents & ZMQ_POLLIN)) {
            unsigned char sigs[64];
            ssize_t n = read(signal_fd, sigs, sizeof(sigs));
            bool child = false;
            for (ssize_t i = 0; i < n; i++) {
                if (sigs[i] == SIGCHLD)
                    child = true;
                else
                    begin_shutdown(s, sigs[i]);
            }
            if (child)
                gd_workers_on_child(s);
        }
        if (i_wk >= 0 && (items[i_wk].revents & ZMQ_POLLIN))
            gd_workers_on_readable(s);
        if (i_tok >= 0 && (items[i_tok].revents & ZMQ_POLLIN))
            gd_admit_on_tokens(s);
        if (items[0].revents & ZMQ_POLLIN)
            gd_rpc_read(s);
        if (rc == 0) /* periodic check, in case SIGCHLD was missed */
            gd_workers_on_child(s);
    }
}
