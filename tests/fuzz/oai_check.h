/* oai_check.h - what must hold for any body given to http/oai's parsers, shared by the
 * libFuzzer harness (fuzz_oai.c) and the deterministic mutation test (test_oai_mutate.c).
 *
 * Every input goes through all four parsers. A refusal must carry a 4xx/5xx status, a
 * non-empty UTF-8 message and an empty request; an acceptance must respect every limit
 * the header promises. Either way the answer gemmad would send (the error body, or a
 * response and stream chunks built from the parsed fields) must be valid UTF-8 JSON.
 * A violation aborts (the fuzzer reports it; the test fails). */
#ifndef GM_OAI_CHECK_H
#define GM_OAI_CHECK_H

#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/oai.h"

#define OAI_CHECK(cond)                                                                                              \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "oai_check: %s failed at %s:%d\n", #cond, __FILE__, __LINE__);                           \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

/* w holds one JSON document, or SSE events "data: <json>\n\n" each holding one. */
static void oai_check_json(const jsonw *w, bool events)
{
    OAI_CHECK(jsonw_ok(w));
    OAI_CHECK(jsonw_utf8_valid_prefix(w->p, w->len) == w->len);
    if (!events) {
        cJSON *j = cJSON_ParseWithLength(w->p, w->len);
        OAI_CHECK(j != NULL);
        cJSON_Delete(j);
        return;
    }
    const char *p = w->p, *end = w->p + w->len;
    while (p < end) {
        OAI_CHECK(end - p > 8 && !strncmp(p, "data: ", 6));
        const char *nl = strstr(p, "\n\n");
        OAI_CHECK(nl != NULL);
        if (strncmp(p + 6, "[DONE]", 6) != 0) {
            cJSON *j = cJSON_ParseWithLength(p + 6, (size_t)(nl - p - 6));
            OAI_CHECK(j != NULL);
            cJSON_Delete(j);
        }
        p = nl + 2;
    }
}

static void oai_check_error(const oai_error *e, jsonw *w)
{
    OAI_CHECK(e->status >= 400 && e->status < 600);
    OAI_CHECK(e->type && e->type[0]);
    size_t n = strlen(e->message);
    OAI_CHECK(n > 0 && jsonw_utf8_valid_prefix(e->message, n) == n);
    jsonw_reset(w);
    oai_write_error(w, e);
    oai_check_json(w, false);
}

/* Build the bodies gemmad would answer r with, echoing its strings as generated text. */
static void oai_check_answers(const oai_request *r, jsonw *w)
{
    oai_resp resp = {r->endpoint, "id-1", 1, r->model ? r->model : "m", r->include_usage};
    const char *text = r->endpoint == OAI_CHAT ? r->messages[0].content : r->prompts[0].text;
    size_t len = r->endpoint == OAI_CHAT ? r->messages[0].content_len : r->prompts[0].text_len;
    if (!text)
        text = "", len = 0;
    oai_top_logprob top[2] = {{text, len, -0.5f}, {r->user ? r->user : "", r->user ? strlen(r->user) : 0, -1.0f}};
    oai_token_logprob lp[2] = {{text, len, -0.5f, top, 2}, {r->n_stop ? r->stop[0] : "", r->n_stop ? strlen(r->stop[0]) : 0, -2.0f, top, 1}};
    oai_choice c = {0, text, len, OAI_FINISH_STOP, r->logprobs, lp, 2, 0, true};
    jsonw_reset(w);
    oai_write_response(w, &resp, &c, 1, &(oai_usage){1, 2});
    oai_check_json(w, false);
    jsonw_reset(w);
    oai_write_chunk(w, &resp, &c, 1);
    c.first = false;
    c.finish = OAI_FINISH_NONE;
    oai_write_chunk(w, &resp, &c, 1);
    oai_write_usage_chunk(w, &resp, &(oai_usage){1, 2});
    oai_write_done(w);
    oai_check_json(w, true);
}

