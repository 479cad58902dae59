/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader.
 *
 * Each input is used twice: as header JSON for st_parse_header (against a 4 KB
 * data section), and as a whole safetensors file opened through st_model_open_file
 * from a memfd, so the length prefix, mapping and alignment checks are fuzzed too;
 * and, since it is JSON as well, through gm_config_parse.
 * Build: CC=clang cmake -DGM_FUZZ=ON ...; run: see tests/fuzz/README.md. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/model_config.h"
#include "common/safetensors.h"

/* Check what a successful parse promised: every tensor inside the data section,
 * its byte count matching its shape, no two overlapping. */
static void check(const st_tensor *t, int32_t n, uint64_t data_len)
{
    for (int32_t i = 0; i < n; i++) {
        if (t[i].offset > data_len || t[i].nbytes > data_len - t[i].offset)
            abort();
        if ((uint64_t)st_numel(&t[i]) * gm_dtype_size(t[i].dtype) != t[i].nbytes)
            abort();
        if (t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS || !t[i].name)
            abort();
    }
    for (int32_t i = 0; i < n && n < 64; i++)
        for (int32_t j = i + 1; j < n; j++) {
            if (!strcmp(t[i].name, t[j].name))
                abort();
            if (t[i].nbytes && t[j].nbytes && t[i].offset < t[j].offset + t[j].nbytes &&
                t[j].offset < t[i].offset + t[i].nbytes)
                abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_tensor *t = NULL;
    int32_t n = 0;
    if (st_parse_header((const char *)data, size, 4096, "fuzz", &t, &n) == GM_OK) {
        check(t, n, 4096);
        st_tensors_free(t, n);
    }

    gm_model_config cfg;
    if (gm_config_parse((const char *)data, size, "fuzz", &cfg) == GM_OK &&
        (cfg.num_heads % cfg.num_kv_heads != 0 || cfg.head_dim <= 0 || cfg.eos_id >= cfg.vocab_size))
        abort();

    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz_st", 0);
        if (fd < 0)
            return 0;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        return 0;
    st_model *m = NULL;
    if (st_model_open_file(path, &m) == GM_OK) {
        volatile uint8_t sink = 0;
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | data[i];
        for (int32_t i = 0; i < st_model_count(m); i++) {
            const st_tensor *x = st_model_at(m, i);
            if (st_model_find(m, x->name) != x)
                abort();
            if (8 + hlen + x->offset + x->nbytes > size) /* the tensor lies inside the file */
                abort();
            if (x->nbytes) { /* first and last byte must be readable */
                const uint8_t *p = x->data;
                sink ^= p[0] ^ p[x->nbytes - 1];
            }
        }
        (void)sink;
        st_model_destroy(&m);
    }
    return 0;
}
