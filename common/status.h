/* status.h - one status enum for the whole project, plus a per-thread error detail.
 *
 * Every fallible call returns gm_status (or NULL). The code says what kind of
 * failure; gm_last_error() says which file, tensor or value, for the message. */
#ifndef GM_STATUS_H
#define GM_STATUS_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gm_status {
    GM_OK = 0,
    GM_ERR_INVALID_ARG,   /* a caller passed a bad value (client input, flag, config) */
    GM_ERR_IO,            /* open/read/mmap failed */
    GM_ERR_FORMAT,        /* a file or message is malformed */
    GM_ERR_NOMEM,         /* host or device allocation failed */
    GM_ERR_UNSUPPORTED,   /* valid but not implemented (dtype, shape, backend) */
    GM_ERR_NO_DEVICE,     /* the GPU backend was asked for and there is none */
    GM_ERR_CUDA,
    GM_ERR_CUBLAS,
    GM_ERR_NCCL,
    GM_ERR_ZMQ,
    GM_ERR_NOT_FOUND,     /* a named thing (tensor, request id) does not exist */
    GM_ERR_CAPACITY,      /* out of KV blocks, sequences or queue room */
    GM_ERR_CANCELLED,
    GM_ERR_INTERNAL,
    GM_STATUS_COUNT
} gm_status;

/* Short fixed name of a status ("invalid argument"). Never NULL. */
const char *gm_status_str(gm_status s);

/* Record a detail message for the current thread (printf-style); returns s so
 * callers can write `return gm_fail(GM_ERR_FORMAT, "...")`. */
gm_status gm_fail(gm_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last detail recorded on this thread; borrowed until the next gm_fail(). */
const char *gm_last_error(void);

/* Clear the detail. */
void gm_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif
