/* fsutil.c - see fsutil.h. */
#include "fsutil.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

gm_status gm_mkdirs(const char *dir)
{
    char p[4096];
    if (!dir || !*dir)
        return gm_fail(GM_ERR_INVALID_ARG, "no directory given");
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return gm_fail(GM_ERR_INVALID_ARG, "%.64s...: path too long", dir);
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            char keep = *s;
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return gm_fail(GM_ERR_IO, "%s: cannot create directory: %s", p, strerror(errno));
            *s = keep;
            if (!keep)
                break;
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return gm_fail(GM_ERR_IO, "%s: not a directory", dir);
    return GM_OK;
}

gm_status gm_copy_file(const char *src, const char *dst, bool optional)
{
    FILE *in = fopen(src, "rb");
    if (!in) {
        if (optional && errno == ENOENT)
            return GM_OK;
        return gm_fail(GM_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    }
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return gm_fail(GM_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    gm_status st = GM_OK;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            st = gm_fail(GM_ERR_IO, "%s: write failed", dst);
            break;
        }
    if (!st && ferror(in))
        st = gm_fail(GM_ERR_IO, "%s: read failed", src);
    fclose(in);
    if (fclose(out) != 0 && !st)
        st = gm_fail(GM_ERR_IO, "%s: write failed", dst);
    return st;
}

gm_status gm_read_file(const char *path, size_t max, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errno == ENOENT ? gm_fail(GM_ERR_NOT_FOUND, "%s: no such file", path)
                               : gm_fail(GM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0, r;
    gm_status st = GM_OK;
    do {
        if (n + 1 >= cap) {
            if (cap > max) {
                st = gm_fail(GM_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
                break;
            }
            cap = cap ? 2 * cap : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = gm_fail(GM_ERR_NOMEM, "%s: no memory to read it", path);
                break;
            }
            buf = nb;
        }
        r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
    } while (r > 0);
    if (!st && ferror(f))
        st = gm_fail(GM_ERR_IO, "%s: read error", path);
    fclose(f);
    if (!st && n > max)
        st = gm_fail(GM_ERR_FORMAT, "%s: larger than %zu bytes", path, max);
    if (st) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return GM_OK;
}

gm_status gm_copy_checkpoint_aux(const char *in_dir, const char *out_dir)
{
    static const char *const files[] = {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char s[4096], d[4096];
        if (snprintf(s, sizeof s, "%s/%s", in_dir, files[i]) >= (int)sizeof s ||
            snprintf(d, sizeof d, "%s/%s", out_dir, files[i]) >= (int)sizeof d)
            return gm_fail(GM_ERR_INVALID_ARG, "%s: path too long", files[i]);
        gm_status st = gm_copy_file(s, d, i != 0);
        if (st)
            return st;
    }
    return GM_OK;
}

char *gm_data_path(const char *name, const char *source_dir)
{
    char cand[3][PATH_MAX + 64];
    int n = 0;
    const char *env = getenv("GEMMAD_DATA");
    if (env && *env)
        snprintf(cand[n++], sizeof cand[0], "%s/%s", env, name);
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len > 0) {
        self[len] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = 0;
            snprintf(cand[n++], sizeof cand[0], "%.*s/../share/gemmad/%s", PATH_MAX - 1, self, name);
        }
    }
    if (source_dir && *source_dir)
        snprintf(cand[n++], sizeof cand[0], "%s/data/%s", source_dir, name);
    for (int i = 0; i < n; i++)
        if (access(cand[i], R_OK) == 0)
            return strdup(cand[i]);
    return NULL;
}
