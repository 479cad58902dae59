/* server.h - gemmad's event loop: the client ROUTER, the workers, the scheduler, streaming.
 *
 * One thread around zmq_poll over three sources: the clients' ROUTER socket,
 * the worker pool's socket, and a file descriptor that becomes readable when
 * a signal arrived (the caller's self-pipe; each byte is a signal number).
 * Before each sleep, when the workers are idle, the next step is planned and
 * submitted, then the chunks the last step produced are flushed -- one
 * ServerMessage per client per step, carrying every chunk it is owed. */
#ifndef GM_SERVER_H
#define GM_SERVER_H

#include "common/status.h"
#include "daemon/config.h"

typedef struct gd_server gd_server;

/* Load the tokenizer (if the model has one), start the workers, bind the
 * endpoint. cfg is borrowed for the server's life. */
gm_status gd_server_new(const gd_config *cfg, gd_server **out);

/* Serve until SIGTERM/SIGINT (read from signal_fd) has been handled: stop
 * accepting, finish in-flight work (at most shutdown_timeout_ms), return GM_OK.
 * SIGCHLD on signal_fd makes the server check its workers. */
gm_status gd_server_run(gd_server *s, int signal_fd);

void gd_server_destroy(gd_server **s);

#endif
