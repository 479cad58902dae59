/* curve.c - CurveZMQ key files, socket options, and the ZAP allow-list thread. */
#include "common/curve.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define CURVE_MAX_FILE (64 * 1024)
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

bool gc_curve_valid_z85(const char *s)
{
    if (!s || strlen(s) != GC_KEY_Z85_LEN)
        return false;
    uint8_t key[32];
    return zmq_z85_decode(key, s) != NULL;
}

gm_status gc_curve_generate(gc_keypair *kp)
{
    memset(kp, 0, sizeof(*kp));
    if (!zmq_has("curve"))
        return gm_fail(GM_ERR_UNSUPPORTED, "this libzmq was built without CURVE support");
    if (zmq_curve_keypair(kp->public_z85, kp->secret_z85) != 0)
        return gm_fail(GM_ERR_ZMQ, "zmq_curve_keypair: %s", zmq_strerror(errno));
    return GM_OK;
}

/* Write text to path with mode, exclusively unless force. */
static gm_status write_file(const char *path, const char *text, mode_t mode, bool force)
{
    int flags = O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL);
    int fd = open(path, flags, mode);
    if (fd < 0)
        return gm_fail(GM_ERR_IO, "cannot create key file '%s': %s%s", path, strerror(errno),
                       errno == EEXIST ? " (use --force to overwrite)" : "");
    if (fchmod(fd, mode) != 0) { /* O_CREAT's mode is masked by umask; an old file keeps its own */
        close(fd);
        return gm_fail(GM_ERR_IO, "chmod '%s': %s", path, strerror(errno));
    }
    size_t n = strlen(text);
    ssize_t w = write(fd, text, n);
    if (close(fd) != 0 || w != (ssize_t)n)
        return gm_fail(GM_ERR_IO, "cannot write key file '%s'", path);
    return GM_OK;
}

gm_status gc_curve_write_keypair(const gc_keypair *kp, const char *prefix, bool force)
{
    if (!gc_curve_valid_z85(kp->public_z85) || !gc_curve_valid_z85(kp->secret_z85))
        return gm_fail(GM_ERR_INVALID_ARG, "key pair for '%s' is not two Z85 keys", prefix);
    size_t pl = strlen(prefix);
    char *pub = malloc(pl + 16), *sec = malloc(pl + 16);
    char text[256];
    gm_status st = GM_ERR_NOMEM;
    if (!pub || !sec)
        goto out;
    snprintf(pub, pl + 16, "%s.key", prefix);
    snprintf(sec, pl + 16, "%s.key_secret", prefix);
    snprintf(text, sizeof(text),
             "# gemma CurveZMQ key pair: keep this file secret (mode 0600)\n"
             "public_key = \"%s\";\nsecret_key = \"%s\";\n",
             kp->public_z85, kp->secret_z85);
    st = write_file(sec, text, 0600, force);
    if (st != GM_OK)
        goto out;
    snprintf(text, sizeof(text), "# gemma CurveZMQ public key\npublic_key = \"%s\";\n", kp->public_z85);
    st = write_file(pub, text, 0644, force);
out:
    free(pub);
    free(sec);
    return st;
}

/* Read a whole small text file; caller frees. */
static gm_status read_text(const char *path, char **out, struct stat *stp)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return gm_fail(GM_ERR_IO, "cannot open key file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > CURVE_MAX_FILE) {
        fclose(f);
        return gm_fail(GM_ERR_FORMAT, "key file '%s' is not a regular file under 64 KiB", path);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return gm_fail(GM_ERR_NOMEM, "reading '%s'", path);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    buf[n] = 0;
    if (stp)
        *stp = st;
    *out = buf;
    return GM_OK;
}

/* Parse one line: `NAME = "Z85";` (NAME public_key/secret_key) or a bare Z85 key.
 * Returns 1 public, 2 secret, 0 blank/comment, -1 malformed. */
