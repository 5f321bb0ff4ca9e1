/*
 * relay_floor: the least a chat server's socket and disk work can cost on a machine.
 *
 * A bare C relay on epoll doing what parleyd does per 1:1 message, and nothing else: read
 * the sender's message, append it to a log file with one write and one fdatasync per read
 * batch (group commit), then write an ack to the sender and the message to its receiver, one
 * write per connection per batch. No protocol, no parsing, no threads. Its CPU time per
 * message is the floor under parleyd's `server_cpu_us_per_message` (docs/BENCHMARKS.md).
 *
 *   cc -O2 -o relay_floor Benchmarks/Floor/relay_floor.c
 *   taskset -c 0 ./relay_floor server 19500 LOGFILE &      # LOGFILE "-" stores nothing
 *   taskset -c 1 ./relay_floor client 19500 PAIRS RATE SECONDS [WINDOW]
 *
 * The client opens PAIRS sender/receiver connection pairs and sends RATE messages a second in
 * all, spread over the senders (RATE 0: closed loop, WINDOW unacknowledged messages per
 * sender), for SECONDS; it prints what was delivered. The server prints its own CPU time per
 * message (getrusage) when the client has closed every connection, then exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MESSAGE 200 /* bytes of a send frame with its JSON, about what parley-bench sends */
#define ACK 60      /* bytes of an ack */
#define MAXCONN 4096

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

/* Writes all of buf (the sockets are blocking: loopback takes it at once at these sizes). */
static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

