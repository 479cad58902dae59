/* gguf_mktiny.c - write the tests' tiny Gemma GGUF (tests/gguf_tiny.h) to a file, for the shell tests of the
 * tools (test_gguf_tools.sh). Usage: gguf_mktiny OUT.gguf [ARCH]  (ARCH: gemma3 unless given). */
#include <stdio.h>

#include "gguf_tiny.h"

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s OUT.gguf [ARCH]\n", argv[0]);
        return 2;
    }
    gb b = tiny_gguf(argc == 3 ? argv[2] : "gemma3", NULL, 0);
    FILE *f = fopen(argv[1], "wb");
    int ok = f && fwrite(b.p, 1, b.len, f) == b.len;
    ok = f && fclose(f) == 0 && ok;
    free(b.p);
    if (!ok) {
        perror(argv[1]);
        return 1;
    }
    return 0;
}
