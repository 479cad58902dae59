/* clock.h - the one monotonic clock of gemmad's programs (milliseconds and seconds as doubles). */
#ifndef GM_CLOCK_H
#define GM_CLOCK_H

#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC: for intervals, deadlines and latencies, never wall time. */
static inline double gm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* The same clock in seconds. */
static inline double gm_now_s(void)
{
    return gm_now_ms() / 1e3;
}

#endif
