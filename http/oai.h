/* oai.h - the OpenAI-compatible API's bodies: requests in, responses out, no HTTP.
 *
 * Parsing (oai.c) turns the JSON body of POST /v1/completions or
 * /v1/chat/completions into an oai_request, checking every field the way the
 * OpenAI API does (types, ranges, combinations); any bad input gives an
 * oai_error with the HTTP status and the four fields of OpenAI's error body.
 * Unknown fields are ignored, as OpenAI does. Features gemmad does not have
 * (tools, non-text response formats, logit_bias, suffix, non-text content parts)
 * are refused with a 400 that names the field.
 *
 * Formatting (oai_fmt.c) writes response bodies with jsonw: the whole
 * completion / chat.completion object, server-sent-event chunks (`data:
 * {...}\n\n`, then `data: [DONE]\n\n`), the final usage chunk, logprobs in both
 * shapes, error bodies, /v1/models, and vLLM's /tokenize and /detokenize.
 * Output is always valid UTF-8 JSON (jsonw escapes, and replaces bytes that
 * are not UTF-8 with U+FFFD).
 *
 * Nothing here knows the tokenizer or the model: the core checks token ids
 * against the vocabulary and the served model name (oai_error_model_not_found),
 * and maps the RPC's error codes with oai_error_from_code(). */
#ifndef GM_OAI_H
#define GM_OAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/jsonw.h"
#include "common/status.h"
#include "common/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OAI_MAX_STOP 16          /* stop strings (the RPC's limit) */
#define OAI_MAX_STOP_LEN 256     /* bytes per stop string */
#define OAI_MAX_STOP_IDS 64      /* stop_token_ids (vLLM extension) */
#define OAI_MAX_LOGPROBS 20      /* top_logprobs (chat) / logprobs (completions), as vLLM */
#define OAI_MAX_PROMPTS 128      /* prompts in one completions request */
#define OAI_MAX_MESSAGES 1024    /* chat messages */
#define OAI_MAX_N 128            /* choices per request (OpenAI's limit) */
#define OAI_MAX_BEAM 8           /* beams of a use_beam_search request (the RPC's beam_width limit) */
#define OAI_MAX_TOKEN_ID 0x7fffffff
#define OAI_MAX_SPEC 16          /* num_speculative_tokens (gemmad: daemon/spec.h SPEC_MAX_K) */
/* OpenAI's default max_tokens for /v1/completions when none is given (chat has none). */
#define OAI_COMPLETIONS_DEFAULT_MAX_TOKENS 16

typedef enum oai_endpoint {
    OAI_COMPLETIONS, /* POST /v1/completions, object "text_completion" */
    OAI_CHAT,        /* POST /v1/chat/completions, object "chat.completion" */
} oai_endpoint;

/* ---- errors ---- */

/* One error answer: HTTP status + OpenAI's {"error": {message, type, param, code}}. */
typedef struct oai_error {
    int status;         /* 400, 401, 404, 413, 429, 500, 503 ... */
    char message[512];
    const char *type;   /* "invalid_request_error", "server_error", ... (static) */
    char param[96];     /* "" writes null; e.g. "messages[2].content" */
    const char *code;   /* NULL writes null; e.g. "invalid_type", "model_not_found" (static) */
} oai_error;

/* Fill e (message printf-style); returns GM_ERR_INVALID_ARG for `return oai_fail(...)`. */
gm_status oai_fail(oai_error *e, int status, const char *type, const char *param, const char *code, const char *fmt,
                   ...) __attribute__((format(printf, 6, 7)));
/* 404 model_not_found for a model name the server does not serve. */
void oai_error_model_not_found(oai_error *e, const char *model);
/* An error from gemmad's RPC ErrorCode (proto/gemma.proto numbers: 1 INVALID_ARGUMENT,
 * 2 PROMPT_TOO_LONG, 3 OVERLOADED, 4 CANCELLED, 5 INTERNAL, 6 WORKER_FAILED,
 * 10 SHUTTING_DOWN, 13 UNAVAILABLE (503: no worker is up, retry), 14 NONFINITE_LOGITS (500); others are 500)
 * with its message. param may be NULL; for INVALID_ARGUMENT it is
 * then the field admission's message starts with ("min_tokens 20 exceeds ..." -> min_tokens), if any. */