static int server(int port, const char *logpath) {
    static int partial[MAXCONN];           /* bytes of an unfinished message per connection */
    static int peer[MAXCONN], acks[MAXCONN], forwards[MAXCONN], open_fds[MAXCONN];
    static char buf[1 << 16], out[1 << 20], logbuf[1 << 22];
    struct epoll_event events[256];
    struct sockaddr_in addr;
    int one = 1, listener, ep, log = -1, accepted = 0, live = 0;
    long long messages = 0;
    off_t logoff = 0;
    double cpu_first = 0;

    if (strcmp(logpath, "-") != 0) {
        log = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log < 0) die("open log");
    }
    listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)port);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 1024) != 0) die("listen");
    ep = epoll_create1(0);
    {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = listener};
        epoll_ctl(ep, EPOLL_CTL_ADD, listener, &e);
    }
    double started = now();
    for (;;) {
        /* Until the first client connects, wake once a second: a client that died before
           connecting must not leave the server (and `make floor`) waiting for ever. */
        int n = epoll_wait(ep, events, 256, accepted == 0 ? 1000 : -1), i, touched = 0;
        size_t loglen = 0;
        static int touched_fds[MAXCONN];
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        if (n == 0 && accepted == 0 && now() - started > 30) {
            fprintf(stderr, "relay_floor: no client connected within 30 s\n");
            return 1;
        }
        for (i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            ssize_t got;
            if (fd == listener) {
                int c = accept(listener, NULL, NULL);
                if (c < 0 || c >= MAXCONN) die("accept");
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                /* Connections pair up in the order they come: sender, then its receiver. */
                peer[c] = -1;
                if (accepted % 2 == 1) {
                    peer[c] = open_fds[accepted - 1];
                    peer[open_fds[accepted - 1]] = c;
                }
                open_fds[accepted++] = c;
                live++;
                {
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            got = read(fd, buf, sizeof buf);
            if (got <= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                if (--live == 0) {
                    double cpu = cpu_seconds() - cpu_first;
                    printf("server: %lld messages, %.1f us of CPU per message\n", messages, messages > 0 ? cpu * 1e6 / (double)messages : 0.0);
                    return messages > 0 ? 0 : 1;
                }
                continue;
            }
            {
                int whole = (partial[fd] + (int)got) / MESSAGE;
                partial[fd] = (partial[fd] + (int)got) % MESSAGE;
                if (whole == 0) continue;
                if (messages == 0) cpu_first = cpu_seconds();
                messages += whole;
                if (log >= 0) {
                    size_t bytes = (size_t)whole * MESSAGE;
                    if (loglen + bytes > sizeof logbuf) bytes = sizeof logbuf - loglen;
                    memcpy(logbuf + loglen, buf, bytes < (size_t)got ? bytes : (size_t)got);
                    loglen += bytes;
                }
                if (acks[fd] == 0 && forwards[fd] == 0) touched_fds[touched++] = fd;
                acks[fd] += whole;
                if (peer[fd] >= 0) forwards[peer[fd]] += whole;
                if (peer[fd] >= 0 && acks[peer[fd]] == 0 && forwards[peer[fd]] == whole) touched_fds[touched++] = peer[fd];
            }
        }
        /* Durable before answering: one write and one fdatasync for the whole batch. */
        if (log >= 0 && loglen > 0) {
            if (pwrite(log, logbuf, loglen, logoff) != (ssize_t)loglen) die("pwrite");
            logoff += (off_t)loglen;
            if (fdatasync(log) != 0) die("fdatasync");
        }
        for (i = 0; i < touched; i++) {
            int fd = touched_fds[i];
            size_t len = 0;
            while (acks[fd] > 0 && len + ACK <= sizeof out) {
                memset(out + len, 'a', ACK);
                len += ACK;
                acks[fd]--;
            }
            while (forwards[fd] > 0 && len + MESSAGE <= sizeof out) {
                memset(out + len, 'm', MESSAGE);
                len += MESSAGE;
                forwards[fd]--;
            }
            acks[fd] = forwards[fd] = 0;
            if (len > 0) write_all(fd, out, len);
        }
    }
}

static int client(int port, int pairs, double rate, double seconds, int window) {
    static int fds[MAXCONN], inflight[MAXCONN];
    static long long acked[MAXCONN], received[MAXCONN];
    static int partial[MAXCONN];
    static char msg[MESSAGE], buf[1 << 16];
    struct epoll_event events[256];
    struct sockaddr_in addr;
    int i, ep = epoll_create1(0), timer, one = 1, next = 0;
    long long sent = 0, delivered = 0, acks = 0;
    double start, due = 0;

    memset(msg, 'x', sizeof msg);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)port);
    for (i = 0; i < 2 * pairs; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fds[i], (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        usleep(200); /* keep the accept order the pairing order */
        {
            struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &e);
        }
    }
    timer = timerfd_create(CLOCK_MONOTONIC, 0);
    {
        struct itimerspec t = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}};
        struct epoll_event e = {.events = EPOLLIN, .data.u32 = 0xFFFFFFFFu};
        timerfd_settime(timer, 0, &t, NULL);
        epoll_ctl(ep, EPOLL_CTL_ADD, timer, &e);
    }
    start = now();
    if (rate == 0)
        for (i = 0; i < pairs; i++)
            for (; inflight[i] < window; inflight[i]++, sent++) write_all(fds[2 * i], msg, MESSAGE);
    while (now() - start < seconds) {
        int n = epoll_wait(ep, events, 256, 100);
        for (i = 0; i < n; i++) {
            uint32_t id = events[i].data.u32;
            if (id == 0xFFFFFFFFu) {
                uint64_t ticks;
                if (read(timer, &ticks, sizeof ticks) < 0) continue;
                if (rate > 0) {
                    /* Sends due by now, one sender after another. */
                    due = rate * (now() - start);
                    while ((double)sent < due) {
                        write_all(fds[2 * next], msg, MESSAGE);
                        next = (next + 1) % pairs;
                        sent++;
                    }
                }
                continue;
            }
            {
                ssize_t got = read(fds[id], buf, sizeof buf);
                int unit = id % 2 == 0 ? ACK : MESSAGE, whole;
                if (got <= 0) die("server closed");
                whole = (partial[id] + (int)got) / unit;
                partial[id] = (partial[id] + (int)got) % unit;
                if (id % 2 == 0) {
                    acked[id] += whole;
                    acks += whole;
                    if (rate == 0) {
                        int k;
                        for (k = 0; k < whole; k++) write_all(fds[id], msg, MESSAGE);
                        sent += whole;
                    }
                } else {
                    received[id] += whole;
                    delivered += whole;
                }
            }
        }
    }
    printf("client: %d pairs, %lld sent, %lld acked, %lld delivered in %.1f s: %.0f messages/s\n", pairs, sent, acks, delivered, now() - start, (double)delivered / (now() - start));
    for (i = 0; i < 2 * pairs; i++) close(fds[i]);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN); /* a peer gone mid-write is an error return, not the end */
    if (argc >= 4 && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]), argv[3]);
    if (argc >= 6 && strcmp(argv[1], "client") == 0)
        return client(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), atof(argv[5]), argc > 6 ? atoi(argv[6]) : 32);
    fprintf(stderr, "usage: %s server PORT LOGFILE|- | client PORT PAIRS RATE SECONDS [WINDOW]\n", argv[0]);
    return 2;
}
