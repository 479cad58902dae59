/* oai.c - OpenAI request bodies -> oai_request, with OpenAI-shaped errors. */
#include "http/oai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

/* ---- errors ---- */

gm_status oai_fail(oai_error *e, int status, const char *type, const char *param, const char *code, const char *fmt,
                   ...)
{
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    /* a message cut inside a UTF-8 character would end in garbage: cut at the last whole one */
    size_t n = strlen(e->message);
    e->message[jsonw_utf8_valid_prefix(e->message, n)] = '\0';
    return GM_ERR_INVALID_ARG;
}

void oai_error_model_not_found(oai_error *e, const char *model)
{
    oai_fail(e, 404, "invalid_request_error", "model", "model_not_found",
             "The model '%.200s' does not exist or is not served here.", model ? model : "");
}

/* The request field one of gemmad's INVALID_ARGUMENT messages is about: admission names it first
 * ("min_tokens 20 exceeds max_tokens 16", "n = 65 sequences: 1..64 allowed"), or NULL. */
static const char *param_in_message(const char *msg)
{
    static const char *const fields[][2] = {
        {"n = ", "n"},
        {"n > 1", "n"}, /* an older gemmad behind gemma-router */
        {"top_logprobs ", "top_logprobs"},
        {"presence_penalty ", "presence_penalty"},
        {"frequency_penalty ", "frequency_penalty"},
        {"repetition_penalty ", "repetition_penalty"},
        {"min_tokens ", "min_tokens"},
        {"max_tokens ", "max_tokens"},
        {"temperature ", "temperature"},
        {"top_k ", "top_k"},
        {"top_p ", "top_p"},
        {"beam", "use_beam_search"}, /* "beam search (beam_width 4) does not go with ..." */
    };
    for (size_t i = 0; msg && i < sizeof fields / sizeof fields[0]; i++)
        if (!strncmp(msg, fields[i][0], strlen(fields[i][0])))
            return fields[i][1];
    return NULL;
}

void oai_error_from_code(oai_error *e, int32_t code, const char *param, const char *message)
{
    const char *m = message && *message ? message : "request failed";
    switch (code) {
    case 1: oai_fail(e, 400, "invalid_request_error", param ? param : param_in_message(m), NULL, "%s", m); break;
    case 2: oai_fail(e, 400, "invalid_request_error", param, "context_length_exceeded", "%s", m); break;
    case 3: oai_fail(e, 429, "rate_limit_error", NULL, "overloaded", "%s", m); break;
    case 4: oai_fail(e, 503, "server_error", NULL, "cancelled", "%s", m); break;
    case 6: oai_fail(e, 503, "server_error", NULL, "worker_failed", "%s", m); break;
    case 10: oai_fail(e, 503, "server_error", NULL, "shutting_down", "%s", m); break;
    case 13: oai_fail(e, 503, "server_error", NULL, "unavailable", "%s", m); break;
    case 14: oai_fail(e, 500, "server_error", NULL, "nonfinite_logits", "%s", m); break;
    default: oai_fail(e, 500, "server_error", NULL, NULL, "%s", m); break;
    }
}

static gm_status nomem(oai_error *e)
{
    oai_fail(e, 500, "server_error", NULL, NULL, "out of memory while reading the request");
    return GM_ERR_NOMEM;
}

#define BAD(e, param, code, ...) oai_fail((e), 400, "invalid_request_error", (param), (code), __VA_ARGS__)

/* ---- typed field readers: a missing field or JSON null leaves *out alone ---- */

static const char *type_name(const cJSON *j)
{
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsNumber(j))
        return j->valuedouble == floor(j->valuedouble) && isfinite(j->valuedouble) ? "an integer" : "a decimal";
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsObject(j))
        return "an object";
    return "null";
}

static gm_status bad_type(oai_error *e, const char *param, const char *want, const cJSON *got)
{
    return BAD(e, param, "invalid_type", "Invalid type for '%s': expected %s, but got %s instead.", param, want,
               type_name(got));
}

static bool given(const cJSON *j)
{
    return j && !cJSON_IsNull(j);
}

/* An integer in [lo, hi] (JSON numbers with a zero fraction count as integers). */
static gm_status read_int(const cJSON *j, const char *param, double lo, double hi, int64_t *out, oai_error *e)
{
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble != floor(j->valuedouble))
        return bad_type(e, param, "an integer", j);
    double v = j->valuedouble;
    if (v < lo)
        return BAD(e, param, "integer_below_min_value",
                   "Invalid '%s': integer below minimum value. Expected a value >= %.0f, but got %.17g instead.", param,
                   lo, v);
    if (v > hi)
        return BAD(e, param, "integer_above_max_value",
                   "Invalid '%s': integer above maximum value. Expected a value <= %.0f, but got %.17g instead.",
                   param, hi, v);
    *out = v >= 9223372036854775807.0 ? INT64_MAX : (int64_t)v;
    return GM_OK;
}

