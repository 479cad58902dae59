/* http_load.h - gemma-bench's HTTP driver: streaming requests to an
 * OpenAI-compatible server (gemmad's front door, vLLM, SGLang, ...) through
 * libcurl's multi interface.
 *
 * One thread, one epoll set: every in-flight request is a streaming POST on
 * its own HTTP/1.1 keep-alive connection (connections are reused by later
 * requests), libcurl does the HTTP, bench_sse reads the events. Each chunk
 * that carries output is one token arrival (timed on the epoll wake-up that
 * brought it); the final usage chunk (stream_options.include_usage) gives the
 * exact token counts. HTTP errors, an error event in the stream, a stream that
 * ends without "data: [DONE]", and a refused or broken connection end the
 * request as failed with a code of http_load_code_name and the message.
 *
 * Requests: POST /v1/completions with the prompt as token ids (synthetic) or
 * text (--prompts), or POST /v1/chat/completions with one user message
 * (--chat; synthetic prompts become words); max_tokens = the drawn osl,
 * temperature 0, ignore_eos (vLLM's extension) unless --stop-at-eos, stream
 * with include_usage. */
#ifndef GM_HTTP_LOAD_H
#define GM_HTTP_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "bench/bench_run.h"
#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (bench_req.error) of the HTTP driver. */
enum {
    HTTP_LOAD_ERR_400 = 1,
    HTTP_LOAD_ERR_401,
    HTTP_LOAD_ERR_403,
    HTTP_LOAD_ERR_404,
    HTTP_LOAD_ERR_408,
    HTTP_LOAD_ERR_413,
    HTTP_LOAD_ERR_422,
    HTTP_LOAD_ERR_429,
    HTTP_LOAD_ERR_4XX, /* another 4xx */
    HTTP_LOAD_ERR_500,
    HTTP_LOAD_ERR_502,
    HTTP_LOAD_ERR_503,
    HTTP_LOAD_ERR_504,
    HTTP_LOAD_ERR_5XX,    /* another 5xx */
    HTTP_LOAD_ERR_STATUS, /* a status that is neither 200 nor an error (1xx, 3xx, other 2xx) */
    HTTP_LOAD_ERR_STREAM_ERROR = 20, /* an error event inside the stream */
    HTTP_LOAD_ERR_INCOMPLETE,        /* the stream ended without data: [DONE] */
    HTTP_LOAD_ERR_BAD_STREAM,        /* not text/event-stream, or an event that is not JSON */
    HTTP_LOAD_ERR_CONNECT,           /* the connection was refused or timed out */
    HTTP_LOAD_ERR_TRANSPORT,         /* the connection broke (reset, closed mid-answer) */
    HTTP_LOAD_ERR_TIMEOUT = 100,     /* unfinished at the run's timeout (bench_summarize's code too) */
    HTTP_LOAD_ERR_NOMEM = 103,
};

/* The code's name ("HTTP_429", "INCOMPLETE_STREAM", ...). */
const char *http_load_code_name(int code);
/* The code of an HTTP status >= 300 (HTTP_LOAD_ERR_STATUS for 3xx). */
int32_t http_load_status_code(long status);

typedef struct http_load_opts {
    const char *url;         /* base URL: "http://127.0.0.1:8000" (a trailing "/v1" is dropped) */
    const char *model;       /* "model" of every request; NULL: the first of GET /v1/models, if any */
    const char *api_key;     /* NULL: none; else "Authorization: Bearer KEY" */
    bool chat;               /* /v1/chat/completions instead of /v1/completions */
    char *const *prompts;    /* [n_prompts] text prompts used in turn, or NULL: synthetic (borrowed) */
    int64_t n_prompts;
    int32_t vocab;           /* synthetic prompt ids are drawn below min(vocab, 4096) */
    bool ignore_eos;
    int connect_timeout_ms;
} http_load_opts;

typedef struct http_load http_load;

/* Set up libcurl (options and prompts borrowed for h's life). NULL and
 * gm_last_error() on failure. */
http_load *http_load_new(const http_load_opts *o);
/* Close every connection. Accepts NULL; nulls *h. */
void http_load_destroy(http_load **h);

/* Ask the server whether it serves: GET /health (200, or 404 from a server
 * without one; 503 or another status is "not serving"), then GET /v1/models
 * for the model name when none was given. GM_ERR_IO with the reason when it
 * cannot be reached or does not serve. */
gm_status http_load_check(http_load *h);
/* The model the requests name ("" when none is known). */
const char *http_load_model(const http_load *h);

/* Fill d with h as its driver. */
void http_load_driver(http_load *h, bench_driver *d);

/* Connections opened so far (reuse shows as fewer than requests). */
int64_t http_load_connects(const http_load *h);

#ifdef __cplusplus
}
#endif
#endif
