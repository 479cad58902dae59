/* log.c - leveled logging to stderr. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

static gm_log_level g_level = GM_LOG_INFO;
static const char *g_tag = "gemma";

void gm_log_init(const char *tag, gm_log_level level)
{
    if (tag)
        g_tag = tag;
    g_level = level;
}

void gm_log_set_level(gm_log_level level) { g_level = level; }
gm_log_level gm_log_get_level(void) { return g_level; }

int gm_log_parse_level(const char *s)
{
    static const char *const names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++)
        if (s && strcasecmp(s, names[i]) == 0)
            return i;
    return -1;
}

void gm_log(gm_log_level level, const char *fmt, ...)
{
    static const char *const names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
    if (level < g_level || level >= GM_LOG_OFF)
        return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%03d %s %s: %s\n", ts, (int)(tv.tv_usec / 1000), names[level], g_tag, msg);
}