static gm_status get_i32(const cJSON *obj, const char *name, int32_t lo, int32_t hi, int32_t *out, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!given(j))
        return GM_OK;
    int64_t v;
    gm_status st = read_int(j, name, lo, hi, &v, e);
    if (st == GM_OK)
        *out = (int32_t)v;
    return st;
}

/* A finite number in [lo, hi]; lo_open excludes lo itself. */
static gm_status get_num(const cJSON *obj, const char *name, double lo, bool lo_open, double hi, bool *has, double *out,
                         oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!given(j))
        return GM_OK;
    if (!cJSON_IsNumber(j))
        return bad_type(e, name, "a number", j);
    double v = j->valuedouble;
    if (!(v >= lo) || (lo_open && v == lo))
        return BAD(e, name, "decimal_below_min_value",
                   "Invalid '%s': decimal below minimum value. Expected a value %s %g, but got %g instead.", name,
                   lo_open ? ">" : ">=", lo, v);
    if (!(v <= hi))
        return BAD(e, name, "decimal_above_max_value",
                   "Invalid '%s': decimal above maximum value. Expected a value <= %g, but got %g instead.", name, hi,
                   v);
    *out = v;
    if (has)
        *has = true;
    return GM_OK;
}

static gm_status get_bool(const cJSON *obj, const char *name, bool *out, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!given(j))
        return GM_OK;
    if (!cJSON_IsBool(j))
        return bad_type(e, name, "a boolean", j);
    *out = cJSON_IsTrue(j);
    return GM_OK;
}

static gm_status dup_str(const char *s, char **out, size_t *len, oai_error *e)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (!d)
        return nomem(e);
    memcpy(d, s, n + 1);
    free(*out);
    *out = d;
    if (len)
        *len = n;
    return GM_OK;
}

static gm_status get_str(const cJSON *obj, const char *name, char **out, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!given(j))
        return GM_OK;
    if (!cJSON_IsString(j))
        return bad_type(e, name, "a string", j);
    return dup_str(j->valuestring, out, NULL, e);
}

/* Parse the whole body as one JSON object (whitespace may follow it). */
static gm_status parse_body(const char *body, size_t len, cJSON **out, oai_error *e)
{
    *out = NULL;
    if (len == 0)
        return BAD(e, NULL, NULL, "The request body is empty; expected a JSON object.");
    if (jsonw_utf8_valid_prefix(body, len) != len)
        return BAD(e, NULL, NULL, "The request body is not valid UTF-8.");
    if (memchr(body, '\0', len)) /* cJSON would end a string there and read on */
        return BAD(e, NULL, NULL, "The request body contains a NUL byte; JSON strings must escape it (\\u0000).");
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!j) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return BAD(e, NULL, NULL, "We could not parse the JSON body of your request (error near byte %zu).", at);
    }
    for (const char *p = end; p && p < body + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n' && *p != '\0') {
            cJSON_Delete(j);
            return BAD(e, NULL, NULL, "We could not parse the JSON body of your request (extra data at byte %zu).",
                       (size_t)(p - body));
        }
    if (!cJSON_IsObject(j)) {
        gm_status st = BAD(e, NULL, "invalid_type", "Invalid type for the request body: expected an object, but got %s.",
                           type_name(j));
        cJSON_Delete(j);
        return st;
    }
    *out = j;
    return GM_OK;
}

/* ---- prompts and messages ---- */

/* A JSON array of token ids into a fresh array. */
static gm_status read_ids(const cJSON *a, const char *param, int32_t **ids, int32_t *n, oai_error *e)
{
    int32_t cnt = cJSON_GetArraySize(a);
    if (cnt == 0)
        return BAD(e, param, "array_below_min_length", "Invalid '%s': empty array. Expected at least 1 token id.",
                   param);
    int32_t *v = malloc((size_t)cnt * sizeof(int32_t));
    if (!v)
        return nomem(e);
    int32_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a)
    {
        double d = cJSON_IsNumber(x) ? x->valuedouble : -1;
        if (d >= 0 && d <= OAI_MAX_TOKEN_ID && d == (double)(int32_t)d) { /* the common case, no message built */
            v[i++] = (int32_t)d;
            continue;
        }
        char p[96];
        snprintf(p, sizeof p, "%s[%d]", param, i);
        int64_t id;
        if (read_int(x, p, 0, OAI_MAX_TOKEN_ID, &id, e) != GM_OK) {
            free(v);
            return GM_ERR_INVALID_ARG;
        }
        v[i++] = (int32_t)id;
    }
    *ids = v;
    *n = cnt;
    return GM_OK;
}

