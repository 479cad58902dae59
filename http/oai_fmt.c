/* oai_fmt.c - OpenAI response bodies and server-sent events, written with jsonw. */
#include "http/oai.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/sampling.h"

/* The process-random key of ids and seeds (read once). */
static const uint64_t *process_key(void)
{
    static uint64_t key[3];
    static int have_key;
    if (!have_key) {
        if (getrandom(key, sizeof key, GRND_NONBLOCK) != (ssize_t)sizeof key) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            key[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30);
            key[1] = gm_mix64(key[0]);
            key[2] = gm_mix64(key[1]);
        }
        have_key = 1;
    }
    return key;
}

void oai_make_id(char *out, size_t cap, oai_endpoint ep, uint64_t seq)
{
    const uint64_t *key = process_key();
    uint64_t a = gm_mix64(seq ^ key[0]), b = gm_mix64(seq + key[1]);
    snprintf(out, cap, "%s%016llx%08x", ep == OAI_CHAT ? "chatcmpl-" : "cmpl-", (unsigned long long)a,
             (unsigned)(b >> 32));
}

uint64_t oai_seed(uint64_t seq)
{
    return gm_mix64(process_key()[2] ^ gm_mix64(seq));
}

void oai_model_name(const char *path, char *out, size_t cap)
{
    if (!cap)
        return;
    size_t n = path ? strlen(path) : 0;
    while (n > 1 && path[n - 1] == '/')
        n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/')
        b--;
    if (b == n) /* "/" or "" */
        b = 0;
    size_t len = n - b < cap - 1 ? n - b : cap - 1;
    len = jsonw_utf8_valid_prefix(path ? path + b : "", len);
    memcpy(out, path ? path + b : "", len);
    out[len] = '\0';
}

static const char *finish_name(oai_finish f)
{
    switch (f) {
    case OAI_FINISH_STOP: return "stop";
    case OAI_FINISH_LENGTH: return "length";
    case OAI_FINISH_ABORT: return "abort";
    default: return NULL;
    }
}

int64_t oai_text_chars(const char *s, size_t n)
{
    int64_t chars = 0;
    size_t i = 0;
    while (i < n) {
        size_t k = jsonw_utf8_valid_prefix(s + i, n - i);
        for (size_t j = 0; j < k; j++) /* characters: bytes that do not continue one */
            chars += ((unsigned char)s[i + j] & 0xC0) != 0x80;
        i += k;
        if (i < n) { /* a byte that is not UTF-8: one U+FFFD */
            chars++;
            i++;
        }
    }
    return chars;
}

/* A logprob as a JSON number: -inf (a token the sampler could not pick) is -9999.0. */
static void logprob(jsonw *w, float lp)
{
    jsonw_num(w, isnan(lp) ? -9999.0 : lp < -9999.0f ? -9999.0 : (double)lp);
}

static void bytes_array(jsonw *w, const char *s, size_t n)
{
    jsonw_arr_begin(w);
    for (size_t i = 0; i < n; i++)
        jsonw_int(w, (unsigned char)s[i]);
    jsonw_arr_end(w);
}

/* chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null} */
static void chat_logprobs(jsonw *w, const oai_token_logprob *lp, int32_t n)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "content");
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++) {
        jsonw_obj_begin(w);
        jsonw_key(w, "token");
        jsonw_strn(w, lp[i].token, lp[i].token_len);
        jsonw_key(w, "logprob");
        logprob(w, lp[i].logprob);
        jsonw_key(w, "bytes");
        bytes_array(w, lp[i].token, lp[i].token_len);
        jsonw_key(w, "top_logprobs");
        jsonw_arr_begin(w);
        for (int32_t k = 0; k < lp[i].n_top; k++) {
            const oai_top_logprob *t = &lp[i].top[k];
            jsonw_obj_begin(w);
            jsonw_key(w, "token");
            jsonw_strn(w, t->token, t->token_len);
            jsonw_key(w, "logprob");
            logprob(w, t->logprob);
            jsonw_key(w, "bytes");
            bytes_array(w, t->token, t->token_len);
            jsonw_obj_end(w);
        }
        jsonw_arr_end(w);
        jsonw_obj_end(w);
    }
    jsonw_arr_end(w);
    jsonw_key(w, "refusal");
    jsonw_null(w);
    jsonw_obj_end(w);
}