static int parse_key_line(char *line, char val[GC_KEY_Z85_LEN + 1])
{
    char *s = line;
    while (*s == ' ' || *s == '\t' || *s == '\r')
        s++;
    if (*s == '#') /* comments are whole lines: '#' is also a Z85 character */
        return 0;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == ';'))
        *--e = 0;
    if (!*s)
        return 0;
    int kind;
    if (strncmp(s, "public_key", 10) == 0) {
        kind = 1;
        s += 10;
    } else if (strncmp(s, "secret_key", 10) == 0) {
        kind = 2;
        s += 10;
    } else {
        if (strlen(s) != GC_KEY_Z85_LEN)
            return -1;
        memcpy(val, s, GC_KEY_Z85_LEN + 1);
        return gc_curve_valid_z85(val) ? 1 : -1;
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s != '=' && *s != ':')
        return -1;
    s++;
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s != '"')
        return -1;
    s++;
    char *q = strchr(s, '"');
    if (!q || q - s != GC_KEY_Z85_LEN)
        return -1;
    memcpy(val, s, GC_KEY_Z85_LEN);
    val[GC_KEY_Z85_LEN] = 0;
    return gc_curve_valid_z85(val) ? kind : -1;
}

gm_status gc_curve_load(const char *path, gc_keypair *kp)
{
    memset(kp, 0, sizeof(*kp));
    char *text;
    struct stat st;
    gm_status s = read_text(path, &text, &st);
    if (s != GM_OK)
        return s;
    int lineno = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char val[GC_KEY_Z85_LEN + 1];
        int k = parse_key_line(line, val);
        if (k < 0) {
            free(text);
            return gm_fail(GM_ERR_FORMAT, "%s:%d: expected public_key = \"<40 Z85 chars>\";", path, lineno);
        }
        if (k == 1)
            memcpy(kp->public_z85, val, sizeof(val));
        else if (k == 2)
            memcpy(kp->secret_z85, val, sizeof(val));
    }
    free(text);
    if (!kp->public_z85[0] && !kp->secret_z85[0])
        return gm_fail(GM_ERR_FORMAT, "key file '%s' holds no key", path);
    if (kp->secret_z85[0]) {
        if (st.st_mode & 077) {
            memset(kp, 0, sizeof(*kp));
            return gm_fail(GM_ERR_INVALID_ARG,
                           "secret key file '%s' is readable by group or others (chmod 600 it)", path);
        }
        char derived[GC_KEY_Z85_LEN + 1];
        if (zmq_curve_public(derived, kp->secret_z85) != 0)
            return gm_fail(GM_ERR_ZMQ, "zmq_curve_public: %s", zmq_strerror(errno));
        if (kp->public_z85[0] && strcmp(derived, kp->public_z85) != 0) {
            memset(kp, 0, sizeof(*kp));
            return gm_fail(GM_ERR_FORMAT, "key file '%s': public_key does not match secret_key", path);
        }
        memcpy(kp->public_z85, derived, sizeof(derived));
    }
    return GM_OK;
}

gm_status gc_curve_load_secret(const char *path, gc_keypair *kp)
{
    gm_status s = gc_curve_load(path, kp);
    if (s == GM_OK && !kp->secret_z85[0])
        return gm_fail(GM_ERR_INVALID_ARG, "key file '%s' has no secret_key (give NAME.key_secret)", path);
    return s;
}

gm_status gc_curve_set_server(void *sock, const gc_keypair *kp, const char *zap_domain)
{
    if (!kp || !gc_curve_valid_z85(kp->secret_z85))
        return gm_fail(GM_ERR_INVALID_ARG, "CURVE server needs a secret key");
    int one = 1;
    const char *dom = zap_domain ? zap_domain : "gemma";
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->secret_z85, GC_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, dom, strlen(dom)) != 0)
        return gm_fail(GM_ERR_ZMQ, "CURVE server options: %s", zmq_strerror(errno));
    return GM_OK;
}

gm_status gc_curve_set_client(void *sock, const gc_keypair *kp, const char *server_public_z85)
{
    if (!kp || !gc_curve_valid_z85(kp->secret_z85) || !gc_curve_valid_z85(kp->public_z85))
        return gm_fail(GM_ERR_INVALID_ARG, "CURVE client needs its own key pair (NAME.key_secret)");
    if (!gc_curve_valid_z85(server_public_z85))
        return gm_fail(GM_ERR_INVALID_ARG, "CURVE client needs the server's public key (40 Z85 chars)");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public_z85, GC_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, kp->public_z85, GC_KEY_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, kp->secret_z85, GC_KEY_Z85_LEN) != 0)
        return gm_fail(GM_ERR_ZMQ, "CURVE client options: %s", zmq_strerror(errno));
    return GM_OK;
}

