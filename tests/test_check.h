/* test_check.h - the status check the cmocka suites share. Include after <cmocka.h>. */
#ifndef GM_TEST_CHECK_H
#define GM_TEST_CHECK_H

#include "common/status.h"

/* Fail the running test with the call, its status and gm_last_error() unless x returns GM_OK. */
#define GOK(x)                                                                                                       \
    do {                                                                                                             \
        gm_status s_ = (x);                                                                                          \
        if (s_ != GM_OK)                                                                                             \
            fail_msg("%s: %s: %s", #x, gm_status_str(s_), gm_last_error());                                          \
    } while (0)

#endif
