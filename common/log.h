/* log.h - leveled logging to stderr: "2026-11-24T21:50:00.123 INFO  gemmad: message". */
#ifndef GM_LOG_H
#define GM_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gm_log_level {
    GM_LOG_DEBUG = 0,
    GM_LOG_INFO,
    GM_LOG_WARN,
    GM_LOG_ERROR,
    GM_LOG_OFF
} gm_log_level;

/* Set the process-wide threshold and the tag printed on each line (borrowed). */
void gm_log_init(const char *tag, gm_log_level level);
void gm_log_set_level(gm_log_level level);
gm_log_level gm_log_get_level(void);

/* Parse "debug|info|warn|error|off"; returns -1 if unknown. */
int gm_log_parse_level(const char *s);

void gm_log(gm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define GM_DEBUG(...) gm_log(GM_LOG_DEBUG, __VA_ARGS__)
#define GM_INFO(...) gm_log(GM_LOG_INFO, __VA_ARGS__)
#define GM_WARN(...) gm_log(GM_LOG_WARN, __VA_ARGS__)
#define GM_ERROR(...) gm_log(GM_LOG_ERROR, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