/* ---- allow-list ---- */

struct gc_allowlist {
    uint8_t (*keys)[32];
    int n, cap;
};

gc_allowlist *gc_allowlist_new(void)
{
    return calloc(1, sizeof(gc_allowlist));
}

void gc_allowlist_destroy(gc_allowlist **a)
{
    if (!a || !*a)
        return;
    free((*a)->keys);
    free(*a);
    *a = NULL;
}

static gm_status allow_add_raw(gc_allowlist *a, const uint8_t key[32])
{
    if (gc_allowlist_contains(a, key))
        return GM_OK;
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 8;
        void *k = realloc(a->keys, (size_t)cap * 32);
        if (!k)
            return gm_fail(GM_ERR_NOMEM, "allow-list of %d keys", cap);
        a->keys = k;
        a->cap = cap;
    }
    memcpy(a->keys[a->n++], key, 32);
    return GM_OK;
}

gm_status gc_allowlist_add(gc_allowlist *a, const char *public_z85)
{
    uint8_t key[32];
    if (!gc_curve_valid_z85(public_z85) || !zmq_z85_decode(key, public_z85))
        return gm_fail(GM_ERR_INVALID_ARG, "'%s' is not a Z85 public key (40 characters)",
                       public_z85 ? public_z85 : "(null)");
    return allow_add_raw(a, key);
}

/* Every key in a file of keys (one key file, or bare keys one per line). */
static gm_status allow_add_file(gc_allowlist *a, const char *path)
{
    char *text;
    gm_status s = read_text(path, &text, NULL);
    if (s != GM_OK)
        return s;
    int lineno = 0, found = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char val[GC_KEY_Z85_LEN + 1];
        int k = parse_key_line(line, val);
        if (k < 0) {
            free(text);
            return gm_fail(GM_ERR_FORMAT, "%s:%d: not a public key line", path, lineno);
        }
        if (k == 2) { /* a secret key file: trust its public half only */
            char pub[GC_KEY_Z85_LEN + 1];
            if (zmq_curve_public(pub, val) != 0)
                continue;
            memcpy(val, pub, sizeof(pub));
        }
        if (k > 0) {
            s = gc_allowlist_add(a, val);
            if (s != GM_OK) {
                free(text);
                return s;
            }
            found++;
        }
    }
    free(text);
    if (!found)
        return gm_fail(GM_ERR_FORMAT, "allow-list file '%s' holds no key", path);
    return GM_OK;
}

gm_status gc_allowlist_add_path(gc_allowlist *a, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return gm_fail(GM_ERR_IO, "allow-list '%s': %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return allow_add_file(a, path);
    DIR *d = opendir(path);
    if (!d)
        return gm_fail(GM_ERR_IO, "allow-list directory '%s': %s", path, strerror(errno));
    gm_status s = GM_OK;
    struct dirent *e;
    while (s == GM_OK && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".key") != 0)
            continue;
        size_t pl = strlen(path) + n + 2;
        char *p = malloc(pl);
        if (!p) {
            s = gm_fail(GM_ERR_NOMEM, "path");
            break;
        }
        snprintf(p, pl, "%s/%s", path, e->d_name);
        s = allow_add_file(a, p);
        free(p);
    }
    closedir(d);
    return s;
}

int gc_allowlist_count(const gc_allowlist *a)
{
    return a ? a->n : 0;
}

bool gc_allowlist_contains(const gc_allowlist *a, const uint8_t key[32])
{
    if (!a)
        return false;
    for (int i = 0; i < a->n; i++)
        if (memcmp(a->keys[i], key, 32) == 0)
            return true;
    return false;
}

/* ---- ZAP handler (RFC 27) ---- */

#define ZAP_MAX_DOMAINS 8
#define ZAP_DOMAIN_MAX 64

typedef struct zap_domain {
    char name[ZAP_DOMAIN_MAX + 1];
    gc_allowlist allow;
} zap_domain;