void oai_error_from_code(oai_error *e, int32_t code, const char *param, const char *message);

/* ---- requests ---- */

/* One completions prompt: text, or token ids (used verbatim). */
typedef struct oai_prompt {
    char *text;         /* NUL-terminated UTF-8, or NULL for an id prompt (owned) */
    size_t text_len;
    int32_t *ids;       /* [n_ids] >= 0, or NULL for a text prompt (owned) */
    int32_t n_ids;
} oai_prompt;

typedef enum oai_role { OAI_ROLE_SYSTEM, OAI_ROLE_DEVELOPER, OAI_ROLE_USER, OAI_ROLE_ASSISTANT } oai_role;

/* One chat message; text content parts are joined with "\n". */
typedef struct oai_message {
    oai_role role;
    char *content;      /* NUL-terminated UTF-8, "" for an assistant message with null content (owned) */
    size_t content_len;
} oai_message;

/* Everything a completions or chat request asks for. Fields not given keep the
 * defaults oai_parse_request starts from (noted per field). */
typedef struct oai_request {
    oai_endpoint endpoint;
    char *model;                 /* NULL when not given (owned) */
    oai_prompt *prompts;         /* completions: [n_prompts] >= 1 (owned) */
    int32_t n_prompts;
    oai_message *messages;       /* chat: [n_messages] >= 1 (owned) */
    int32_t n_messages;

    int32_t max_tokens;          /* -1 = not given; chat: max_completion_tokens wins over max_tokens */
    bool has_temperature;        /* default: not given (OpenAI's default is 1) */
    double temperature;          /* [0, 2] */
    bool has_top_p;
    double top_p;                /* (0, 1] */
    int32_t top_k;               /* 0 = off (-1 is taken as off) */
    bool has_seed;
    uint64_t seed;               /* a negative JSON seed is taken modulo 2^64 */
    char **stop;                 /* [n_stop] NUL-terminated, 1..OAI_MAX_STOP_LEN bytes (owned) */
    int32_t n_stop;
    int32_t *stop_ids;           /* [n_stop_ids] (owned) */
    int32_t n_stop_ids;
    bool stream;
    bool include_usage;          /* stream_options.include_usage */
    bool logprobs;               /* chat: logprobs; completions: logprobs given (not null) */
    int32_t top_logprobs;        /* alternatives per position, 0..OAI_MAX_LOGPROBS */
    bool echo;                   /* completions: prompt text before the completion */
    double presence_penalty;     /* [-2, 2], default 0 */
    double frequency_penalty;    /* [-2, 2], default 0 */
    double repetition_penalty;   /* > 0, default 1 (off) */
    int32_t min_tokens;          /* >= 0, <= max_tokens when both are given */
    bool ignore_eos;
    int32_t n;                   /* choices, 1..OAI_MAX_N, default 1 */
    int32_t best_of;             /* 0 = not given; else >= n (completions) */
    bool use_beam_search;
    double length_penalty;       /* default 1 */
    bool early_stopping;
    char *user;                  /* NULL when not given (owned) */
    int32_t num_speculative_tokens; /* speculative decoding (docs/SPECULATIVE.md): -1 = not given (the
                                     * server's default), 0 = off, 1..OAI_MAX_SPEC tokens drafted per step */
} oai_request;

/* Parse and check a request body of len bytes (need not be NUL-terminated).
 * GM_OK: *r filled (free with oai_request_free). Otherwise *r is empty and
 * *err says why: GM_ERR_INVALID_ARG for client errors (4xx), GM_ERR_NOMEM (500). */
gm_status oai_parse_request(oai_endpoint ep, const char *body, size_t len, oai_request *r, oai_error *err);
void oai_request_free(oai_request *r);

/* A chat as gm_tok_encode_chat_fmt takes it; gemmad's admission applies the model's own template:
 * a leading system or developer message keeps the role "system" (Gemma 3's template puts it at the
 * start of the first user turn, Gemma 1's and 2's have no system role and refuse it), assistant
 * becomes "model"; after it roles must alternate user/model starting and ending with user, as
 * Gemma's templates require (400 naming the message otherwise). Texts are borrowed from m;
 * *msgs [*n_out] is the caller's to free(). */