/* completions: {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{tok: lp}], "text_offset": [...]};
 * offset is the first token's (the length of the text before it, in characters) */
static void completion_logprobs(jsonw *w, const oai_token_logprob *lp, int32_t n, int64_t offset)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "tokens");
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++)
        jsonw_strn(w, lp[i].token, lp[i].token_len);
    jsonw_arr_end(w);
    jsonw_key(w, "token_logprobs");
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++)
        logprob(w, lp[i].logprob);
    jsonw_arr_end(w);
    jsonw_key(w, "top_logprobs"); /* the alternatives, and the chosen token when it is not one of them */
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++) {
        jsonw_obj_begin(w);
        for (int32_t k = 0; k < lp[i].n_top; k++) {
            jsonw_keyn(w, lp[i].top[k].token, lp[i].top[k].token_len);
            logprob(w, lp[i].top[k].logprob);
        }
        if (!lp[i].in_top) {
            jsonw_keyn(w, lp[i].token, lp[i].token_len);
            logprob(w, lp[i].logprob);
        }
        jsonw_obj_end(w);
    }
    jsonw_arr_end(w);
    jsonw_key(w, "text_offset"); /* in characters, as the text is indexed */
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++) {
        jsonw_int(w, offset);
        offset += oai_text_chars(lp[i].token, lp[i].token_len);
    }
    jsonw_arr_end(w);
    jsonw_obj_end(w);
}

static void head(jsonw *w, const oai_resp *r, const char *object)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "id");
    jsonw_str(w, r->id ? r->id : "");
    jsonw_key(w, "object");
    jsonw_str(w, object);
    jsonw_key(w, "created");
    jsonw_int(w, r->created);
    jsonw_key(w, "model");
    jsonw_str(w, r->model ? r->model : "");
}

static void usage(jsonw *w, const oai_usage *u)
{
    jsonw_key(w, "usage");
    if (!u) {
        jsonw_null(w);
        return;
    }
    jsonw_obj_begin(w);
    jsonw_key(w, "prompt_tokens");
    jsonw_int(w, u->prompt_tokens);
    jsonw_key(w, "completion_tokens");
    jsonw_int(w, u->completion_tokens);
    jsonw_key(w, "total_tokens");
    jsonw_int(w, u->prompt_tokens + u->completion_tokens);
    jsonw_obj_end(w);
}

static void choice_logprobs(jsonw *w, const oai_resp *r, const oai_choice *c)
{
    jsonw_key(w, "logprobs");
    if (!c->has_logprobs)
        jsonw_null(w);
    else if (r->endpoint == OAI_CHAT)
        chat_logprobs(w, c->logprobs, c->n_logprobs);
    else
        completion_logprobs(w, c->logprobs, c->n_logprobs, c->text_offset);
}

/* One choice; delta: a stream chunk's (chat "delta" instead of "message"). */
static void choice(jsonw *w, const oai_resp *r, const oai_choice *c, bool delta)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "index");
    jsonw_int(w, c->index);
    if (r->endpoint == OAI_CHAT) {
        jsonw_key(w, delta ? "delta" : "message");
        jsonw_obj_begin(w);
        if (!delta || c->first) {
            jsonw_key(w, "role");
            jsonw_str(w, "assistant");
        }
        if (!delta || c->first || c->text_len > 0) {
            jsonw_key(w, "content");
            jsonw_strn(w, c->text ? c->text : "", c->text_len);
        }
        jsonw_obj_end(w);
    } else {
        jsonw_key(w, "text");
        jsonw_strn(w, c->text ? c->text : "", c->text_len);
    }
    choice_logprobs(w, r, c);
    jsonw_key(w, "finish_reason");
    jsonw_str(w, finish_name(c->finish));
    jsonw_obj_end(w);
}

void oai_write_response(jsonw *w, const oai_resp *r, const oai_choice *choices, int32_t n, const oai_usage *u)
{
    head(w, r, r->endpoint == OAI_CHAT ? "chat.completion" : "text_completion");
    jsonw_key(w, "choices");
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++)
        choice(w, r, &choices[i], false);
    jsonw_arr_end(w);
    oai_usage zero = {0};
    usage(w, u ? u : &zero);
    jsonw_obj_end(w);
}