struct gc_zap {
    void *ctx;
    void *ctl; /* PAIR, our end of the stop pipe */
    char ctl_ep[64];
    pthread_t thread;
    gc_allowlist allow; /* private copy: the thread reads it, nobody writes */
    pthread_mutex_t mu; /* guards domains (set by the owner, read by the thread) */
    zap_domain domains[ZAP_MAX_DOMAINS];
    int n_domains;
    _Atomic uint64_t allowed, denied;
};

/* Copy src's keys into dst (whose old keys are freed). */
static gm_status allow_copy(gc_allowlist *dst, const gc_allowlist *src)
{
    uint8_t(*keys)[32] = NULL;
    int n = src ? src->n : 0;
    if (n) {
        keys = malloc((size_t)n * 32);
        if (!keys)
            return gm_fail(GM_ERR_NOMEM, "zap allow-list of %d keys", n);
        memcpy(keys, src->keys, (size_t)n * 32);
    }
    free(dst->keys);
    dst->keys = keys;
    dst->n = dst->cap = n;
    return GM_OK;
}

/* Whether key may pass in domain dom[0..dl): its own list if it has one, else the default. */
static bool zap_key_allowed(gc_zap *z, const char *dom, size_t dl, const uint8_t key[32])
{
    pthread_mutex_lock(&z->mu);
    const gc_allowlist *list = &z->allow;
    for (int i = 0; i < z->n_domains; i++)
        if (strlen(z->domains[i].name) == dl && memcmp(z->domains[i].name, dom, dl) == 0)
            list = &z->domains[i].allow;
    bool ok = gc_allowlist_contains(list, key);
    pthread_mutex_unlock(&z->mu);
    return ok;
}

gm_status gc_zap_set_domain(gc_zap *z, const char *domain, const gc_allowlist *allow)
{
    if (!z || !domain || !*domain || strlen(domain) > ZAP_DOMAIN_MAX)
        return gm_fail(GM_ERR_INVALID_ARG, "ZAP domain '%s': 1..%d characters", domain ? domain : "(null)",
                       ZAP_DOMAIN_MAX);
    pthread_mutex_lock(&z->mu);
    int i = 0;
    while (i < z->n_domains && strcmp(z->domains[i].name, domain) != 0)
        i++;
    gm_status st = GM_OK;
    if (i == ZAP_MAX_DOMAINS) {
        st = gm_fail(GM_ERR_INVALID_ARG, "more than %d ZAP domains", ZAP_MAX_DOMAINS);
    } else {
        st = allow_copy(&z->domains[i].allow, allow);
        if (st == GM_OK && i == z->n_domains) {
            snprintf(z->domains[i].name, sizeof(z->domains[i].name), "%s", domain);
            z->n_domains++;
        }
    }
    pthread_mutex_unlock(&z->mu);
    return st;
}

#define ZAP_MAX_FRAMES 16