gm_status oai_chat_to_gemma(const oai_message *m, int32_t n, gm_chat_msg **msgs, int32_t *n_out, oai_error *err);

/* vLLM's POST /tokenize: {"prompt": str} or {"messages": [...]}; optional
 * "model", "add_special_tokens" (default true for prompt, false for messages),
 * "add_generation_prompt" (default true). */
typedef struct oai_tokenize_req {
    char *model;                 /* NULL when not given (owned) */
    char *prompt;                /* text form, or NULL (owned) */
    size_t prompt_len;
    oai_message *messages;       /* chat form, or NULL (owned) */
    int32_t n_messages;
    bool add_special_tokens;
    bool add_generation_prompt;
} oai_tokenize_req;

gm_status oai_parse_tokenize(const char *body, size_t len, oai_tokenize_req *r, oai_error *err);
void oai_tokenize_req_free(oai_tokenize_req *r);

/* vLLM's POST /detokenize: {"tokens": [ids], "model"?}. */
typedef struct oai_detokenize_req {
    char *model;                 /* (owned) or NULL */
    int32_t *ids;                /* [n_ids] (owned) */
    int32_t n_ids;
} oai_detokenize_req;

gm_status oai_parse_detokenize(const char *body, size_t len, oai_detokenize_req *r, oai_error *err);
void oai_detokenize_req_free(oai_detokenize_req *r);

/* ---- responses (oai_fmt.c) ---- */

typedef enum oai_finish {
    OAI_FINISH_NONE,   /* null: not finished (stream chunks) */
    OAI_FINISH_STOP,   /* "stop" */
    OAI_FINISH_LENGTH, /* "length" */
    OAI_FINISH_ABORT,  /* "abort" (vLLM's word for a request cut short by the server) */
} oai_finish;

/* One alternative at a position. token is the token's bytes (need not be UTF-8). */
typedef struct oai_top_logprob {
    const char *token;
    size_t token_len;
    float logprob;     /* -inf is written as -9999.0, as vLLM does */
} oai_top_logprob;

/* The chosen token at one position and its alternatives. Token strings are the token's bytes alone
 * (gm_tok_token_str): JSON shows them with U+FFFD for bytes that are not UTF-8 (vLLM shows a piece
 * that is part of a character so), "bytes" has them exactly (OpenAI's meaning: consecutive tokens'
 * bytes join into the text). */
typedef struct oai_token_logprob {
    const char *token;             /* bytes of the chosen token */
    size_t token_len;
    float logprob;
    const oai_top_logprob *top;    /* [n_top], most likely first */
    int32_t n_top;
    bool in_top;                   /* the chosen token is one of top (the same id). Otherwise completions'
                                    * top_logprobs dict gets it too (OpenAI: "up to logprobs + 1") */
} oai_token_logprob;

/* Code points the JSON form of s[0..n) has (each byte that is not UTF-8 shows as one U+FFFD): what
 * completions' text_offset counts, as Python's len() of the token strings. */
int64_t oai_text_chars(const char *s, size_t n);

/* Log-probabilities gathered for output (oai_lp.c): entries with a copy of their token bytes, so they
 * can come from messages that do not live long (the router's chunks). Grows as needed. */
typedef struct oai_lpbuf {
    oai_token_logprob *tok;  /* [n] entries; their pointers are valid after oai_lpbuf_view (owned) */
    int32_t n, cap;
    oai_top_logprob *top;    /* [n_top] the entries' alternatives, entry after entry (owned) */
    size_t n_top, top_cap;
    size_t *off;             /* [cap] where entry i's token bytes start in str */
    size_t *top_off;         /* [top_cap] where alternative j's start */
    int32_t *n_tops;         /* [cap] alternatives of entry i */
    char *str;               /* [str_len] (owned) */
    size_t str_len, str_cap;
    int64_t chars;           /* oai_text_chars of the entries' chosen tokens, summed */
    bool oom;                /* an allocation failed: entries are missing (sticky until clear) */
} oai_lpbuf;

