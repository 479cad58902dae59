/* front_http_routes.c - the HTTP front door's routes other than generation (front_http_int.h):
 * GET /v1/models, /health, /version, /metrics (Prometheus text), POST /tokenize, /detokenize (vLLM's
 * shapes), and the routing of every request (generation goes to gd_http_on_generate, front_http.c). */
#include <stdlib.h>
#include <string.h>

#include "http/http.h"
#include "http/oai.h"
#include "daemon/front_http_int.h"
#include "daemon/server_int.h"

/* ---- the other routes ---- */

static void on_models(gd_server *s, http_req *h)
{
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    oai_write_models(w, s->http->model, s->http->created, s->max_context);
    gd_http_respond_json(s, h, 200);
}

static void on_health(gd_server *s, http_req *h)
{
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    bool ok = s->pool_ok && !s->stopping;
    jsonw_obj_begin(w);
    jsonw_key(w, "status");
    jsonw_str(w, ok ? "ok" : s->stopping ? "draining" : s->sch ? "restarting workers" : "loading");
    jsonw_key(w, "model");
    jsonw_str(w, s->http->model);
    jsonw_obj_end(w);
    gd_http_respond_json(s, h, ok ? 200 : 503);
}

static void on_version(gd_server *s, http_req *h)
{
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    jsonw_obj_begin(w);
    jsonw_key(w, "version");
    jsonw_str(w, GD_VERSION);
    jsonw_obj_end(w);
    gd_http_respond_json(s, h, 200);
}

static void on_metrics(gd_server *s, http_req *h)
{
    prom_metrics *p = &s->met.prom;
    p->prompt_tokens = (uint64_t)s->c.prompt_tokens;
    p->generation_tokens = (uint64_t)s->c.completion_tokens;
    p->steps = (uint64_t)s->c.steps;
    p->worker_restarts = (uint64_t)s->c.worker_restarts;
    p->preemptions = (uint64_t)sched_preemptions(s->sch);
    p->beam_forks = (uint64_t)sched_beam_forks(s->sch);
    p->beam_shared_blocks = (uint64_t)sched_beam_shared(s->sch);
    p->spec_drafts = (uint64_t)sched_spec_steps(s->sch);
    p->spec_draft_tokens = (uint64_t)sched_spec_drafted(s->sch);
    p->spec_accepted_tokens = (uint64_t)sched_spec_accepted(s->sch);
    p->finished[PROM_FINISH_ABORT] = (uint64_t)s->c.requests_cancelled;
    p->running = sched_running(s->sch);
    p->waiting = sched_waiting(s->sch);
    p->kv_blocks_total = sched_kv_total(s->sch);
    p->kv_blocks_used = sched_kv_used(s->sch);
    p->http_connections = http_server_connections(s->http->srv);
    p->rpc_clients = s->n_clients;
    p->uptime_s = (gm_now_ms() - s->start_ms) / 1e3;
    p->version = GD_VERSION;
    p->model = s->http->model;
    p->backend = gm_backend_name(s->cfg->backend);
    p->tp = s->cfg->tp;
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    if (prom_render(p, w) != GM_OK) {
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory rendering the metrics");
        return;
    }
    http_req_respond(h, 200, PROM_CONTENT_TYPE, w->p, w->len);
}

static bool need_tokenizer(gd_server *s, http_req *h)
{
    if (s->tok)
        return true;
    http_req_respond_error(h, 400, "invalid_request_error", NULL,
                           "this gemmad has no tokenizer (it was started without a model that has one)");
    return false;
}