static gm_status prompt_text(const cJSON *s, const char *param, oai_prompt *p, oai_error *e)
{
    if (!s->valuestring[0])
        return BAD(e, param, NULL, "Invalid '%s': the prompt is empty.", param);
    return dup_str(s->valuestring, &p->text, &p->text_len, e);
}

/* prompt: "text" | ["text", ...] | [id, ...] | [[id, ...], ...]. */
static gm_status read_prompts(const cJSON *j, oai_request *r, oai_error *e)
{
    if (!given(j))
        return BAD(e, "prompt", "missing_required_parameter", "Missing required parameter: 'prompt'.");
    if (cJSON_IsString(j)) {
        r->prompts = calloc(1, sizeof(oai_prompt));
        if (!r->prompts)
            return nomem(e);
        r->n_prompts = 1;
        return prompt_text(j, "prompt", &r->prompts[0], e);
    }
    if (!cJSON_IsArray(j))
        return bad_type(e, "prompt", "a string or an array", j);
    int32_t cnt = cJSON_GetArraySize(j);
    if (cnt == 0)
        return BAD(e, "prompt", "array_below_min_length", "Invalid 'prompt': empty array. Expected at least 1 item.");
    const cJSON *first = j->child;
    if (cJSON_IsNumber(first)) { /* one prompt of token ids */
        r->prompts = calloc(1, sizeof(oai_prompt));
        if (!r->prompts)
            return nomem(e);
        r->n_prompts = 1;
        return read_ids(j, "prompt", &r->prompts[0].ids, &r->prompts[0].n_ids, e);
    }
    bool text = cJSON_IsString(first);
    if (!text && !cJSON_IsArray(first))
        return bad_type(e, "prompt[0]", "a string, a token id or an array of token ids", first);
    if (cnt > OAI_MAX_PROMPTS)
        return BAD(e, "prompt", "array_above_max_length",
                   "Invalid 'prompt': array too long. Expected at most %d prompts, but got %d.", OAI_MAX_PROMPTS, cnt);
    r->prompts = calloc((size_t)cnt, sizeof(oai_prompt));
    if (!r->prompts)
        return nomem(e);
    r->n_prompts = cnt;
    int32_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, j)
    {
        char p[96];
        snprintf(p, sizeof p, "prompt[%d]", i);
        gm_status st;
        if (text && cJSON_IsString(x))
            st = prompt_text(x, p, &r->prompts[i], e);
        else if (!text && cJSON_IsArray(x))
            st = read_ids(x, p, &r->prompts[i].ids, &r->prompts[i].n_ids, e);
        else
            st = bad_type(e, p, text ? "a string (as prompt[0])" : "an array of token ids (as prompt[0])", x);
        if (st != GM_OK)
            return st;
        i++;
    }
    return GM_OK;
}

static gm_status read_role(const cJSON *m, const char *param, oai_role *out, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(m, "role");
    char p[128];
    snprintf(p, sizeof p, "%s.role", param);
    if (!given(j))
        return BAD(e, p, "missing_required_parameter", "Missing required parameter: '%s'.", p);
    if (!cJSON_IsString(j))
        return bad_type(e, p, "a string", j);
    static const struct {
        const char *name;
        oai_role role;
    } roles[] = {{"system", OAI_ROLE_SYSTEM},
                 {"developer", OAI_ROLE_DEVELOPER},
                 {"user", OAI_ROLE_USER},
                 {"assistant", OAI_ROLE_ASSISTANT}};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (!strcmp(j->valuestring, roles[i].name)) {
            *out = roles[i].role;
            return GM_OK;
        }
    if (!strcmp(j->valuestring, "tool") || !strcmp(j->valuestring, "function"))
        return BAD(e, p, "unsupported_value", "Unsupported value: '%s' messages need tools, which are not supported.",
                   j->valuestring);
    return BAD(e, p, "invalid_value",
               "Invalid value: '%.64s'. Supported values are: 'system', 'developer', 'user' and 'assistant'.",
               j->valuestring);
}

