/* bench_sse.h - reading an OpenAI-compatible streaming answer: server-sent
 * events cut into events, and what each chunk of a completion stream carries.
 *
 * No I/O: the HTTP client feeds the bytes as they come, in pieces of any size
 * (an event may be split anywhere, several may come at once), and gets one
 * callback per complete event. Events follow the SSE format: lines ending in
 * "\n" or "\r\n", "data:" lines (one optional space after the colon; several
 * are joined with "\n"), "event:" naming the event's type, ":" comments, and a
 * blank line ending the event.
 *
 * Chunks are read with a scan for the few keys that matter, not a full JSON
 * parse (the cost per generated token is what gemma-bench measures against);
 * only the rare chunks with an "error" or a "usage" object are parsed fully
 * (cJSON). */
#ifndef GM_BENCH_SSE_H
#define GM_BENCH_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BENCH_SSE_MAX_EVENT (1 << 20) /* bytes of one line or one event's data; more is an error */

/* The parser's state for one stream. Zero-initialised is ready. */
typedef struct bench_sse {
    char *line;       /* [line_len] an incomplete line carried to the next feed (owned) */
    size_t line_len, line_cap;
    char *data;       /* [data_len] the current event's data, NUL-terminated (owned) */
    size_t data_len, data_cap;
    bool has_data;    /* a data line came since the last dispatch */
    bool error_event; /* "event: error" came since the last dispatch */
} bench_sse;

/* One complete event: data (NUL-terminated, len bytes) and whether its type
 * was "error". Return false to stop reading the stream. */
typedef bool (*bench_sse_fn)(void *user, const char *data, size_t len, bool error_event);

/* Read n bytes of the stream, calling fn for each event they complete.
 * GM_ERR_INVALID_ARG when a line or an event passes BENCH_SSE_MAX_EVENT,
 * GM_ERR_NOMEM, GM_ERR_CANCELLED when fn returned false. */
gm_status bench_sse_feed(bench_sse *s, const char *p, size_t n, bench_sse_fn fn, void *user);
/* The stream ended: an event whose blank line never came is delivered. */
gm_status bench_sse_finish(bench_sse *s, bench_sse_fn fn, void *user);
/* Forget the stream's state, keep the memory (for the next stream). */
void bench_sse_reset(bench_sse *s);
void bench_sse_free(bench_sse *s);

/* What one event of an OpenAI completion or chat completion stream carries. */
typedef struct bench_chunk {
    bool done;                 /* data: [DONE] */
    bool error;                /* an error object ({"error": ...} or {"object": "error", ...}) */
    bool malformed;            /* not a JSON object */
    bool tokens;               /* generated output: a choice with non-empty text / content, or
                                  with empty text that neither opens (role) nor closes
                                  (finish_reason) the stream */
    bool has_usage;            /* a "usage" object (the last chunk with include_usage) */
    int64_t prompt_tokens;     /* from usage, -1 when absent */
    int64_t completion_tokens; /* from usage, -1 when absent */
    char message[256];         /* the error's message when error or malformed */
} bench_chunk;

/* Classify one event's data (len bytes). error_event: its SSE type was "error"
 * (then it is an error whatever the data). */
void bench_sse_read_chunk(const char *data, size_t len, bool error_event, bench_chunk *c);

/* The message of an error response body ({"error": {"message": ...}},
 * {"error": "..."}, {"message": ...}, {"detail": ...}; otherwise the start of
 * the body itself, control characters dropped) into out[cap]. */
void bench_sse_error_message(const char *body, size_t len, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