void oai_write_chunk(jsonw *w, const oai_resp *r, const oai_choice *choices, int32_t n)
{
    jsonw_raw(w, "data: ", 6);
    head(w, r, r->endpoint == OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    jsonw_key(w, "choices");
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++)
        choice(w, r, &choices[i], true);
    jsonw_arr_end(w);
    if (r->include_usage)
        usage(w, NULL);
    jsonw_obj_end(w);
    jsonw_raw(w, "\n\n", 2);
}

void oai_write_usage_chunk(jsonw *w, const oai_resp *r, const oai_usage *u)
{
    jsonw_raw(w, "data: ", 6);
    head(w, r, r->endpoint == OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    jsonw_key(w, "choices");
    jsonw_arr_begin(w);
    jsonw_arr_end(w);
    oai_usage zero = {0};
    usage(w, u ? u : &zero);
    jsonw_obj_end(w);
    jsonw_raw(w, "\n\n", 2);
}

void oai_write_done(jsonw *w)
{
    jsonw_rawz(w, "data: [DONE]\n\n");
}

void oai_write_stream_end(jsonw *w, const oai_resp *r, const oai_error *e, const oai_usage *u)
{
    if (e)
        oai_write_error_event(w, e);
    else if (r->include_usage)
        oai_write_usage_chunk(w, r, u);
    oai_write_done(w);
}

void oai_write_error(jsonw *w, const oai_error *e)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "error");
    jsonw_obj_begin(w);
    jsonw_key(w, "message");
    jsonw_str(w, e->message);
    jsonw_key(w, "type");
    jsonw_str(w, e->type ? e->type : "server_error");
    jsonw_key(w, "param");
    jsonw_str(w, e->param[0] ? e->param : NULL);
    jsonw_key(w, "code");
    jsonw_str(w, e->code);
    jsonw_obj_end(w);
    jsonw_obj_end(w);
}

void oai_write_error_event(jsonw *w, const oai_error *e)
{
    jsonw_raw(w, "data: ", 6);
    oai_write_error(w, e);
    jsonw_raw(w, "\n\n", 2);
}

void oai_write_models(jsonw *w, const char *model, int64_t created, int32_t max_model_len)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "object");
    jsonw_str(w, "list");
    jsonw_key(w, "data");
    jsonw_arr_begin(w);
    jsonw_obj_begin(w);
    jsonw_key(w, "id");
    jsonw_str(w, model ? model : "");
    jsonw_key(w, "object");
    jsonw_str(w, "model");
    jsonw_key(w, "created");
    jsonw_int(w, created);
    jsonw_key(w, "owned_by");
    jsonw_str(w, "gemmad");
    jsonw_key(w, "root");
    jsonw_str(w, model ? model : "");
    jsonw_key(w, "parent");
    jsonw_null(w);
    jsonw_key(w, "max_model_len");
    if (max_model_len > 0)
        jsonw_int(w, max_model_len);
    else
        jsonw_null(w);
    jsonw_obj_end(w);
    jsonw_arr_end(w);
    jsonw_obj_end(w);
}

void oai_write_tokenize(jsonw *w, const int32_t *ids, int32_t n, int32_t max_model_len)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "count");
    jsonw_int(w, n);
    jsonw_key(w, "max_model_len");
    if (max_model_len > 0)
        jsonw_int(w, max_model_len);
    else
        jsonw_null(w);
    jsonw_key(w, "tokens");
    jsonw_arr_begin(w);
    for (int32_t i = 0; i < n; i++)
        jsonw_int(w, ids[i]);
    jsonw_arr_end(w);
    jsonw_key(w, "token_strs");
    jsonw_null(w);
    jsonw_obj_end(w);
}

void oai_write_detokenize(jsonw *w, const char *text, size_t len)
{
    jsonw_obj_begin(w);
    jsonw_key(w, "prompt");
    jsonw_strn(w, text ? text : "", len);
    jsonw_obj_end(w);
}