/* Answer one ZAP request that is waiting on rep. */
static void zap_answer(gc_zap *z, void *rep)
{
    zmq_msg_t fr[ZAP_MAX_FRAMES];
    int n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, rep, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (n < ZAP_MAX_FRAMES)
            fr[n++] = m;
        else
            zmq_msg_close(&m);
    }
    /* frames: version, request id, domain, address, routing id, mechanism, credentials... */
    const char *status = "400", *text = "denied";
    char user[GC_KEY_Z85_LEN + 1] = ""; /* the CURVE key that passed, as the connection's user id */
    if (n >= 6) {
        const char *mech = zmq_msg_data(&fr[5]);
        size_t ml = zmq_msg_size(&fr[5]);
        if (ml == 4 && memcmp(mech, "NULL", 4) == 0) {
            status = "200";
            text = "OK";
        } else if (ml == 5 && memcmp(mech, "CURVE", 5) == 0 && n >= 7 && zmq_msg_size(&fr[6]) == 32 &&
                   zap_key_allowed(z, zmq_msg_data(&fr[2]), zmq_msg_size(&fr[2]), zmq_msg_data(&fr[6]))) {
            status = "200";
            text = "OK";
            zmq_z85_encode(user, zmq_msg_data(&fr[6]), 32);
        }
    }
    if (status[0] == '2')
        atomic_fetch_add(&z->allowed, 1);
    else
        atomic_fetch_add(&z->denied, 1);
    if (n >= 2) {
        zmq_send(rep, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(rep, zmq_msg_data(&fr[1]), zmq_msg_size(&fr[1]), ZMQ_SNDMORE);
        zmq_send(rep, status, 3, ZMQ_SNDMORE);
        zmq_send(rep, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(rep, user, strlen(user), ZMQ_SNDMORE); /* user id */
        zmq_send(rep, "", 0, 0);           /* metadata */
    }
    for (int i = 0; i < n; i++)
        zmq_msg_close(&fr[i]);
}

typedef struct zap_boot {
    gc_zap *z;
    void *rep;
} zap_boot;

/* The thread body proper: rep is already bound. */
static void *zap_loop(void *arg)
{
    zap_boot *b = arg;
    gc_zap *z = b->z;
    void *rep = b->rep;
    free(b);
    void *ctl = zmq_socket(z->ctx, ZMQ_PAIR);
    int zero = 0;
    zmq_setsockopt(ctl, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_connect(ctl, z->ctl_ep);
    for (;;) {
        zmq_pollitem_t it[2] = {{rep, 0, ZMQ_POLLIN, 0}, {ctl, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (it[1].revents & ZMQ_POLLIN)
            break;
        if (it[0].revents & ZMQ_POLLIN)
            zap_answer(z, rep);
    }
    zmq_close(rep);
    zmq_close(ctl);
    return NULL;
}

gm_status gc_zap_start(void *zmq_ctx, const gc_allowlist *allow, gc_zap **out)
{
    *out = NULL;
    gc_zap *z = calloc(1, sizeof(*z));
    if (!z)
        return gm_fail(GM_ERR_NOMEM, "zap");
    z->ctx = zmq_ctx;
    if (allow_copy(&z->allow, allow) != GM_OK) {
        free(z);
        return GM_ERR_NOMEM;
    }
    pthread_mutex_init(&z->mu, NULL);
    snprintf(z->ctl_ep, sizeof(z->ctl_ep), "inproc://gc-zap-ctl-%p", (void *)z);
    int zero = 0;
    void *rep = zmq_socket(zmq_ctx, ZMQ_REP);
    z->ctl = zmq_socket(zmq_ctx, ZMQ_PAIR);
    if (!rep || !z->ctl)
        goto fail;
    zmq_setsockopt(rep, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(z->ctl, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(rep, ZAP_ENDPOINT) != 0) {
        gm_fail(GM_ERR_ZMQ, "bind %s: %s (a ZAP handler already runs on this context?)", ZAP_ENDPOINT,
                zmq_strerror(errno));
        zmq_close(rep);
        zmq_close(z->ctl);
        pthread_mutex_destroy(&z->mu);
        free(z->allow.keys);
        free(z);
        return GM_ERR_ZMQ;
    }
    if (zmq_bind(z->ctl, z->ctl_ep) != 0)
        goto fail;
    zap_boot *b = malloc(sizeof(*b));
    if (!b)
        goto fail;
    b->z = z;
    b->rep = rep; /* handed to the thread; ZeroMQ allows moving a socket with a memory barrier (pthread_create) */
    if (pthread_create(&z->thread, NULL, zap_loop, b) != 0) {
        free(b);
        goto fail;
    }
    *out = z;
    return GM_OK;
fail:
    if (rep)
        zmq_close(rep);
    if (z->ctl)
        zmq_close(z->ctl);
    pthread_mutex_destroy(&z->mu);
    free(z->allow.keys);
    free(z);
    return gm_fail(GM_ERR_ZMQ, "cannot start the ZAP handler: %s", zmq_strerror(errno));
}

void gc_zap_counts(const gc_zap *z, uint64_t *allowed, uint64_t *denied)
{
    if (allowed)
        *allowed = z ? atomic_load(&((gc_zap *)z)->allowed) : 0;
    if (denied)
        *denied = z ? atomic_load(&((gc_zap *)z)->denied) : 0;
}

void gc_zap_destroy(gc_zap **zp)
{
    if (!zp || !*zp)
        return;
    gc_zap *z = *zp;
    zmq_send(z->ctl, "STOP", 4, 0);
    pthread_join(z->thread, NULL);
    zmq_close(z->ctl);
    for (int i = 0; i < z->n_domains; i++)
        free(z->domains[i].allow.keys);
    pthread_mutex_destroy(&z->mu);
    free(z->allow.keys);
    free(z);
    *zp = NULL;
}