static void oai_check_request(const oai_request *r)
{
    if (r->endpoint == OAI_COMPLETIONS) {
        OAI_CHECK(r->n_prompts >= 1 && r->n_prompts <= OAI_MAX_PROMPTS && r->prompts);
        for (int32_t i = 0; i < r->n_prompts; i++) {
            const oai_prompt *p = &r->prompts[i];
            OAI_CHECK((p->text != NULL) != (p->ids != NULL));
            if (p->text)
                OAI_CHECK(p->text_len == strlen(p->text) && p->text_len > 0);
            for (int32_t k = 0; p->ids && k < p->n_ids; k++)
                OAI_CHECK(p->ids[k] >= 0);
            OAI_CHECK(!p->ids || p->n_ids > 0);
        }
        OAI_CHECK(!r->messages);
    } else {
        OAI_CHECK(r->n_messages >= 1 && r->n_messages <= OAI_MAX_MESSAGES && r->messages);
        for (int32_t i = 0; i < r->n_messages; i++)
            OAI_CHECK(r->messages[i].content && r->messages[i].content_len == strlen(r->messages[i].content));
        OAI_CHECK(!r->prompts);
    }
    OAI_CHECK(r->max_tokens == -1 || r->max_tokens >= 1);
    OAI_CHECK(!r->has_temperature || (r->temperature >= 0 && r->temperature <= 2));
    OAI_CHECK(!r->has_top_p || (r->top_p > 0 && r->top_p <= 1));
    OAI_CHECK(r->top_k >= 0);
    OAI_CHECK(r->n_stop >= 0 && r->n_stop <= OAI_MAX_STOP);
    for (int32_t i = 0; i < r->n_stop; i++)
        OAI_CHECK(strlen(r->stop[i]) >= 1 && strlen(r->stop[i]) <= OAI_MAX_STOP_LEN);
    OAI_CHECK(r->n_stop_ids >= 0 && r->n_stop_ids <= OAI_MAX_STOP_IDS);
    OAI_CHECK(!r->include_usage || r->stream);
    OAI_CHECK(r->top_logprobs >= 0 && r->top_logprobs <= OAI_MAX_LOGPROBS);
    OAI_CHECK(r->logprobs || r->top_logprobs == 0);
    OAI_CHECK(r->presence_penalty >= -2 && r->presence_penalty <= 2);
    OAI_CHECK(r->frequency_penalty >= -2 && r->frequency_penalty <= 2);
    OAI_CHECK(r->repetition_penalty > 0);
    OAI_CHECK(r->min_tokens >= 0 && (r->max_tokens < 0 || r->min_tokens <= r->max_tokens));
    OAI_CHECK(r->n >= 1 && r->n <= OAI_MAX_N);
    OAI_CHECK(r->best_of == 0 || r->best_of >= r->n);
}

/* Run one input through every parser and check the answers. */
static void oai_check_input(const char *data, size_t size)
{
    static jsonw w;
    oai_error e;
    for (int ep = 0; ep < 2; ep++) {
        oai_request r;
        memset(&e, 0, sizeof e);
        gm_status st = oai_parse_request((oai_endpoint)ep, data, size, &r, &e);
        if (st == GM_OK) {
            oai_check_request(&r);
            oai_check_answers(&r, &w);
            if (ep == OAI_CHAT) {
                gm_chat_msg *m;
                int32_t n;
                if (oai_chat_to_gemma(r.messages, r.n_messages, &m, &n, &e) == GM_OK) {
                    int32_t turns = n - (!strcmp(m[0].role, "system") ? 1 : 0);
                    OAI_CHECK(n == r.n_messages && turns >= 1 && turns % 2 == 1 && !strcmp(m[n - 1].role, "user"));
                    free(m);
                } else {
                    oai_check_error(&e, &w);
                }
            }
            oai_request_free(&r);
        } else {
            oai_check_error(&e, &w);
            OAI_CHECK(!r.prompts && !r.messages && !r.model && !r.stop && !r.user);
        }
    }
    oai_tokenize_req t;
    if (oai_parse_tokenize(data, size, &t, &e) == GM_OK) {
        OAI_CHECK((t.prompt != NULL) != (t.messages != NULL));
        oai_tokenize_req_free(&t);
    } else {
        oai_check_error(&e, &w);
    }
    oai_detokenize_req d;
    if (oai_parse_detokenize(data, size, &d, &e) == GM_OK) {
        OAI_CHECK(d.n_ids == 0 || d.ids);
        jsonw_reset(&w);
        oai_write_tokenize(&w, d.ids, d.n_ids, 8192);
        oai_check_json(&w, false);
        oai_detokenize_req_free(&d);
    } else {
        oai_check_error(&e, &w);
    }
}

#endif
