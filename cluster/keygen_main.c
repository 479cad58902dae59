/* keygen_main.c - gemma-keygen: write a CurveZMQ key pair for gemmad, gemma-router or a client. */
#include <stdio.h>
#include <string.h>

#include "common/curve.h"
#include "common/args.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-keygen [--force] PREFIX\n"
            "       gemma-keygen --print\n"
            "Write a CurveZMQ key pair: PREFIX.key (public key, share it) and PREFIX.key_secret\n"
            "(both keys, mode 0600, keep it on the host that uses it).\n"
            "Servers (gemmad, gemma-router) load NAME.key_secret and list their clients' NAME.key\n"
            "files in their allow-list; clients load their own NAME.key_secret and the server's NAME.key.\n"
            "\n"
            "  --force   overwrite existing files\n"
            "  --print   print a fresh pair to stdout instead (public, then secret)\n"
            "  --help    this text\n");
}

int main(int argc, char **argv)
{
    bool force = false, print = false;
    const char *prefix = NULL;
    int n_pos = 0;
    args_opt opts[] = {{"force", ARGS_FLAG, &force}, {"print", ARGS_FLAG, &print}, {NULL}};
    args_spec spec = {"gemma-keygen", opts, &prefix, 1, &n_pos};
    int rc = args_parse(&spec, argc, argv);
    if (rc == ARGS_HELP) {
        usage(stdout);
        return 0;
    }
    if (rc != ARGS_OK)
        return 2;
    if (!prefix && !print) {
        usage(stderr);
        return 2;
    }
    gc_keypair kp;
    if (gc_curve_generate(&kp) != GM_OK) {
        fprintf(stderr, "gemma-keygen: %s\n", gm_last_error());
        return 1;
    }
    if (print) {
        printf("public_key = \"%s\";\nsecret_key = \"%s\";\n", kp.public_z85, kp.secret_z85);
    } else if (gc_curve_write_keypair(&kp, prefix, force) != GM_OK) {
        fprintf(stderr, "gemma-keygen: %s\n", gm_last_error());
        return 1;
    } else {
        printf("wrote %s.key and %s.key_secret\npublic key: %s\n", prefix, prefix, kp.public_z85);
    }
    memset(&kp, 0, sizeof(kp));
    return 0;
}