/* content: "text" | [{"type": "text", "text": "..."}, ...] (joined with "\n") | null (assistant). */
static gm_status read_content(const cJSON *m, const char *param, oai_message *msg, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(m, "content");
    char p[128];
    snprintf(p, sizeof p, "%s.content", param);
    if (!given(j)) {
        if (msg->role != OAI_ROLE_ASSISTANT)
            return BAD(e, p, "missing_required_parameter", "Missing required parameter: '%s'.", p);
        return dup_str("", &msg->content, &msg->content_len, e);
    }
    if (cJSON_IsString(j))
        return dup_str(j->valuestring, &msg->content, &msg->content_len, e);
    if (!cJSON_IsArray(j))
        return bad_type(e, p, "a string or an array of content parts", j);
    size_t total = 0;
    int32_t i = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, j) /* first pass: check, and count bytes */
    {
        char pp[160];
        snprintf(pp, sizeof pp, "%s[%d]", p, i++);
        if (!cJSON_IsObject(part))
            return bad_type(e, pp, "an object", part);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
        char pt[176];
        snprintf(pt, sizeof pt, "%s.type", pp);
        if (!cJSON_IsString(t))
            return given(t) ? bad_type(e, pt, "a string", t)
                            : BAD(e, pt, "missing_required_parameter", "Missing required parameter: '%s'.", pt);
        if (strcmp(t->valuestring, "text") != 0)
            return BAD(e, pt, "unsupported_value", "Unsupported content part type '%.64s': only 'text' is supported.",
                       t->valuestring);
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(part, "text");
        snprintf(pt, sizeof pt, "%s.text", pp);
        if (!cJSON_IsString(x))
            return given(x) ? bad_type(e, pt, "a string", x)
                            : BAD(e, pt, "missing_required_parameter", "Missing required parameter: '%s'.", pt);
        total += strlen(x->valuestring) + 1;
    }
    char *buf = malloc(total + 1);
    if (!buf)
        return nomem(e);
    size_t len = 0;
    cJSON_ArrayForEach(part, j)
    {
        const char *s = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t n = strlen(s);
        if (len > 0)
            buf[len++] = '\n';
        memcpy(buf + len, s, n);
        len += n;
    }
    buf[len] = '\0';
    free(msg->content);
    msg->content = buf;
    msg->content_len = len;
    return GM_OK;
}

static gm_status read_messages(const cJSON *j, oai_message **out, int32_t *n_out, oai_error *e)
{
    if (!given(j))
        return BAD(e, "messages", "missing_required_parameter", "Missing required parameter: 'messages'.");
    if (!cJSON_IsArray(j))
        return bad_type(e, "messages", "an array", j);
    int32_t cnt = cJSON_GetArraySize(j);
    if (cnt == 0)
        return BAD(e, "messages", "array_below_min_length",
                   "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array "
                   "instead.");
    if (cnt > OAI_MAX_MESSAGES)
        return BAD(e, "messages", "array_above_max_length",
                   "Invalid 'messages': array too long. Expected at most %d messages, but got %d.", OAI_MAX_MESSAGES,
                   cnt);
    oai_message *msgs = calloc((size_t)cnt, sizeof(oai_message));
    if (!msgs)
        return nomem(e);
    *out = msgs;
    *n_out = cnt;
    int32_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, j)
    {
        char p[96];
        snprintf(p, sizeof p, "messages[%d]", i);
        if (!cJSON_IsObject(m))
            return bad_type(e, p, "an object", m);
        gm_status st = read_role(m, p, &msgs[i].role, e);
        if (st == GM_OK)
            st = read_content(m, p, &msgs[i], e);
        if (st != GM_OK)
            return st;
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if (given(tc) && !(cJSON_IsArray(tc) && cJSON_GetArraySize(tc) == 0)) {
            snprintf(p, sizeof p, "messages[%d].tool_calls", i);
            return BAD(e, p, "unsupported_parameter", "Unsupported parameter: tool calls are not supported.");
        }
        i++;
    }
    return GM_OK;
}

static void free_messages(oai_message *m, int32_t n)
{
    for (int32_t i = 0; m && i < n; i++)
        free(m[i].content);
    free(m);
}

/* ---- sampling and the rest ---- */