/* No entries; memory kept. */
void oai_lpbuf_clear(oai_lpbuf *b);
void oai_lpbuf_free(oai_lpbuf *b);
/* Append a position: the chosen token's bytes and log-probability; its alternatives follow with
 * oai_lpbuf_add_top. False when out of memory. */
bool oai_lpbuf_add(oai_lpbuf *b, const char *tok, size_t len, float logprob, bool in_top);
/* Append an alternative to the last position. */
bool oai_lpbuf_add_top(oai_lpbuf *b, const char *tok, size_t len, float logprob);
/* The entries with their pointers set, valid until the next add or clear. */
const oai_token_logprob *oai_lpbuf_view(oai_lpbuf *b);
/* A token's string when no tokenizer can spell it: "token_id:ID" (vLLM's form) into out (>= 24 bytes). */
size_t oai_token_id_str(int32_t id, char *out, size_t cap);

/* Per-request facts every body repeats. */
typedef struct oai_resp {
    oai_endpoint endpoint;
    const char *id;          /* "cmpl-..." / "chatcmpl-..." (oai_make_id) */
    int64_t created;         /* unix seconds */
    const char *model;
    bool include_usage;      /* streaming: every chunk carries "usage": null, the last one the usage */
} oai_resp;

/* A unique id: prefix ("cmpl-" or "chatcmpl-" by endpoint) + 24 hex digits of
 * a mix of seq and a process-random key. out holds at least 40 bytes. */
void oai_make_id(char *out, size_t cap, oai_endpoint ep, uint64_t seq);
/* The sampling seed of a request that gives none: a mix of seq and the process-random key. */
uint64_t oai_seed(uint64_t seq);
/* The model name an API serves a checkpoint path under: its last component ("/m/gemma-2b/" ->
 * "gemma-2b"), valid UTF-8, cut to cap. */
void oai_model_name(const char *path, char *out, size_t cap);

/* One choice of a response or chunk. */
typedef struct oai_choice {
    int32_t index;
    const char *text;        /* completion text (or delta), need not be NUL-terminated */
    size_t text_len;
    oai_finish finish;
    bool has_logprobs;       /* false writes "logprobs": null */
    const oai_token_logprob *logprobs; /* [n_logprobs] */
    int32_t n_logprobs;
    int64_t text_offset;     /* completions: text_offset of the first entry of logprobs, in characters (the
                              * tokens' before it, in a stream; oai_text_chars) */
    bool first;              /* chat streaming: the first chunk of this choice carries the role */
} oai_choice;

typedef struct oai_usage {
    int64_t prompt_tokens;
    int64_t completion_tokens;
} oai_usage;

/* The non-streaming body: {id, object, created, model, choices, usage}. */
void oai_write_response(jsonw *w, const oai_resp *r, const oai_choice *choices, int32_t n, const oai_usage *u);
/* One SSE event "data: {chunk}\n\n" with the choices given (usually one). */
void oai_write_chunk(jsonw *w, const oai_resp *r, const oai_choice *choices, int32_t n);
/* The usage event after the last chunk (choices empty), when include_usage. */
void oai_write_usage_chunk(jsonw *w, const oai_resp *r, const oai_usage *u);
/* "data: [DONE]\n\n". */
void oai_write_done(jsonw *w);
/* The end of a stream: the error event when e, else the usage chunk when r->include_usage; then
 * [DONE]. */
void oai_write_stream_end(jsonw *w, const oai_resp *r, const oai_error *e, const oai_usage *u);
/* An error as a body {"error": {...}}. */
void oai_write_error(jsonw *w, const oai_error *e);
/* An error inside a stream: "data: {"error": {...}}\n\n" (then oai_write_done). */
void oai_write_error_event(jsonw *w, const oai_error *e);

/* GET /v1/models: one model (max_model_len <= 0 writes null: not known). */
void oai_write_models(jsonw *w, const char *model, int64_t created, int32_t max_model_len);
/* POST /tokenize answer: {"count", "max_model_len", "tokens"}. */
void oai_write_tokenize(jsonw *w, const int32_t *ids, int32_t n, int32_t max_model_len);
/* POST /detokenize answer: {"prompt": text}. */
void oai_write_detokenize(jsonw *w, const char *text, size_t len);

#ifdef __cplusplus
}
#endif
#endif