static void on_tokenize(gd_server *s, http_req *h)
{
    oai_tokenize_req t;
    oai_error e;
    size_t blen;
    const char *body = http_req_body(h, &blen);
    if (oai_parse_tokenize(body, blen, &t, &e) != GM_OK) {
        gd_http_respond_err(h, &e);
        return;
    }
    int32_t *ids = NULL, n = 0;
    gm_chat_msg *msgs = NULL;
    int32_t n_msgs = 0;
    if (!gd_http_model_ok(s, t.model)) {
        oai_error_model_not_found(&e, t.model);
        gd_http_respond_err(h, &e);
        goto out;
    }
    if (!need_tokenizer(s, h))
        goto out;
    if (t.prompt) {
        if (gm_tok_encode(s->tok, t.prompt, t.prompt_len, t.add_special_tokens, &ids, &n) != GM_OK) {
            http_req_respond_error(h, 400, "invalid_request_error", NULL, gm_last_error());
            goto out;
        }
    } else {
        if (oai_chat_to_gemma(t.messages, t.n_messages, &msgs, &n_msgs, &e) != GM_OK) {
            gd_http_respond_err(h, &e);
            goto out;
        }
        if (gm_tok_encode_chat_fmt(s->tok, &s->chat, msgs, n_msgs, &ids, &n) != GM_OK) {
            oai_fail(&e, 400, "invalid_request_error", "messages", NULL, "bad chat: %s", gm_last_error());
            gd_http_respond_err(h, &e);
            goto out;
        }
        if (!t.add_generation_prompt) { /* drop the trailing "<start_of_turn>model\n" */
            int32_t *tail = NULL, nt = 0;
            if (gm_tok_encode(s->tok, "model\n", 6, false, &tail, &nt) == GM_OK && n > nt)
                n -= nt + 1;
            free(tail);
        }
    }
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    oai_write_tokenize(w, ids, n, s->max_context);
    gd_http_respond_json(s, h, 200);
out:
    free(ids);
    free(msgs);
    oai_tokenize_req_free(&t);
}

static void on_detokenize(gd_server *s, http_req *h)
{
    oai_detokenize_req d;
    oai_error e;
    size_t blen;
    const char *body = http_req_body(h, &blen);
    if (oai_parse_detokenize(body, blen, &d, &e) != GM_OK) {
        gd_http_respond_err(h, &e);
        return;
    }
    if (!gd_http_model_ok(s, d.model)) {
        oai_error_model_not_found(&e, d.model);
        gd_http_respond_err(h, &e);
    } else if (need_tokenizer(s, h)) {
        int32_t vocab = gm_tok_vocab_size(s->tok);
        for (int32_t i = 0; i < d.n_ids; i++)
            if (d.ids[i] < 0 || d.ids[i] >= vocab) {
                oai_fail(&e, 400, "invalid_request_error", "tokens", "invalid_value",
                         "Invalid 'tokens[%d]': %d is outside the vocabulary [0, %d).", i, d.ids[i], vocab);
                gd_http_respond_err(h, &e);
                oai_detokenize_req_free(&d);
                return;
            }
        char *text = gm_tok_decode(s->tok, d.ids, d.n_ids);
        jsonw *w = &s->http->w;
        jsonw_reset(w);
        oai_write_detokenize(w, text, text ? strlen(text) : 0);
        free(text);
        gd_http_respond_json(s, h, 200);
    }
    oai_detokenize_req_free(&d);
}

/* ---- routing ---- */

enum { R_COMPLETIONS, R_CHAT, R_MODELS, R_HEALTH, R_METRICS, R_VERSION, R_TOKENIZE, R_DETOKENIZE };

void gd_http_on_request(void *core, http_req *h)
{
    static const http_route routes[] = {
        {"/v1/completions", "POST", R_COMPLETIONS}, {"/v1/chat/completions", "POST", R_CHAT},
        {"/v1/models", "GET", R_MODELS},            {"/health", "GET", R_HEALTH},
        {"/metrics", "GET", R_METRICS},             {"/version", "GET", R_VERSION},
        {"/tokenize", "POST", R_TOKENIZE},          {"/detokenize", "POST", R_DETOKENIZE},
    };
    gd_server *s = core;
    switch (http_route_find(h, routes, sizeof routes / sizeof routes[0],
                            "/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics, /tokenize, "
                            "/detokenize")) {
    case R_COMPLETIONS: gd_http_on_generate(s, h, OAI_COMPLETIONS); break;
    case R_CHAT: gd_http_on_generate(s, h, OAI_CHAT); break;
    case R_MODELS: on_models(s, h); break;
    case R_HEALTH: on_health(s, h); break;
    case R_METRICS: on_metrics(s, h); break;
    case R_VERSION: on_version(s, h); break;
    case R_TOKENIZE: on_tokenize(s, h); break;
    case R_DETOKENIZE: on_detokenize(s, h); break;
    default: break; /* answered: 404 or 405 */
    }
}