static gm_status read_stop(const cJSON *obj, oai_request *r, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, "stop");
    if (!given(j))
        return GM_OK;
    int32_t cnt;
    if (cJSON_IsString(j))
        cnt = 1;
    else if (cJSON_IsArray(j))
        cnt = cJSON_GetArraySize(j);
    else
        return bad_type(e, "stop", "a string or an array of strings", j);
    if (cnt > OAI_MAX_STOP)
        return BAD(e, "stop", "array_above_max_length",
                   "Invalid 'stop': array too long. Expected an array with maximum length %d, but got an array with "
                   "length %d instead.",
                   OAI_MAX_STOP, cnt);
    if (cnt == 0)
        return GM_OK;
    r->stop = calloc((size_t)cnt, sizeof(char *));
    if (!r->stop)
        return nomem(e);
    r->n_stop = cnt;
    const cJSON *x = cJSON_IsString(j) ? j : j->child;
    for (int32_t i = 0; i < cnt; i++, x = x->next) {
        char p[32];
        snprintf(p, sizeof p, cJSON_IsString(j) ? "stop" : "stop[%d]", i);
        if (!cJSON_IsString(x))
            return bad_type(e, p, "a string", x);
        size_t L = strlen(x->valuestring);
        if (L == 0 || L > OAI_MAX_STOP_LEN)
            return BAD(e, p, NULL, "Invalid '%s': a stop string must have 1 to %d bytes, this one has %zu.", p,
                       OAI_MAX_STOP_LEN, L);
        gm_status st = dup_str(x->valuestring, &r->stop[i], NULL, e);
        if (st != GM_OK)
            return st;
    }
    return GM_OK;
}

static gm_status read_stop_ids(const cJSON *obj, oai_request *r, oai_error *e)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, "stop_token_ids");
    if (!given(j))
        return GM_OK;
    if (!cJSON_IsArray(j))
        return bad_type(e, "stop_token_ids", "an array of token ids", j);
    int32_t cnt = cJSON_GetArraySize(j);
    if (cnt > OAI_MAX_STOP_IDS)
        return BAD(e, "stop_token_ids", "array_above_max_length",
                   "Invalid 'stop_token_ids': array too long. Expected at most %d ids, but got %d.", OAI_MAX_STOP_IDS,
                   cnt);
    if (cnt == 0)
        return GM_OK;
    return read_ids(j, "stop_token_ids", &r->stop_ids, &r->n_stop_ids, e);
}

/* Fields naming features gemmad does not have: refused unless absent, null or empty/default. */
static gm_status refuse_unsupported(const cJSON *obj, oai_error *e)
{
    static const char *const lists[] = {"tools", "functions"};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, lists[i]);
        if (given(j) && !(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 0))
            return BAD(e, lists[i], "unsupported_parameter",
                       "Unsupported parameter: '%s': tool and function calling are not supported.", lists[i]);
    }
    static const char *const choices[] = {"tool_choice", "function_call"};
    for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++) {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(obj, choices[i]);
        if (given(j) && !(cJSON_IsString(j) && (!strcmp(j->valuestring, "none") || !strcmp(j->valuestring, "auto"))))
            return BAD(e, choices[i], "unsupported_parameter",
                       "Unsupported parameter: '%s': tool and function calling are not supported.", choices[i]);
    }
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(obj, "response_format");
    if (given(rf)) {
        if (!cJSON_IsObject(rf))
            return bad_type(e, "response_format", "an object", rf);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rf, "type");
        if (!cJSON_IsString(t))
            return given(t) ? bad_type(e, "response_format.type", "a string", t)
                            : BAD(e, "response_format.type", "missing_required_parameter",
                                  "Missing required parameter: 'response_format.type'.");
        if (strcmp(t->valuestring, "text") != 0)
            return BAD(e, "response_format.type", "unsupported_value",
                       "Unsupported value: response_format type '%.64s': only 'text' is supported.", t->valuestring);
    }
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(obj, "logit_bias");
    if (given(lb)) {
        if (!cJSON_IsObject(lb))
            return bad_type(e, "logit_bias", "an object", lb);
        if (lb->child)
            return BAD(e, "logit_bias", "unsupported_parameter", "Unsupported parameter: 'logit_bias' is not supported.");
    }
    if (given(cJSON_GetObjectItemCaseSensitive(obj, "prompt_logprobs"))) /* vLLM's: no prompt logprobs here */
        return BAD(e, "prompt_logprobs", "unsupported_parameter",
                   "Unsupported parameter: 'prompt_logprobs': gemmad does not compute the log-probabilities of "
                   "prompt tokens.");
    const cJSON *sx = cJSON_GetObjectItemCaseSensitive(obj, "suffix");
    if (given(sx)) {
        if (!cJSON_IsString(sx))
            return bad_type(e, "suffix", "a string", sx);
        if (sx->valuestring[0])
            return BAD(e, "suffix", "unsupported_parameter", "Unsupported parameter: 'suffix' is not supported.");
    }
    return GM_OK;
}

static gm_status read_logprobs(const cJSON *obj, oai_request *r, oai_error *e)
{
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(obj, "logprobs");
    if (r->endpoint == OAI_COMPLETIONS) { /* logprobs: N alternatives, null = none */
        if (!given(lp))
            return GM_OK;
        if (cJSON_IsBool(lp)) /* some clients send chat's boolean here */
            return bad_type(e, "logprobs", "an integer", lp);
        int64_t v;
        gm_status st = read_int(lp, "logprobs", 0, OAI_MAX_LOGPROBS, &v, e);
        if (st != GM_OK)
            return st;
        r->logprobs = true;
        r->top_logprobs = (int32_t)v;
        return GM_OK;
    }
    gm_status st = get_bool(obj, "logprobs", &r->logprobs, e);
    if (st != GM_OK)
        return st;
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(obj, "top_logprobs");
    if (!given(tl))
        return GM_OK;
    int64_t v;
    if ((st = read_int(tl, "top_logprobs", 0, OAI_MAX_LOGPROBS, &v, e)) != GM_OK)
        return st;
    if (!r->logprobs)
        return BAD(e, "top_logprobs", "invalid_value",
                   "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is given.");
    r->top_logprobs = (int32_t)v;
    return GM_OK;
}

static gm_status read_stream(const cJSON *obj, oai_request *r, oai_error *e)
{
    gm_status st = get_bool(obj, "stream", &r->stream, e);
    if (st != GM_OK)
        return st;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(obj, "stream_options");
    if (!given(so))
        return GM_OK;
    if (!cJSON_IsObject(so))
        return bad_type(e, "stream_options", "an object", so);
    if (!r->stream)
        return BAD(e, "stream_options", "invalid_value",
                   "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
    if (given(iu)) {
        if (!cJSON_IsBool(iu))
            return bad_type(e, "stream_options.include_usage", "a boolean", iu);
        r->include_usage = cJSON_IsTrue(iu);
    }
    return GM_OK;
}

static gm_status read_max_tokens(const cJSON *obj, oai_request *r, oai_error *e)
{
    gm_status st = get_i32(obj, "max_tokens", 1, INT32_MAX, &r->max_tokens, e);
    if (st == GM_OK && r->endpoint == OAI_CHAT) /* the newer name wins */
        st = get_i32(obj, "max_completion_tokens", 1, INT32_MAX, &r->max_tokens, e);
    return st;
}

static gm_status read_sampling(const cJSON *obj, oai_request *r, oai_error *e)
{
    gm_status st;
    if ((st = get_num(obj, "temperature", 0, false, 2, &r->has_temperature, &r->temperature, e)) != GM_OK ||
        (st = get_num(obj, "top_p", 0, true, 1, &r->has_top_p, &r->top_p, e)) != GM_OK ||
        (st = get_i32(obj, "top_k", -1, INT32_MAX, &r->top_k, e)) != GM_OK ||
        (st = get_num(obj, "presence_penalty", -2, false, 2, NULL, &r->presence_penalty, e)) != GM_OK ||
        (st = get_num(obj, "frequency_penalty", -2, false, 2, NULL, &r->frequency_penalty, e)) != GM_OK ||
        (st = get_num(obj, "repetition_penalty", 0, true, 1e6, NULL, &r->repetition_penalty, e)) != GM_OK ||
        (st = get_i32(obj, "min_tokens", 0, INT32_MAX, &r->min_tokens, e)) != GM_OK ||
        (st = get_i32(obj, "num_speculative_tokens", 0, OAI_MAX_SPEC, &r->num_speculative_tokens, e)) != GM_OK)
        return st;
    if (r->top_k < 0)
        r->top_k = 0;
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(obj, "seed");
    if (given(seed)) {
        int64_t v;
        if ((st = read_int(seed, "seed", -9223372036854775808.0, 18446744073709549568.0, &v, e)) != GM_OK)
            return st;
        double d = seed->valuedouble;
        r->seed = d >= 9223372036854775808.0 ? (uint64_t)d : (uint64_t)v;
        r->has_seed = true;
    }
    return GM_OK;
}

static gm_status read_choices(const cJSON *obj, oai_request *r, oai_error *e)
{
    gm_status st;
    if ((st = get_i32(obj, "n", 1, OAI_MAX_N, &r->n, e)) != GM_OK ||
        (st = get_bool(obj, "use_beam_search", &r->use_beam_search, e)) != GM_OK ||
        (st = get_num(obj, "length_penalty", -1e6, false, 1e6, NULL, &r->length_penalty, e)) != GM_OK ||
        (st = get_bool(obj, "early_stopping", &r->early_stopping, e)) != GM_OK)
        return st;
    if (r->endpoint == OAI_COMPLETIONS) {
        if ((st = get_i32(obj, "best_of", 1, OAI_MAX_N, &r->best_of, e)) != GM_OK)
            return st;
        if (r->best_of > 0 && r->best_of < r->n)
            return BAD(e, "best_of", "invalid_value", "Invalid 'best_of': %d is less than n (%d).", r->best_of, r->n);
    }
    int32_t beams = r->best_of > 0 ? r->best_of : r->n;
    if (r->use_beam_search && (beams < 2 || beams > OAI_MAX_BEAM))
        return BAD(e, r->best_of > 0 ? "best_of" : "n", "invalid_value",
                   "Invalid beam width %d ('best_of', else 'n'): beam search takes 2..%d beams.", beams, OAI_MAX_BEAM);
    if (r->use_beam_search && !r->has_temperature) { /* beam search is greedy: OpenAI's default of 1 does not apply */
        r->temperature = 0.0;
        r->has_temperature = true;
    }
    return GM_OK;
}

static void request_defaults(oai_request *r, oai_endpoint ep)
{
    memset(r, 0, sizeof(*r));
    r->endpoint = ep;
    r->max_tokens = -1;
    r->num_speculative_tokens = -1;
    r->repetition_penalty = 1.0;
    r->length_penalty = 1.0;
    r->n = 1;
}

/* Parse body as an object and let fill read it into out; cJSON is freed either way. */
static gm_status parse_with(const char *body, size_t len, gm_status (*fill)(const cJSON *, void *, oai_error *),
                            void *out, oai_error *err)
{
    cJSON *obj = NULL;
    gm_status st = parse_body(body, len, &obj, err);
    if (st == GM_OK)
        st = fill(obj, out, err);
    cJSON_Delete(obj);
    return st;
}

static gm_status fill_request(const cJSON *obj, void *out, oai_error *err)
{
    oai_request *r = out;
    gm_status st;
    if ((st = get_str(obj, "model", &r->model, err)) != GM_OK)
        return st;
    if (r->endpoint == OAI_COMPLETIONS) {
        if ((st = read_prompts(cJSON_GetObjectItemCaseSensitive(obj, "prompt"), r, err)) != GM_OK ||
            (st = get_bool(obj, "echo", &r->echo, err)) != GM_OK)
            return st;
    } else if ((st = read_messages(cJSON_GetObjectItemCaseSensitive(obj, "messages"), &r->messages, &r->n_messages,
                                   err)) != GM_OK) {
        return st;
    }
    if ((st = read_max_tokens(obj, r, err)) != GM_OK || (st = read_sampling(obj, r, err)) != GM_OK ||
        (st = read_stop(obj, r, err)) != GM_OK || (st = read_stop_ids(obj, r, err)) != GM_OK ||
        (st = read_stream(obj, r, err)) != GM_OK || (st = read_logprobs(obj, r, err)) != GM_OK ||
        (st = get_bool(obj, "ignore_eos", &r->ignore_eos, err)) != GM_OK ||
        (st = read_choices(obj, r, err)) != GM_OK || (st = get_str(obj, "user", &r->user, err)) != GM_OK ||
        (st = refuse_unsupported(obj, err)) != GM_OK)
        return st;
    if (r->max_tokens > 0 && r->min_tokens > r->max_tokens)
        return BAD(err, "min_tokens", "invalid_value", "Invalid 'min_tokens': %d is more than max_tokens (%d).",
                   r->min_tokens, r->max_tokens);
    return GM_OK;
}

gm_status oai_parse_request(oai_endpoint ep, const char *body, size_t len, oai_request *r, oai_error *err)
{
    request_defaults(r, ep);
    gm_status st = parse_with(body, len, fill_request, r, err);
    if (st != GM_OK)
        oai_request_free(r);
    return st;
}

void oai_request_free(oai_request *r)
{
    if (!r)
        return;
    free(r->model);
    for (int32_t i = 0; r->prompts && i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    free_messages(r->messages, r->n_messages);
    for (int32_t i = 0; r->stop && i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->stop_ids);
    free(r->user);
    request_defaults(r, r->endpoint);
}

/* ---- Gemma's chat turns ---- */

gm_status oai_chat_to_gemma(const oai_message *m, int32_t n, gm_chat_msg **msgs, int32_t *n_out, oai_error *err)
{
    *msgs = NULL;
    *n_out = 0;
    int32_t first = n > 0 && (m[0].role == OAI_ROLE_SYSTEM || m[0].role == OAI_ROLE_DEVELOPER) ? 1 : 0;
    if (n - first <= 0)
        return BAD(err, "messages", NULL, "The chat has no user message%s.", first ? " after the system message" : "");
    for (int32_t i = first; i < n; i++) {
        char p[48];
        snprintf(p, sizeof p, "messages[%d].role", i);
        if (m[i].role == OAI_ROLE_SYSTEM || m[i].role == OAI_ROLE_DEVELOPER)
            return BAD(err, p, "invalid_value",
                       "Invalid 'messages[%d]': a system or developer message may only come first (Gemma's chat "
                       "template puts it at the start of the first user turn).",
                       i);
        if ((m[i].role == OAI_ROLE_USER) != ((i - first) % 2 == 0))
            return BAD(err, p, "invalid_value",
                       "Invalid 'messages[%d]': conversation roles must alternate user/assistant/user/... starting "
                       "with user.",
                       i);
    }
    if ((n - first) % 2 == 0)
        return BAD(err, "messages", "invalid_value", "The last message must be the user's.");
    gm_chat_msg *out = malloc((size_t)n * sizeof(*out));
    if (!out)
        return nomem(err);
    for (int32_t i = 0; i < n; i++) {
        out[i].role = i < first ? "system" : m[i].role == OAI_ROLE_USER ? "user" : "model";
        out[i].text = m[i].content;
    }
    *msgs = out;
    *n_out = n;
    return GM_OK;
}

/* ---- /tokenize and /detokenize ---- */

static gm_status fill_tokenize(const cJSON *obj, void *out, oai_error *err)
{
    oai_tokenize_req *r = out;
    gm_status st;
    if ((st = get_str(obj, "model", &r->model, err)) != GM_OK)
        return st;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(obj, "messages");
    if (given(p) == given(m))
        return BAD(err, given(p) ? "messages" : "prompt", NULL, "Give exactly one of 'prompt' and 'messages'.");
    if (given(p)) {
        if (!cJSON_IsString(p))
            return bad_type(err, "prompt", "a string", p);
        if ((st = dup_str(p->valuestring, &r->prompt, &r->prompt_len, err)) != GM_OK)
            return st;
        r->add_special_tokens = true;
    } else {
        if ((st = read_messages(m, &r->messages, &r->n_messages, err)) != GM_OK)
            return st;
        r->add_generation_prompt = true;
    }
    if ((st = get_bool(obj, "add_special_tokens", &r->add_special_tokens, err)) != GM_OK)
        return st;
    return get_bool(obj, "add_generation_prompt", &r->add_generation_prompt, err);
}

gm_status oai_parse_tokenize(const char *body, size_t len, oai_tokenize_req *r, oai_error *err)
{
    memset(r, 0, sizeof(*r));
    gm_status st = parse_with(body, len, fill_tokenize, r, err);
    if (st != GM_OK)
        oai_tokenize_req_free(r);
    return st;
}

void oai_tokenize_req_free(oai_tokenize_req *r)
{
    if (!r)
        return;
    free(r->model);
    free(r->prompt);
    free_messages(r->messages, r->n_messages);
    memset(r, 0, sizeof(*r));
}

static gm_status fill_detokenize(const cJSON *obj, void *out, oai_error *err)
{
    oai_detokenize_req *r = out;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "tokens");
    gm_status st = get_str(obj, "model", &r->model, err);
    if (st != GM_OK)
        return st;
    if (!given(t))
        return BAD(err, "tokens", "missing_required_parameter", "Missing required parameter: 'tokens'.");
    if (!cJSON_IsArray(t))
        return bad_type(err, "tokens", "an array of token ids", t);
    if (cJSON_GetArraySize(t) == 0)
        return GM_OK;
    return read_ids(t, "tokens", &r->ids, &r->n_ids, err);
}

gm_status oai_parse_detokenize(const char *body, size_t len, oai_detokenize_req *r, oai_error *err)
{
    memset(r, 0, sizeof(*r));
    gm_status st = parse_with(body, len, fill_detokenize, r, err);
    if (st != GM_OK)
        oai_detokenize_req_free(r);
    return st;
}

void oai_detokenize_req_free(oai_detokenize_req *r)
{
    if (!r)
        return;
    free(r->model);
    free(r->ids);
    memset(r, 0, sizeof(*r));
}
